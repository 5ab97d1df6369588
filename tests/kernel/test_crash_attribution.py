"""A kernel that crashes makes the run red, on the test that caused it, whenever the crash comes.

Each test here runs a small pytest session of its own (pytester, in a subprocess)
against tests/modules/crashy, a module that breaks the kernel on purpose, on the
same kernel, engine and accelerator as the outer run, and reads its outcome:

- a timer left armed at unload panics the kernel within the settle: the test that
  unloaded fails;
- a kthread panics after the settle: the next test on that guest fails at setup,
  naming the test that loaded the module; the test after it gets a fresh guest;
- the panic comes after the last test: the run exits non-zero with the crash text;
- insmod killed by an oops raises ModuleCrashError, not ModuleLoadError, and a
  test that skips or xfails over a splat fails.
"""

from __future__ import annotations

import textwrap

import pytest
from inner_runs import MODULES, source_conftest  # tests/kernel/inner_runs.py

from harness.build.config_items import read_kernel_config
from harness.config import HarnessConfig
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

pytestmark = pytest.mark.usefixtures("shared_cache")  # tests/kernel/conftest.py


def panic_delay_ms(session: KernelSession) -> int:
    """How long after its load crashy's kthread panics: after the loading test's checks and
    within the next test's wait. On a stock kernel those checks take well under 3 s; on a
    KASAN kernel under TCG they alone took 3.2 s here (insmod at 30.67 s, the panic of a
    3000 ms delay landed in them at 33.92 s)."""
    slow = read_kernel_config(session.kernel).get("KASAN") == "y" and session.accel().accel == "tcg"
    return 20_000 if slow else 3000


def run_inner(pytester: pytest.Pytester, session: KernelSession, config: HarnessConfig,
              tests: str, *args: str) -> pytest.RunResult:  # fmt: skip
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(wait_dead=WAIT_DEAD, test_inner=textwrap.dedent(tests))
    return pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "-rA",
        # the fast engine whatever the outer run's: these runs test the kernel watch, not an engine
        "--kernel", session.spec_for_reproduction, "--engine", "qemu", "--accel", session.accel().accel,
        "--results-dir", str(pytester.path / "results"), *args,
    )  # fmt: skip


# The first test of the two panic cases: it loads crashy, whose kthread panics `delay` ms later.
PANICS_LATER = """
from wait_dead import wait_until_dead

def test_loads_a_module_that_panics_later(guest_kernel, built_module):
    guest_kernel.insmod(built_module.module(), {{"panic_ms": "{delay}"}})
"""


def run_panic_later(pytester: pytest.Pytester, session: KernelSession, config: HarnessConfig,
                    tests: str) -> tuple[pytest.RunResult, str]:  # fmt: skip
    """run_inner with PANICS_LATER's test, then `tests`; the run and the line crashy's panic prints."""
    delay = panic_delay_ms(session)
    result = run_inner(pytester, session, config, PANICS_LATER.format(delay=delay) + textwrap.dedent(tests))
    return result, f"crashy: deliberate panic {delay} ms after load"


@pytest.mark.full  # each boots guests of its own; the quick tier keeps the panic and oops cases
@pytest.mark.kernel
def test_timer_armed_at_unload_fails_the_test_that_unloaded(
    pytester: pytest.Pytester, knh_kernel_session: KernelSession, knh_config: HarnessConfig
) -> None:
    result = run_inner(pytester, knh_kernel_session, knh_config, """
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


@pytest.mark.kernel
def test_panic_after_the_settle_fails_the_next_test_naming_the_previous(
    pytester: pytest.Pytester, knh_kernel_session: KernelSession, knh_config: HarnessConfig
) -> None:
    result, panic = run_panic_later(pytester, knh_kernel_session, knh_config, """
        def test_host_only(knh_kernel_session):  # the session fixture keeps it in this place (no guest)
            wait_until_dead(knh_kernel_session)

        def test_next_guest_test(guest_kernel):
            pass

        def test_after_that(guest_kernel):
            pass
    """)
    out = result.stdout.str()
    result.assert_outcomes(passed=3, errors=1)
    assert "ERROR at setup of test_next_guest_test" in out, out
    assert "between tests: after test_inner.py::test_loads_a_module_that_panics_later[" in out, out
    assert panic in out, out
    assert "PASSED test_inner.py::test_after_that" in out, out
    assert "KERNEL BROKE between tests" in out, out


@pytest.mark.full  # each boots guests of its own; the quick tier keeps the panic and oops cases
@pytest.mark.kernel
def test_panic_after_the_last_test_fails_the_run(
    pytester: pytest.Pytester, knh_kernel_session: KernelSession, knh_config: HarnessConfig
) -> None:
    result, panic = run_panic_later(pytester, knh_kernel_session, knh_config, """
        def test_host_only_last(knh_kernel_session):  # the session fixture keeps it last (no guest)
            wait_until_dead(knh_kernel_session)
    """)
    out = result.stdout.str()
    assert result.ret != 0, out
    assert "the guest kernel died after the last test on it" in out, out
    assert "after the last test on it: test_inner.py::test_loads_a_module_that_panics_later[" in out, out
    assert panic in out, out
    assert "KERNEL BROKE after the last test" in out, out


@pytest.mark.kernel
def test_oops_in_insmod_is_a_crash_and_never_a_skip(
    pytester: pytest.Pytester, knh_kernel_session: KernelSession, knh_config: HarnessConfig,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Also: the run's summary.md (and the GitHub job summary) shows the three oopses as one failure,
    decoded to the line of crashy.c that writes through NULL."""
    step_summary = pytester.path / "step-summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(step_summary))
    result = run_inner(pytester, knh_kernel_session, knh_config, """
        import pytest
        from harness.errors import HarnessError, ModuleLoadError

        def test_skips_modules_that_refuse_to_load(guest_kernel, built_module):
            try:
                guest_kernel.insmod(built_module.module(), {"oops_init": "1"})
            except ModuleLoadError as e:
                pytest.skip(f"does not load: {e}")

        def test_skips_on_any_harness_error(guest_kernel, built_module):
            try:
                guest_kernel.insmod(built_module.module(), {"oops_init": "1"})
            except HarnessError as e:
                pytest.skip(f"does not load: {type(e).__name__}")

        @pytest.mark.xfail(reason="expected to fail")
        def test_xfail_over_an_oops(guest_kernel, built_module):
            guest_kernel.insmod(built_module.module(), {"oops_init": "1"})
    """)
    out = result.stdout.str()
    result.assert_outcomes(failed=3)
    assert "ModuleCrashError: insmod crashy.ko: the kernel crashed" in out, out
    assert "crashy_init" in out, out
    assert "a kernel splat is never skipped" in out, out
    assert "the xfail-marked test raised ModuleCrashError" in out, out
    [summary_md] = (pytester.path / "results").glob("run-*/summary.md")
    text = summary_md.read_text()
    line = next(i for i, t in enumerate((CRASHY / "crashy.c").read_text().splitlines(), 1) if "*crashy_null = 1;" in t)
    release = knh_kernel_session.kernel.release
    assert "## Distinct failures: 1" in text and f"### 1. null-deref on {release}, 3 tests" in text, text
    assert f"tests/modules/crashy/crashy.c:{line}` (crashy_init)" in text, text
    assert step_summary.read_text() == text
