"""pytest plugin of the knetlink layer: the core fixtures, knowing the module is knetlink.

Loaded by the project's conftest.py (``pytest_plugins``); a test of another module
does not load it. It overrides two core fixtures with richer objects and adds the
senders:

    kmod        a KnetlinkModule: the loaded module, with `proto`, the netlink protocol
                it bound, as the kernel reports it (/sys/module/knetlink/parameters/proto)
    kernel_log  a LinkLogWindow: the core window, plus links() and assert_links()
    py_sender   the persistent in-guest Python sender, bound to the module's protocol
    c_sender    the C sender built next to the module (module/sender/knl_send)
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import cached_property

import pytest

from harness.build.module_build import BuiltModule
from harness.guest.kernel_ops import GuestKernel
from harness.guest.vm import Guest
from harness.knetlink.links import parse_link_lines
from harness.knetlink.senders import C_SENDER, CSender, PySender
from harness.pytest_plugin.fixtures import KernelLogWindow
from harness.session import KernelSession, LoadedModule


@dataclass(frozen=True)
class KnetlinkModule(LoadedModule):
    """The loaded knetlink module; `proto` is read back from the kernel, never assumed."""

    session: KernelSession | None = field(default=None, compare=False, repr=False)

    @cached_property
    def proto(self) -> int:
        assert self.session is not None
        return int(self.session.module_param(self, "proto"))


class LinkLogWindow(KernelLogWindow):
    """A kernel log window that decodes the module's link: lines."""

    def links(self) -> list[bytes]:
        """Payloads of the module's link: lines, unescaped, in order."""
        return [link.payload for link in parse_link_lines(self.lines())]

    def assert_links(self, expected: Sequence[str | bytes]) -> None:
        want = [e.encode() if isinstance(e, str) else e for e in expected]
        got = self.links()
        if got != want:
            shown = "\n".join(self.texts()[-40:])
            raise AssertionError(
                f"link: lines differ\n expected ({len(want)}): {want[:10]!r}{' ...' if len(want) > 10 else ''}\n"
                f"      got ({len(got)}): {got[:10]!r}{' ...' if len(got) > 10 else ''}\n"
                f"--- kernel log window ---\n{shown}"
            )


@pytest.fixture
def kernel_log(guest_kernel: GuestKernel) -> LinkLogWindow:
    return LinkLogWindow(guest_kernel, guest_kernel.mark())


@pytest.fixture
def kmod(kmod: LoadedModule, knh_kernel_session: KernelSession) -> KnetlinkModule:
    return KnetlinkModule(kmod.name, kmod.path, kmod.params, kmod.loaded, kmod.before, session=knh_kernel_session)


@pytest.fixture
def py_sender(guest: Guest, kmod: KnetlinkModule, knh_kernel_session: KernelSession) -> Iterator[PySender]:
    sender = PySender(guest, kmod.proto, stderr=knh_kernel_session.scratch / "nl_send.stderr")
    yield sender
    sender.release()


@pytest.fixture
def c_sender(guest: Guest, kmod: KnetlinkModule, built_module: BuiltModule) -> CSender:
    return CSender(guest, built_module.directory / C_SENDER, kmod.proto)
