"""--module-coverage on the debug kernel (the one kernel built with CONFIG_GCOV_KERNEL): a small pytest
session of its own (pytester, in a subprocess) loads tests/modules/cov_probe twice with coverage on;
gcovr's report then counts the function the module ran at each load twice (the guest kernel keeps a
module's counters across its unload and adds the next load's) and the one it never calls not at all,
and the terminal summary prints the file's line and branch coverage.

Marked debug_kernel: it runs when the outer run's kernel is a debug-profile one (`tox -e debug`,
`pytest -m kernel --kernel debug` or `--kernel debug:TREE`), whose spec the inner run uses too, and is
deselected on every other kernel.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from harness.config import HarnessConfig
from harness.guest.coverage import function_counts
from harness.session import KernelSession

# Only on a debug-profile kernel: it boots it again (KASAN, lockdep: long under TCG).
pytestmark = [pytest.mark.kernel, pytest.mark.debug_kernel, pytest.mark.usefixtures("shared_cache")]

MODULE = Path(__file__).resolve().parent.parent / "modules" / "cov_probe"
DEBUG_BOOT_TIMEOUT = 900  # see docs/kernels.md

CONFTEST = f"""
import pytest
from pathlib import Path
from harness.session import ModuleSource

@pytest.fixture(scope="session")
def knh_module_source():
    return ModuleSource(Path({str(MODULE)!r}))
"""

TWO_LOADS = """
def test_first_load(kmod):
    pass

def test_second_load(kmod):
    pass
"""


def test_report_counts_the_function_the_module_ran_and_not_the_one_it_did_not(
    pytester: pytest.Pytester, knh_kernel_session: KernelSession, knh_config: HarnessConfig, debug_spec: str
) -> None:
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_inner=textwrap.dedent(TWO_LOADS))
    results = pytester.path / "results"
    boot_timeout = str(max(knh_config.boot_timeout, DEBUG_BOOT_TIMEOUT))
    args = ["-p", "no:cacheprovider", "-rA", "--kernel", debug_spec, "--engine", knh_config.engine,
            "--accel", knh_kernel_session.accel().accel, "--module-coverage", "--boot-timeout", boot_timeout,
            "--results-dir", str(results)]  # fmt: skip
    result = pytester.runpytest_subprocess(*args, timeout=3 * DEBUG_BOOT_TIMEOUT)
    out = result.stdout.str()
    result.assert_outcomes(passed=2)
    (report_file,) = results.glob("run-*/*/coverage/cov_probe-*/coverage.json")
    counts = function_counts(json.loads(report_file.read_text()))
    assert counts["cov_taken"] == 2, counts  # once per load: the counters outlive the first rmmod
    assert counts["cov_never"] == 0, counts
    assert counts["cov_probe_init"] == 2, counts
    assert (report_file.parent / "index.html").exists()
    assert "module coverage (gcovr):" in out and "cov_probe.c: lines " in out and ", branches " in out, out
    assert "cov_never" in (report_file.parent / "uncovered.txt").read_text()
