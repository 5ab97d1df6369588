"""The pytest plugin's behaviour without booting anything."""

import os
from pathlib import Path
from types import SimpleNamespace

import pytest
from fake_guest import FakeKernel  # tests/fake_guest.py

KERNEL_TEST = """
def test_needs_guest(guest):
    assert guest is not None
"""


def test_unusable_kernel_fails_the_test_loudly(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_k=KERNEL_TEST)
    result = pytester.runpytest("--kernel", "9.9.9-no-such-kernel", "-p", "no:cacheprovider")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*kernel 9.9.9-no-such-kernel unusable*not installed*"])
    assert result.ret != 0


def test_kernel_id_in_test_name_and_marker(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_k=KERNEL_TEST)
    result = pytester.runpytest("--collect-only", "-q", "-m", "kernel", "--kernel", "9.9.9-x", "--kernel", "8.8.8-y")
    result.stdout.fnmatch_lines(["*test_needs_guest?9.9.9-x?*", "*test_needs_guest?8.8.8-y?*"])


def test_unit_tests_are_not_marked_kernel(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_u="def test_plain():\n    assert True\n")
    result = pytester.runpytest("-m", "not kernel")
    result.assert_outcomes(passed=1)


def test_bad_setting_names_its_source(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KNH_BOOT_TIMEOUT", "soon")
    pytester.makepyfile(test_u="def test_plain():\n    pass\n")
    result = pytester.runpytest()
    result.stderr.fnmatch_lines(["*invalid boot timeout 'soon' from environment variable KNH_BOOT_TIMEOUT*"])
    assert result.ret != 0


def test_option_beats_env(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KNH_ENGINE", "vng")
    pytester.makepyfile(
        test_c="def test_cfg(knh_config):\n    assert knh_config.engine == 'qemu'\n"
        "    assert knh_config.sources['engine'] == 'option --engine'\n"
    )
    pytester.runpytest("--engine", "qemu").assert_outcomes(passed=1)


def fake_window(guest_kernel: FakeKernel, *, alive: bool, console: Path) -> object:
    from harness.kernel_watch import Window

    guest = guest_kernel.guest
    guest.alive, guest.dead_reason = alive, None if alive else "QEMU exited"
    guest.paths.kernel_log = console
    session = SimpleNamespace(current_guest=guest, decode_inputs=lambda: ({}, {}, None))
    return Window(session, guest_kernel, mark=None, taint=0, console_offset=0, unloads=0)  # type: ignore[arg-type]


def test_kernel_check_that_cannot_run_is_an_error_not_a_pass(tmp_path: Path) -> None:
    """A splat/taint check whose guest command fails must not count as a clean kernel."""
    from harness.errors import HarnessError, KernelCheckError
    from harness.kernel_watch import Policy, check_window

    ops = FakeKernel(taint_error=HarnessError("no taint value in the output of `cat /proc/sys/kernel/tainted`: "
                                              "'Killed'"))  # fmt: skip
    window = fake_window(ops, alive=True, console=tmp_path / "kernel.log")
    with pytest.raises(KernelCheckError, match=r"could not run: no taint value"):
        check_window(window, Policy((), "OE", 0))  # type: ignore[arg-type]


@pytest.mark.parametrize(("cause", "infra"), [("GuestReadError", True), ("KernelLogLost", True),
                                             ("HarnessError", False)])  # fmt: skip
def test_a_check_that_cannot_run_keeps_its_causes_infra(tmp_path: Path, cause: str, infra: bool) -> None:
    """A guest answer the host cannot read is the host's problem: a bisection skips the commit."""
    from harness import errors
    from harness.kernel_watch import Policy, check_window

    ops = FakeKernel(taint_error=getattr(errors, cause)("unreadable"))
    window = fake_window(ops, alive=True, console=tmp_path / "kernel.log")
    with pytest.raises(errors.KernelCheckError) as caught:
        check_window(window, Policy((), "OE", 0))  # type: ignore[arg-type]
    assert caught.value.infra is infra


def test_dead_guest_is_a_failing_verdict_with_the_console_splat(tmp_path: Path) -> None:
    """A guest that died during the test is never "no verdict": the splat comes from its console file."""
    from harness.kernel_watch import Policy, check_window

    console = tmp_path / "kernel.log"
    console.write_text(
        "[    5.100000] BUG: unable to handle page fault for address: ffffffffc0a01000\n"
        "[    5.100001] #PF: supervisor instruction fetch in kernel mode\n"
        "[    5.100002] Oops: 0010 [#1] PREEMPT SMP NOPTI\n"
        "[    5.100003] RIP: 0010:0xffffffffc0a01000\n"
        "[    5.100004] Call Trace:\n"
        "[    5.100005]  <IRQ>\n"
        "[    5.100006]  call_timer_fn+0x27/0x130\n"
        "[    5.100007]  </IRQ>\n"
        "[    5.100008] Kernel panic - not syncing: Fatal exception in interrupt\n"
    )
    window = fake_window(FakeKernel(), alive=False, console=console)
    verdict = check_window(window, Policy((), "OE", 0))  # type: ignore[arg-type]
    assert not verdict.ok and verdict.died is not None and verdict.guest_suspect
    message = verdict.message()
    assert "the guest kernel died (QEMU exited)" in message
    assert "unable to handle page fault" in message and "Fatal exception in interrupt" in message


FAKE_SESSION_CONFTEST = """
from fake_guest import session_fixture

from harness.errors import HarnessError

knh_kernel_session = session_fixture(mark_error=HarnessError("no mark line in the output: 'Killed'"))
"""


def test_probe_failing_at_setup_fails_the_test_as_a_kernel_check_error(pytester: pytest.Pytester) -> None:
    """A log mark or taint read that fails before the test must fail it, never switch the checks off."""
    pytester.makeconftest(FAKE_SESSION_CONFTEST)
    pytester.makepyfile(test_probe="def test_uses_guest(guest):\n    pass\n")
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*kernel check error: the kernel checks could not start*no mark line*"])


def test_bad_allowlist_is_a_usage_error_at_startup(pytester: pytest.Pytester) -> None:
    bad = pytester.path / "allow.txt"
    bad.write_text("# comment\nWARNING: .*( ## unbalanced\n")
    pytester.makepyfile(test_x="def test_x():\n    pass\n")
    result = pytester.runpytest("-p", "no:cacheprovider", "--splat-allowlist", str(bad))
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*{bad}:2:*"])


CRASHING_SESSION_CONFTEST = """
from fake_guest import session_fixture

knh_kernel_session = session_fixture(release="fake-1.0")
"""

CRASHING_TESTS = '''
def test_a(guest):
    pass

def test_host_only_crash(knh_kernel_session):
    knh_kernel_session.current_guest.crash()

def test_b(guest):
    pass

def test_c(guest):
    pass
'''


@pytest.fixture
def crashing(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    """pytester with the crashing session's conftest.py, for runs in a subprocess (tests/ on their PYTHONPATH)."""
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).resolve().parent), prepend=os.pathsep)
    pytester.makeconftest(CRASHING_SESSION_CONFTEST)
    return pytester


