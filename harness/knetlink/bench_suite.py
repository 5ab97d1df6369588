"""The bench's suite figures: the quick tier's wall time per kernel, and the kernel matrix run
serially and in parallel (pytest-xdist, one worker per kernel), measured in the same bench run.

    per_test_overhead   an empty kernel test that loads and unloads the module, every check on (JUnit times)
    suite_quick_s       {kernel: seconds}: the quick tier's tests of that kernel (JUnit times, boot included)
    matrix_serial_s     one pytest run over every kernel, one after the other
    matrix_parallel_s   the same run with -n auto
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.config import PROJECT_ROOT, HarnessConfig
from harness.errors import BenchError
from harness.formats.junit import case_seconds, read_junit, seconds_by_param


@dataclass(frozen=True)
class SuiteRun:
    elapsed_s: float
    tests: int
    per_kernel_s: dict[str, float]


def suite_argv(cfg: HarnessConfig, kernels: Sequence[str], junit: Path, *, parallel: bool) -> list[str]:
    argv = [sys.executable, "-m", "pytest", "-q", "-m", "kernel", "--engine", cfg.engine, "--accel", cfg.accel,
            f"--junitxml={junit}"]  # fmt: skip
    for kernel in kernels:
        argv += ["--kernel", kernel]
    if parallel:
        argv += ["-n", "auto"]
    return [*argv, str(PROJECT_ROOT / "tests"), str(PROJECT_ROOT / "examples")]


def run_suite(cfg: HarnessConfig, kernels: Sequence[str], junit: Path, *, parallel: bool) -> SuiteRun:
    """Run the quick tier over `kernels`; a failing suite is an error (its figures would mean nothing)."""
    junit.parent.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    proc = subprocess.run(suite_argv(cfg, kernels, junit, parallel=parallel), capture_output=True, text=True,
                          cwd=PROJECT_ROOT, check=False)  # fmt: skip
    elapsed = time.monotonic() - start
    if proc.returncode != 0:
        raise BenchError(f"kernel suite failed during the benchmark (exit {proc.returncode}):\n{proc.stdout[-3000:]}")
    return SuiteRun(elapsed, read_junit(junit).total, seconds_by_param(junit, kernels))


def matrix_figures(cfg: HarnessConfig, kernels: Sequence[str], scratch: Path) -> dict[str, Any]:
    """suite_quick_s per kernel and the serial and parallel matrix, from two runs of the same tests."""
    serial = run_suite(cfg, kernels, scratch / "bench-matrix-serial.xml", parallel=False)
    parallel = run_suite(cfg, kernels, scratch / "bench-matrix-parallel.xml", parallel=True)
    return {
        "suite_quick_s": {k: round(v, 1) for k, v in serial.per_kernel_s.items()},
        "matrix_serial_s": round(serial.elapsed_s, 1),
        "matrix_parallel_s": round(parallel.elapsed_s, 1),
        "matrix_ratio": round(parallel.elapsed_s / serial.elapsed_s, 3) if serial.elapsed_s else None,
        "matrix_tests": serial.tests,
    }


# Empty tests that only load and unload the module: what every kernel test pays around its body
# (the kernel watch's windows, the load, the unload, the settle), nothing of the project's conftest.
OVERHEAD_TESTS = """import pytest


@pytest.mark.parametrize("n", range({count}))
def test_load_and_unload_only(kmod, n):
    assert kmod.name
"""


def per_test_seconds(cfg: HarnessConfig, release: str, scratch: Path, params: Sequence[str], count: int) -> list[float]:
    """The wall time (setup + call + teardown) of each of `count` empty kernel tests on `release`
    after the first (which pays the build and the boot), from a pytest run of their own."""
    directory = scratch / "bench-overhead"
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "test_overhead.py").write_text(OVERHEAD_TESTS.format(count=count + 1))
    junit = directory / "junit.xml"
    argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", str(directory),
            "--kernel", release, "--engine", cfg.engine, "--accel", cfg.accel, f"--junitxml={junit}",
            "--results-dir", str(directory / "results")]  # fmt: skip
    for param in params:
        argv += ["--module-param", param]
    proc = subprocess.run([*argv, str(directory / "test_overhead.py")], capture_output=True, text=True,
                          cwd=directory, check=False)  # fmt: skip
    times = case_seconds(junit)
    if proc.returncode != 0 or len(times) != count + 1:
        raise BenchError(f"the per-test overhead run failed (exit {proc.returncode}, {len(times)} of {count + 1} "
                         f"tests recorded):\n{proc.stdout[-3000:]}")  # fmt: skip
    return times[1:]
