"""Modules that moved into the layer folders keep their old import names (harness.MOVED,
docs/changelog.md): a conftest written against the flat layout runs unchanged."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import harness

ROOT = Path(__file__).resolve().parent.parent

# The imports a user's conftest took from docs/writing-tests.md before the move.
FLAT_LAYOUT_CONFTEST = """
from harness.kmod import BuiltModule
from harness.fixtures import KernelLogWindow
from harness.session import LoadedModule, ModuleSource
from harness.vm import Guest
from harness.guest_kernel import GuestKernel
from harness.ebpf import BpfRunner
from harness.dmesg import scan_splats
import harness.plugin
"""


def _run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=False)


def test_every_old_name_is_the_new_module_object() -> None:
    code = (
        "import importlib, harness\n"
        "for old, new in harness.MOVED.items():\n"
        "    assert importlib.import_module(old) is importlib.import_module(new), old\n"
    )
    proc = _run(code)
    assert proc.returncode == 0, proc.stderr


def test_a_flat_layout_conftest_imports_unchanged() -> None:
    proc = _run(FLAT_LAYOUT_CONFTEST + "assert Guest.__module__ == 'harness.guest.vm'\n")
    assert proc.returncode == 0, proc.stderr


def test_old_names_are_not_files_any_more_and_new_ones_are() -> None:
    for old, new in harness.MOVED.items():
        assert not (ROOT / (old.replace(".", "/") + ".py")).exists(), f"{old} is both a file and a moved name"
        assert (ROOT / (new.replace(".", "/") + ".py")).is_file(), f"{old} moved to {new}, which does not exist"


def test_changelog_lists_every_move() -> None:
    changelog = (ROOT / "docs" / "changelog.md").read_text()
    missing = [f"{old} -> {new}" for old, new in harness.MOVED.items() if f"`{old}` | `{new}`" not in changelog]
    assert not missing, "docs/changelog.md does not list: " + ", ".join(missing)
