"""A kernel that crashes makes the run red, on the test that caused it, whenever the crash comes.

The tests here read the outcome of small pytest runs of their own (in a subprocess)
against tests/modules/crashy, a module that breaks the kernel on purpose, on the
outer run's kernel and accelerator and the qemu engine (inner_runs.INNER_ENGINE):

- a timer left armed at unload panics the kernel within the settle: the test that
  unloaded fails;
- a kthread panics after the settle: the next test on that guest fails at setup,
  naming the test that loaded the module; the test after it gets a fresh guest;
- the panic comes after the last test: the run exits non-zero with the crash text;
- insmod killed by an oops raises ModuleCrashError, not ModuleLoadError, and a
  test that skips or xfails over a splat fails.

The quick tier's two cases (the kthread's panic between tests, a skip and an
xfail over an oops in insmod) share one inner run, on one kernel of the matrix
(one_kernel, one group; every kernel in the full tier): the oopses begin on the fresh
guest booted for the test after the panic, so the pair boots three guests in one
process. The oops under a test that skips on ModuleLoadError alone is the full
tier's (a guest of its own). Each outer test reads only its own inner tests'
outcomes.
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pytest
from inner_runs import MODULES, run_pytest, same_kernel_options, source_conftest  # tests/kernel/inner_runs.py

from harness.build.config_items import read_kernel_config
from harness.session import KernelSession

CRASHY = MODULES / "crashy"
CONFTEST = source_conftest(CRASHY)

# A host-only test that waits (up to a minute) for the kthread's panic to end the guest, so the
# panic lands between two tests (or after the last one) however slow the machine is.
WAIT_DEAD = """
import time

def wait_until_dead(session, seconds=60.0):
    deadline = time.monotonic() + seconds
    while session.current_guest is not None and session.current_guest.alive:
        assert time.monotonic() < deadline, "the guest did not panic within a minute"
        time.sleep(0.2)
"""


def panic_delay_ms(session: KernelSession) -> int:
    """How long after its load crashy's kthread panics: after the loading test's checks and
    within the next test's wait. On a stock kernel those checks take well under 3 s; on a
    KASAN kernel under TCG they alone took 3.2 s here (insmod at 30.67 s, the panic of a
    3000 ms delay landed in them at 33.92 s)."""
    slow = read_kernel_config(session.kernel).get("KASAN") == "y" and session.accel().accel == "tcg"
    return 20_000 if slow else 3000


def run_inner(directory: Path, session: KernelSession, tests: str, *args: str,
              env: dict[str, str] | None = None) -> pytest.RunResult:  # fmt: skip
    """An inner run of `tests` (test_inner.py) with crashy as its module, its results in directory/results."""
    files = {"conftest.py": CONFTEST, "wait_dead.py": WAIT_DEAD, "test_inner.py": textwrap.dedent(tests)}
    return run_pytest(directory, files, "-p", "no:cacheprovider", "-rA", *same_kernel_options(session),
                      "--results-dir", str(directory / "results"), *args, env=env)  # fmt: skip


# The first test of the two panic cases: it loads crashy, whose kthread panics `delay` ms later.
PANICS_LATER = """
from wait_dead import wait_until_dead

def test_loads_a_module_that_panics_later(guest_kernel, built_module):
    guest_kernel.insmod(built_module.module(), {{"panic_ms": "{delay}"}})
"""


def run_panic_later(directory: Path, session: KernelSession, tests: str) -> tuple[pytest.RunResult, str]:
    """run_inner with PANICS_LATER's test, then `tests`; the run and the line crashy's panic prints."""
    delay = panic_delay_ms(session)
    result = run_inner(directory, session, PANICS_LATER.format(delay=delay) + textwrap.dedent(tests))
    return result, f"crashy: deliberate panic {delay} ms after load"


# The panic between tests: after PANICS_LATER's test, a host-only test waits for the panic.
PANIC_BETWEEN_TESTS = """
def test_host_only(knh_kernel_session):  # the session fixture keeps it in this place (no guest)
    wait_until_dead(knh_kernel_session)

def test_next_guest_test(guest_kernel):
    pass

def test_after_that(guest_kernel):
    pass