def test_crash_between_tests_fails_the_next_test_naming_the_previous(crashing: pytest.Pytester) -> None:
    crashing.makepyfile(test_crash=CRASHING_TESTS)
    result = crashing.runpytest_subprocess("-p", "no:cacheprovider", "-rA")
    result.assert_outcomes(passed=3, errors=1)
    result.stdout.fnmatch_lines([
        "*ERROR at setup of test_b*",
        "*the guest kernel died between tests: after test_crash.py::test_a* passed its checks and before "
        "test_crash.py::test_b* began*",
        "*Kernel panic - not syncing: deliberate*",
    ])  # fmt: skip
    result.stdout.fnmatch_lines(["*KERNEL BROKE between tests on fake-1.0, after test_crash.py::test_a*"])


def test_crash_after_the_last_test_fails_the_run(crashing: pytest.Pytester) -> None:
    crashing.makepyfile(test_crash=CRASHING_TESTS.replace("def test_b(guest):", "def test_b(knh_kernel_session):")
                        .replace("def test_c(guest):", "def test_c(knh_kernel_session):"))  # fmt: skip
    result = crashing.runpytest_subprocess("-p", "no:cacheprovider", "-rA")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines([
        "*the guest kernel died after the last test on it: test_crash.py::test_a* passed its checks*",
        "*Kernel panic - not syncing: deliberate*",
    ])  # fmt: skip
    result.stdout.fnmatch_lines(["*KERNEL BROKE after the last test on fake-1.0, after test_crash.py::test_a*"])


