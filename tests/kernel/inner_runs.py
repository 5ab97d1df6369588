"""What the kernel tests that run harness sessions of their own (a small pytest run, or a CLI command) share."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import pytest

from harness.session import KernelSession

MODULES = Path(__file__).resolve().parent.parent / "modules"

# The engine of every inner run, whatever the outer run's: these runs test the harness (its kernel watch,
# its commands), not an engine, and the qemu engine boots in about half of vng's time under TCG. A test
# about vng itself names the engine it needs.
INNER_ENGINE = "qemu"


def same_kernel_options(session: KernelSession) -> list[str]:
    """--kernel, --engine and --accel for a run of its own on the outer run's kernel and accelerator."""
    return ["--kernel", session.spec_for_reproduction, "--engine", INNER_ENGINE, "--accel", session.accel().accel]


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


def run_pytest(directory: Path, files: Mapping[str, str], *args: str,
               env: Mapping[str, str] | None = None) -> pytest.RunResult:  # fmt: skip
    """Write `files` ({name: text}) into `directory` and run pytest there in a subprocess, the way
    pytester.runpytest_subprocess does (the directory as rootdir and on PYTHONPATH, no PYTEST_ADDOPTS),
    with `env` added and the user's HOME kept (the harness cache stays shared). Unlike pytester it
    serves a fixture of any scope: one run whose tests several outer tests read."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (directory / name).write_text(text)
    environ = {k: v for k, v in os.environ.items() if k not in ("PYTEST_ADDOPTS", "TOX_ENV_DIR")}
    environ["PY_COLORS"] = "0"
    environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(directory), environ.get("PYTHONPATH")]))
    environ.update(env or {})
    argv = [sys.executable, "-m", "pytest", f"--basetemp={directory / 'basetemp'}", *args]
    start = time.monotonic()
    proc = subprocess.run(argv, cwd=directory, env=environ, stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, check=False)  # fmt: skip
    return pytest.RunResult(proc.returncode, proc.stdout.splitlines(), proc.stderr.splitlines(),
                            time.monotonic() - start)  # fmt: skip
