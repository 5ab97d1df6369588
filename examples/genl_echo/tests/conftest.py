"""Point the harness at the genl_echo module instead of the project's own.

Overriding `knh_module_source` is all it takes: `built_module`, `kmod`,
`guest`, `kernel_log` and the splat checks then work on this module.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from genl_echo_client import EchoClient

from harness.guest.vm import Guest
from harness.session import ModuleSource

EXAMPLE = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def knh_module_source() -> ModuleSource:
    # No targets: the Makefile's default goal builds the module.
    return ModuleSource(EXAMPLE / "module")


@pytest.fixture
def echo(guest: Guest) -> EchoClient:
    """The in-guest sender (sender/genl_echo_send.py, run with this interpreter): one
    process per guest, started by the first send and kept for the next tests."""
    return EchoClient(guest, EXAMPLE / "sender" / "genl_echo_send.py")