"""
PANIC_BETWEEN_OUTCOMES = {"test_loads_a_module_that_panics_later": ["PASSED"], "test_host_only": ["PASSED"],
                          "test_next_guest_test": ["ERROR"], "test_after_that": ["PASSED"]}  # fmt: skip

def oops_under_skip(test: str, exception: str) -> str:
    """An inner test named `test` whose insmod of crashy oopses in the module's init, and which skips when the
    harness raises `exception` (a class of harness.errors)."""
    return textwrap.dedent(f"""
        import pytest
        from harness.errors import {exception}

        def {test}(guest_kernel, built_module):
            try:
                guest_kernel.insmod(built_module.module(), {{"oops_init": "1"}})
            except {exception} as e:
                pytest.skip(f"does not load: {{type(e).__name__}}")
    """)


# insmod killed by an oops, under a test that skips on any harness error and one marked xfail: each oops
# discards its guest, so each test has a fresh one. (A test that skips on ModuleLoadError alone is the full
# tier's: REFUSAL_SKIP.)
OOPS_IN_INSMOD = oops_under_skip("test_skips_on_any_harness_error", "HarnessError") + """
@pytest.mark.xfail(reason="expected to fail")
def test_xfail_over_an_oops(guest_kernel, built_module):
    guest_kernel.insmod(built_module.module(), {"oops_init": "1"})
"""
OOPS_TESTS = ("test_skips_on_any_harness_error", "test_xfail_over_an_oops")

# An oops in insmod is a ModuleCrashError, which a test skipping modules the kernel refuses does not catch.
REFUSAL_SKIP = oops_under_skip("test_skips_modules_that_refuse_to_load", "ModuleLoadError")


_OUTCOME_LINE = re.compile(r"^(PASSED|FAILED|ERROR|XFAIL|XPASS) test_inner\.py::(\w+)\[")


def outcomes(result: pytest.RunResult, tests: Iterable[str]) -> dict[str, list[str]]:
    """{inner test: its outcome lines in the -rA summary} for each of `tests` (a test with no line there, a
    skipped one among them, has []; one that passed and then failed its teardown has both)."""
    found: dict[str, list[str]] = {name: [] for name in tests}
    for line in result.outlines:
        m = _OUTCOME_LINE.match(line)
        if m and m.group(2) in found:
            found[m.group(2)].append(m.group(1))
    return found


@dataclass(frozen=True)
class QuickRun:
    """The inner run both quick-tier cases read: its result and output, the line crashy's panic prints,
    its results directory and the file it was given as GITHUB_STEP_SUMMARY."""

    result: pytest.RunResult
    out: str
    panic: str
    results: Path
    step_summary: Path


@pytest.fixture(scope="module")
def quick_run(knh_kernel_session: KernelSession, tmp_path_factory: pytest.TempPathFactory) -> QuickRun:
    """PANICS_LATER's test, PANIC_BETWEEN_TESTS, then OOPS_IN_INSMOD, in one inner run."""
    directory = tmp_path_factory.mktemp("crash-quick")
    step_summary = directory / "step-summary.md"
    delay = panic_delay_ms(knh_kernel_session)
    tests = PANICS_LATER.format(delay=delay) + PANIC_BETWEEN_TESTS + OOPS_IN_INSMOD
    result = run_inner(directory, knh_kernel_session, tests, env={"GITHUB_STEP_SUMMARY": str(step_summary)})
    return QuickRun(result, result.stdout.str(), f"crashy: deliberate panic {delay} ms after load",
                    directory / "results", step_summary)  # fmt: skip


@pytest.mark.full  # each boots guests of its own; the quick tier keeps the panic and oops cases
@pytest.mark.kernel
def test_timer_armed_at_unload_fails_the_test_that_unloaded(knh_kernel_session: KernelSession,
                                                            tmp_path: Path) -> None:  # fmt: skip
    result = run_inner(tmp_path, knh_kernel_session, """
        import pytest

        @pytest.mark.module_params(timer_ms=700)  # fires 0.7 s after rmmod: after the checks, within the settle
        def test_unloads_with_timer_armed(kmod):
            pass

        def test_next_gets_a_fresh_guest(guest_kernel):
            pass
    """, "--settle", "1.5")
    out = result.stdout.str()
    result.assert_outcomes(passed=2, errors=1)
    assert "ERROR at teardown of test_unloads_with_timer_armed" in out, out
    # 6.1 panics in the timer softirq; 6.12 may oops in enqueue_timer and hang instead: both are a death
    assert "the guest kernel died" in out and "BUG: unable to handle page fault" in out, out
    assert "PASSED test_inner.py::test_next_gets_a_fresh_guest" in out, out


