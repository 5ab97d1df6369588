"""The debug kernel finds what a stock kernel lets pass: each module under tests/modules with one bug
on purpose fails its test on the debug kernel, with a report of the right kind naming the module's
function, and passes silently on a stock kernel (without the stock memory-debug arguments:
KNH_MEMORY_DEBUG=off), so the difference is documented by tests.

| module | bug | debug kernel | stock kernel |
|---|---|---|---|
| slab_oob | 1-byte kmalloc out-of-bounds read | KASAN slab-out-of-bounds | silent |
| array_oob | u32 table[8] read at index 8 | UBSAN array-index-out-of-bounds | silent |
| lock_order | two mutexes taken in both orders | lockdep circular dependency | silent |
| timer_freed | armed timer kfree'd at unload | ODEBUG free active | silent |
| sleep_in_atomic how=alloc | GFP_KERNEL kmalloc under a spinlock | sleeping function called... | silent |
| sleep_in_atomic how=msleep | msleep under a spinlock | scheduling while atomic | the same (the task really sleeps) |
| leak | kmalloc never freed | the harness's scans after the rmmod: kmemleak, leak_alloc | silent |
| oob_leak | slab_oob's over-read and leak's leak | KASAN, and kmemleak from the scans before the discard | - |

Each test runs a small pytest session of its own (pytester, in a subprocess, like
test_crash_attribution.py) on the debug kernel or the newest installed one. The tests are marked
debug_kernel: they run when the outer run's kernel is a debug-profile one (`tox -e debug`, or
`pytest -m kernel --kernel debug` / `--kernel debug:TREE`), whose spec the inner runs use too, and
are deselected on every other kernel.
"""

from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path

import pytest

from harness.build.kernel import installed_kernels
from harness.config import HarnessConfig
from harness.session import KernelSession

# Only on a debug-profile kernel: every case boots it again (tens of seconds each under TCG).
pytestmark = [pytest.mark.kernel, pytest.mark.debug_kernel, pytest.mark.usefixtures("shared_cache")]

MODULES = Path(__file__).resolve().parent.parent / "modules"
DEBUG_BOOT_TIMEOUT = 900  # KASAN + lockdep + kmemleak under TCG: see docs/kernels.md

LOAD_AND_UNLOAD = """
    def test_load_and_unload(kmod):
        pass
"""

def _conftest(module: str) -> str:
    return textwrap.dedent(f"""
        import pytest
        from pathlib import Path
        from harness.session import ModuleSource

        @pytest.fixture(scope="session")
        def knh_module_source():
            return ModuleSource(Path({str(MODULES / module)!r}))
    """)


@pytest.fixture(scope="module")
def stock_spec() -> str:
    kernels = installed_kernels()
    if not kernels:
        pytest.skip("no installed kernel with headers")
    return kernels[0].release


def run_inner(pytester: pytest.Pytester, outer: KernelSession, config: HarnessConfig, spec: str, module: str,
              tests: str, *params: str) -> tuple[pytest.RunResult, str]:  # fmt: skip
    pytester.makeconftest(_conftest(module))
    pytester.makepyfile(test_inner=textwrap.dedent(tests))
    args = ["-p", "no:cacheprovider", "-rA", "-s", "--kernel", spec, "--engine", config.engine,
            "--accel", outer.accel().accel, "--boot-timeout", str(max(config.boot_timeout, DEBUG_BOOT_TIMEOUT)),
            "--results-dir", str(pytester.path / "results")]  # fmt: skip
    for p in params:
        args += ["--module-param", p]
    result = pytester.runpytest_subprocess(*args, timeout=3 * DEBUG_BOOT_TIMEOUT)
    return result, result.stdout.str()


DEBUG_CASES = [
    ("slab_oob", (), "kasan", "BUG: KASAN: slab-out-of-bounds", "slab_oob_read"),
    ("array_oob", (), "ubsan", "UBSAN: array-index-out-of-bounds", "array_oob_read"),
    ("lock_order", (), "lockdep", "WARNING: possible circular locking dependency detected", "lock_order_ba"),
    ("timer_freed", (), "odebug", "ODEBUG: free active", "timer_freed_release"),
    ("sleep_in_atomic", ("how=alloc",), "sleep-in-atomic", "BUG: sleeping function called from invalid context",
     "sleep_in_atomic_locked"),
    ("sleep_in_atomic", ("how=msleep",), "sleep-in-atomic", "BUG: scheduling while atomic", "sleep_in_atomic"),
]  # fmt: skip


@pytest.mark.parametrize(("module", "params", "kind", "heading", "function"), DEBUG_CASES,
                         ids=[f"{c[0]}{'-' + c[1][0] if c[1] else ''}" for c in DEBUG_CASES])  # fmt: skip
def test_debug_kernel_fails_the_test_with_the_report(
    pytester: pytest.Pytester, knh_kernel_session: KernelSession, knh_config: HarnessConfig, debug_spec: str,
    module: str, params: tuple[str, ...], kind: str, heading: str, function: str,
) -> None:  # fmt: skip
    result, out = run_inner(pytester, knh_kernel_session, knh_config, debug_spec, module, LOAD_AND_UNLOAD, *params)
    assert result.ret != 0, out
    assert f"{kind} at log line" in out, out
    assert heading in out and function in out, out
    # the module's frames decoded from its .ko (built with -g: the debug kernel has no debug info of its own)
    assert "--- module frames decoded (addr2line) ---" in out, out
    assert re.search(rf"\[{module}\] -> \S*tests/modules/{module}/{module}\.c:\d+ \(", out), out