SESSION_USE_TESTS = '''
def test_loads_through_the_session(knh_kernel_session):
    knh_kernel_session.guest_kernel().load("bad", "[    1.000000] WARNING: CPU: 0 PID: 1 at bad.c:1 bad_init+0x1/0x2")

def test_host_only(knh_kernel_session):
    assert knh_kernel_session.kernel.release == "fake-1.0"

def test_later(guest):
    pass
'''


def test_a_test_that_uses_the_sessions_guest_without_a_guest_fixture_is_watched(crashing: pytest.Pytester) -> None:
    """A test asking only for knh_kernel_session that loads a module through it (booting the guest): its splat
    fails it at teardown, checked from the boot of the guest it booted; a test that does not touch the guest
    stays host-only, and the next guest test starts clean."""
    crashing.makepyfile(test_use=SESSION_USE_TESTS)
    result = crashing.runpytest_subprocess("-p", "no:cacheprovider", "-rA", "-p", "no:randomly")
    result.assert_outcomes(passed=3, errors=1)
    result.stdout.fnmatch_lines(["*ERROR at teardown of test_loads_through_the_session*", "*WARNING: CPU: 0 PID: 1*"])
    result.stdout.fnmatch_lines(["PASSED test_use.py::test_host_only*", "PASSED test_use.py::test_later*"])


def test_a_last_test_that_uses_the_sessions_guest_is_blamed_once_and_not_the_test_before(
    crashing: pytest.Pytester,
) -> None:
    first = "def test_first(guest):\n    pass\n\n"
    crashing.makepyfile(test_use=first + SESSION_USE_TESTS.split("def test_host_only")[0])
    result = crashing.runpytest_subprocess("-p", "no:cacheprovider", "-rA", "-p", "no:randomly")
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines(["*ERROR at teardown of test_loads_through_the_session*", "*WARNING: CPU: 0 PID: 1*"])
    assert "after the last test" not in result.stdout.str()
    assert "KERNEL BROKE" not in result.stdout.str()


def test_failure_kind_is_recorded_by_error_type_for_bisect(pytester: pytest.Pytester) -> None:
    """An unusable kernel is an infra failure, an assertion a test failure: bisect-run reads the
    JUnit property the plugin writes, not the words of the message."""
    from harness.cli.bisect_run import read_junit

    pytester.makepyfile(test_k="def test_needs_kernel(knh_kernel_session):\n    pass\n\n"
                               "def test_asserts():\n    assert 1 == 2\n")  # fmt: skip
    junit = pytester.path / "junit.xml"
    result = pytester.runpytest("-p", "no:cacheprovider", "--kernel", str(pytester.path / "no-such-vmlinuz"),
                                f"--junitxml={junit}", "-o", "junit_family=xunit1")  # fmt: skip
    result.assert_outcomes(failed=1, errors=1)
    outcome = read_junit(junit)
    assert (outcome.infra, outcome.failed) == (1, 1)


def test_flag_settings_take_no_value(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_f="def test_f(knh_config):\n    assert knh_config.require_ebpf is True\n")
    pytester.runpytest("-p", "no:cacheprovider", "--require-ebpf").assert_outcomes(passed=1)


def test_quick_tier_deselects_full_tests_and_full_runs_them(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_t="import pytest\n\n@pytest.mark.full\ndef test_soak():\n    pass\n\n"
                               "def test_quick(knh_config):\n    assert knh_config.full is False\n")  # fmt: skip
    quick = pytester.runpytest("-p", "no:cacheprovider")
    quick.assert_outcomes(passed=1, deselected=1)
    pytester.runpytest("-p", "no:cacheprovider", "--full", "-k", "soak").assert_outcomes(passed=1)


