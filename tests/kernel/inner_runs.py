"""What the kernel tests that run small pytest sessions of their own (pytester) share."""

from __future__ import annotations

from pathlib import Path

MODULES = Path(__file__).resolve().parent.parent / "modules"


def source_conftest(directory: Path) -> str:
    """An inner run's conftest.py: its knh_module_source is `directory` (as docs/writing-tests.md says)."""
    return f"""
import pytest
from pathlib import Path
from harness.session import ModuleSource

@pytest.fixture(scope="session")
def knh_module_source():
    return ModuleSource(Path({str(directory)!r}))
"""