def test_debug_kernel_kmemleak_fails_the_test_that_unloaded_the_leaking_module(
    pytester: pytest.Pytester, knh_kernel_session: KernelSession, knh_config: HarnessConfig, debug_spec: str
) -> None:
    """A plain kmod test: after its rmmod the harness scans, and the objects allocated through the
    module fail the test once (kind kmemleak, the module's function named from its .ko after the
    rmmod); the scan's "N new suspected memory leaks" line is not a second failure."""
    result, out = run_inner(pytester, knh_kernel_session, knh_config, debug_spec, "leak", LOAD_AND_UNLOAD, "count=2")
    result.assert_outcomes(passed=1, errors=1)  # the body passed; the check after the unload fails it
    assert "leaked by module leak (unreferenced after its unload; 2 scans after the rmmod" in out, out
    assert "kmemleak [kmemleak:-:leak_alloc:leak_init" in out and "from leak_alloc [leak], leak_init [leak]" in out
    assert "new suspected memory leak" not in out and "kmemleak at log line" not in out, out
    line = next(i for i, t in enumerate((MODULES / "leak" / "leak.c").read_text().splitlines(), 1)
                if "kmalloc(64, GFP_KERNEL)" in t)  # fmt: skip
    # the kmalloc call's line, directly or as the line kmalloc (inlined from slab.h) is inlined into
    assert re.search(rf"leak_alloc\+0x[0-9a-f]+ \[leak\] -> (\S*tests/modules/leak/leak\.c:{line} |.*\n\s+"
                     rf"inlined into leak_alloc at \S*tests/modules/leak/leak\.c:{line}\b)", out), out
    summary = json.loads(next((pytester.path / "results").glob("*/summary.json")).read_text())
    (reading,) = summary["kmemleak"]
    assert reading["modules"] == ["leak"] and {o["attributed"] for o in reading["objects"]} >= {"module"}
    print(f"kmemleak scans after the rmmod ({knh_config.memory} guest): {reading['scans_s']} s")


def test_debug_kernel_reports_the_leak_of_a_module_whose_splat_discards_the_guest(
    pytester: pytest.Pytester, knh_kernel_session: KernelSession, knh_config: HarnessConfig, debug_spec: str
) -> None:
    """A module that over-reads and leaks: the KASAN report fails the test and the harness discards the
    guest; the guest still answered, so the module was unloaded and scanned first and the leak is
    reported beside the splat. The report says the harness discarded the guest, not that it died."""
    result, out = run_inner(pytester, knh_kernel_session, knh_config, debug_spec, "oob_leak", LOAD_AND_UNLOAD)
    result.assert_outcomes(failed=1)
    assert "kasan at log line" in out and "BUG: KASAN: slab-out-of-bounds in oob_leak_read" in out, out
    assert "leaked by module oob_leak (unreferenced after its unload" in out, out
    assert "from oob_leak_alloc [oob_leak]" in out, out
    assert re.search(r"the harness discarded guest \S+ after a kernel splat \(kasan\) in the call; it had not "
                     r"died", out), out  # fmt: skip
    assert "the guest died" not in out and "the guest kernel died" not in out, out
    summary = json.loads(next((pytester.path / "results").glob("*/summary.json")).read_text())
    assert {s["kind"] for s in summary["splats"] if not s["allowed"]} == {"kasan", "kmemleak"}, summary["splats"]
    (reading,) = summary["kmemleak"]
    assert reading["modules"] == ["oob_leak"] and reading["phase"] == "call"
    print(f"kmemleak scans before the discard ({knh_config.memory} guest): {reading['scans_s']} s")


STOCK_SILENT = [("slab_oob", ()), ("array_oob", ()), ("lock_order", ()), ("timer_freed", ()),
                ("sleep_in_atomic", ("how=alloc",)), ("leak", ())]  # fmt: skip


@pytest.mark.parametrize(("module", "params"), STOCK_SILENT,
                         ids=[f"{m}{'-' + p[0] if p else ''}" for m, p in STOCK_SILENT])  # fmt: skip
def test_stock_kernel_lets_the_same_bug_pass_silently(
    pytester: pytest.Pytester, knh_kernel_session: KernelSession, knh_config: HarnessConfig, stock_spec: str,
    monkeypatch: pytest.MonkeyPatch, module: str, params: tuple[str, ...],
) -> None:  # fmt: skip
    monkeypatch.setenv("KNH_MEMORY_DEBUG", "off")
    result, out = run_inner(pytester, knh_kernel_session, knh_config, stock_spec, module, LOAD_AND_UNLOAD, *params)
    result.assert_outcomes(passed=1)
    assert "kernel splats: 0" in out and " at log line " not in out, out


def test_stock_kernel_still_catches_a_sleep_that_really_schedules(
    pytester: pytest.Pytester, knh_kernel_session: KernelSession, knh_config: HarnessConfig, stock_spec: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """Debian's kernels count preemption (PREEMPT_DYNAMIC): msleep under a spinlock schedules while
    atomic, which any such kernel reports; only the allocation that might sleep needs the debug kernel."""
    monkeypatch.setenv("KNH_MEMORY_DEBUG", "off")
    result, out = run_inner(pytester, knh_kernel_session, knh_config, stock_spec, "sleep_in_atomic", LOAD_AND_UNLOAD,
                            "how=msleep")  # fmt: skip
    assert result.ret != 0, out
    assert "sleep-in-atomic at log line" in out and "BUG: scheduling while atomic" in out, out