# The inner run of the two quick-tier cases (about 15 s under TCG, three boots; the first case to run pays it) is
# the harness's attribution, the same whatever the guest kernel: in the quick tier both cases run on one kernel of
# the matrix (one group), on every kernel in the full tier.
QUICK_RUN_GROUP = "crash-attribution-quick-run"


@pytest.mark.kernel
@pytest.mark.one_kernel(cost=15, group=QUICK_RUN_GROUP)
def test_panic_after_the_settle_fails_the_next_test_naming_the_previous(quick_run: QuickRun) -> None:
    out = quick_run.out
    assert outcomes(quick_run.result, PANIC_BETWEEN_OUTCOMES) == PANIC_BETWEEN_OUTCOMES, out
    assert "ERROR at setup of test_next_guest_test" in out, out
    assert "between tests: after test_inner.py::test_loads_a_module_that_panics_later[" in out, out
    assert quick_run.panic in out, out
    assert "PASSED test_inner.py::test_after_that" in out, out
    assert "KERNEL BROKE between tests" in out, out


@pytest.mark.full  # each boots guests of its own; the quick tier keeps the panic and oops cases
@pytest.mark.kernel
def test_panic_after_the_last_test_fails_the_run(knh_kernel_session: KernelSession, tmp_path: Path) -> None:
    result, panic = run_panic_later(tmp_path, knh_kernel_session, """
        def test_host_only_last(knh_kernel_session):  # the session fixture keeps it last (no guest)
            wait_until_dead(knh_kernel_session)
    """)
    out = result.stdout.str()
    assert result.ret != 0, out
    assert "the guest kernel died after the last test on it" in out, out
    assert "after the last test on it: test_inner.py::test_loads_a_module_that_panics_later[" in out, out
    assert panic in out, out
    assert "KERNEL BROKE after the last test" in out, out


@pytest.mark.full  # a guest of its own; the quick tier's oopses are a skip and an xfail over one
@pytest.mark.kernel
def test_oops_in_insmod_is_not_a_refusal(knh_kernel_session: KernelSession, tmp_path: Path) -> None:
    result = run_inner(tmp_path, knh_kernel_session, REFUSAL_SKIP)
    out = result.stdout.str()
    assert outcomes(result, ["test_skips_modules_that_refuse_to_load"]) == {
        "test_skips_modules_that_refuse_to_load": ["FAILED"]}, out  # fmt: skip
    assert "ModuleCrashError: insmod crashy.ko: the kernel crashed" in out, out


@pytest.mark.kernel
@pytest.mark.one_kernel(cost=1, group=QUICK_RUN_GROUP)
def test_oops_in_insmod_is_a_crash_and_never_a_skip(quick_run: QuickRun, knh_kernel_session: KernelSession) -> None:
    """Also: the run's summary.md (and the GitHub job summary) shows the oopses as one failure, decoded to
    the line of crashy.c that writes through NULL."""
    out = quick_run.out
    assert outcomes(quick_run.result, OOPS_TESTS) == {name: ["FAILED"] for name in OOPS_TESTS}, out
    assert "does not load: ModuleCrashError" in out, out  # what the skipping test caught
    assert "crashy_init" in out, out
    assert "a kernel splat is never skipped" in out, out
    assert "the xfail-marked test raised ModuleCrashError" in out, out
    [summary_md] = quick_run.results.glob("run-*/summary.md")
    text = summary_md.read_text()
    line = next(i for i, t in enumerate((CRASHY / "crashy.c").read_text().splitlines(), 1) if "*crashy_null = 1;" in t)
    release = knh_kernel_session.kernel.release
    # the distinct failures (the run's panic between tests is another one): one holds all the oopses
    distinct = text.split("\n## Distinct failures: ", 1)[1].split("\n## ", 1)[0]
    groups = [g for g in distinct.split("\n### ")[1:] if any(f"test_inner.py::{name}[" in g for name in OOPS_TESTS)]
    assert len(groups) == 1, text
    assert re.match(rf"\d+\. null-deref on {re.escape(release)}, {len(OOPS_TESTS)} tests\n", groups[0]), text
    listed = re.findall(r"^- `test_inner\.py::(\w+)\[", groups[0], re.M)
    assert listed == list(OOPS_TESTS), text
    assert f"tests/modules/crashy/crashy.c:{line}` (crashy_init)" in groups[0], text
    assert quick_run.step_summary.read_text() == text