ONE_KERNEL_TESTS = """
import pytest

@pytest.mark.one_kernel
@pytest.mark.parametrize("sig", ["INT", "TERM", "KILL"])
def test_cleanup(knh_kernel_session, sig):
    pass

@pytest.mark.one_kernel
def test_timeout(knh_kernel_session):
    pass

def test_every_kernel(knh_kernel_session):
    pass
"""


def collected(result: pytest.RunResult) -> list[str]:
    return sorted(line.strip() for line in result.stdout.lines if "::" in line)


def test_one_kernel_cases_spread_over_the_matrix_in_the_quick_tier_and_run_on_every_kernel_in_the_full(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(test_o=ONE_KERNEL_TESTS)
    kernels = ["--kernel", "ka", "--kernel", "kb"]
    quick = pytester.runpytest("-p", "no:cacheprovider", "--collect-only", "-q", *kernels)  # in any order
    assert collected(quick) == [
        "test_o.py::test_cleanup[ka-INT]", "test_o.py::test_cleanup[ka-TERM]", "test_o.py::test_cleanup[kb-KILL]",
        "test_o.py::test_every_kernel[ka]", "test_o.py::test_every_kernel[kb]", "test_o.py::test_timeout[kb]",
    ]  # fmt: skip
    quick.stdout.fnmatch_lines(["*6/10 tests collected (4 deselected)*"])
    full = pytester.runpytest("-p", "no:cacheprovider", "--collect-only", "-q", "--full", *kernels)
    assert len(collected(full)) == 10
    one = pytester.runpytest("-p", "no:cacheprovider", "--collect-only", "-q", "--kernel", "ka")
    assert len(collected(one)) == 5


COSTED_ONE_KERNEL_TESTS = """
import pytest

@pytest.mark.one_kernel(cost=3)
@pytest.mark.parametrize("n", [1, 2])
def test_three(knh_kernel_session, n):
    pass

@pytest.mark.one_kernel(cost=5)
def test_five(knh_kernel_session):
    pass

@pytest.mark.one_kernel
def test_one(knh_kernel_session):
    pass
"""

GROUPED_ONE_KERNEL_TESTS = """
import pytest

@pytest.mark.one_kernel(cost=2, group="inner-run")
def test_a(knh_kernel_session):
    pass

@pytest.mark.one_kernel(cost=3)
def test_b(knh_kernel_session):
    pass

@pytest.mark.one_kernel(cost=2, group="inner-run")
def test_c(knh_kernel_session):
    pass
"""


def test_one_kernel_cases_go_costliest_first_to_the_kernel_with_the_least_cost(pytester: pytest.Pytester) -> None:
    """5 to ka, 3 and 3 to kb (kb has less each time), then 1 to ka (5 against 6): 6 and 6. Spread by name
    alone, the two cases of cost 3 would land on different kernels: 8 and 4."""
    pytester.makepyfile(test_c=COSTED_ONE_KERNEL_TESTS)
    quick = pytester.runpytest("-p", "no:cacheprovider", "--collect-only", "-q", "--kernel", "ka", "--kernel", "kb")
    assert collected(quick) == [
        "test_c.py::test_five[ka]", "test_c.py::test_one[ka]",
        "test_c.py::test_three[kb-1]", "test_c.py::test_three[kb-2]",
    ]


def test_one_kernel_cases_of_a_group_run_on_one_kernel(pytester: pytest.Pytester) -> None:
    """test_a and test_c share a group (cost 4): on ka; test_b (cost 3) on kb. Without the group, b would go
    first, to ka, and a and c to kb."""
    pytester.makepyfile(test_g=GROUPED_ONE_KERNEL_TESTS)
    quick = pytester.runpytest("-p", "no:cacheprovider", "--collect-only", "-q", "--kernel", "ka", "--kernel", "kb")
    assert collected(quick) == ["test_g.py::test_a[ka]", "test_g.py::test_b[kb]", "test_g.py::test_c[ka]"]


DESELECT_FIRST = """
import pytest

@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):  # as debug_kernel does: some copies are gone before the spread
    items[:] = [i for i in items if i.name not in {gone}]
"""


def test_a_group_goes_to_a_kernel_every_one_of_its_cases_has(pytester: pytest.Pytester) -> None:
    """test_c has no copy on ka: the group (a and c, cost 4) goes to kb, where both have one, though ka is the
    first kernel with the least cost; test_b (cost 3) to ka. Chosen among the kernels of any case, the group
    would take ka and test_c would run nowhere."""
    pytester.makeconftest(DESELECT_FIRST.format(gone={"test_c[ka]"}))
    pytester.makepyfile(test_g=GROUPED_ONE_KERNEL_TESTS)
    quick = pytester.runpytest("-p", "no:cacheprovider", "--collect-only", "-q", "--kernel", "ka", "--kernel", "kb")
    assert collected(quick) == ["test_g.py::test_a[kb]", "test_g.py::test_b[ka]", "test_g.py::test_c[kb]"]


def test_a_group_whose_cases_share_no_kernel_is_a_usage_error(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(DESELECT_FIRST.format(gone={"test_a[kb]", "test_c[ka]"}))
    pytester.makepyfile(test_g=GROUPED_ONE_KERNEL_TESTS)
    result = pytester.runpytest("-p", "no:cacheprovider", "--collect-only", "-q", "--kernel", "ka", "--kernel", "kb")
    assert result.ret == pytest.ExitCode.USAGE_ERROR, result.stdout.str() + result.stderr.str()
    result.stderr.fnmatch_lines(["*one_kernel(group='inner-run'): its cases (test_a, test_c) have no kernel of the "
                                 "matrix in common*"])  # fmt: skip


@pytest.mark.parametrize(("argument", "said"), [
    ("group=3", "is a name"), ("group=''", "is a name"), ("cost='six'", "positive number"),
    ("cost=0", "positive number"), ("cost=-2", "positive number"), ("cost=True", "positive number"),
    ("cost=float('nan')", "positive number"), ("cost=-float('inf')", "positive number"),
])  # fmt: skip
@pytest.mark.parametrize("tier", [[], ["--full"]])
def test_a_bad_one_kernel_argument_is_a_usage_error(pytester: pytest.Pytester, argument: str, said: str,
                                                    tier: list[str]) -> None:  # fmt: skip
    pytester.makepyfile(test_bad=f"import pytest\n\n@pytest.mark.one_kernel({argument})\n"
                                 "def test_x(knh_kernel_session):\n    pass\n")  # fmt: skip
    result = pytester.runpytest("-p", "no:cacheprovider", "--collect-only", "-q", "--kernel", "ka", "--kernel", "kb",
                                *tier)  # fmt: skip
    assert result.ret == pytest.ExitCode.USAGE_ERROR, result.stdout.str() + result.stderr.str()
    shown = argument.replace("float('nan')", "nan").replace("-float('inf')", "-inf")
    result.stderr.fnmatch_lines([f"*test_bad.py::test_x*one_kernel({shown})*{said}*"])


class _Item:
    """What harness.pytest_plugin.plugin.selected reads of a collected test: its markers and its kernel parameter."""

    def __init__(self, markers: tuple[str, ...], spec: str | None) -> None:
        from harness.pytest_plugin.runstate import KernelParam

        self.markers = markers
        if spec is not None:
            self.callspec = SimpleNamespace(params={"knh_kernel_session": KernelParam(spec, None, None)})

    def get_closest_marker(self, name: str) -> object | None:
        return name if name in self.markers else None


@pytest.mark.parametrize(("markers", "spec", "full", "kept"), [
    (("debug_kernel",), "debug", False, True),
    (("debug_kernel",), "debug:/src/linux", False, True),
    (("debug_kernel",), "6.1.0-57-amd64", True, False),
    (("debug_kernel",), "all", True, False),
    (("debug_kernel",), None, True, False),  # no kernel parameter: no debug kernel either
    (("debug_kernel", "full"), "debug", False, False),
    (("full",), "debug", False, False),
    (("full",), "debug", True, True),
    ((), "6.1.0-57-amd64", False, True),
])  # fmt: skip
def test_debug_kernel_tests_run_only_on_a_debug_profile_kernel(
    markers: tuple[str, ...], spec: str | None, full: bool, kept: bool
) -> None:
    from typing import cast

    from harness.pytest_plugin.plugin import selected

    assert selected(cast(pytest.Item, _Item(markers, spec)), full=full) is kept
