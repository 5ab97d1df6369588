"""The pytest plugin's behaviour without booting anything."""

import pytest

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


def test_kernel_check_that_cannot_run_is_an_error_not_a_pass() -> None:
    """A splat/taint check whose guest command fails must not count as a clean kernel."""
    from types import SimpleNamespace

    from harness.errors import HarnessError
    from harness.plugin import KernelCheckError, _check_kernel

    class Ops:
        def __init__(self, guest: object) -> None:
            self.guest = guest

        def lines_since(self, mark: object) -> list[object]:
            return []

        def taint(self) -> int:
            raise HarnessError("no taint value in the output of `cat /proc/sys/kernel/tainted`: 'Killed'")

    guest = SimpleNamespace(alive=True)
    state = {"session": SimpleNamespace(current_guest=guest), "ops": Ops(guest), "mark": None}
    item = SimpleNamespace(nodeid="tests/kernel/test_x.py::test_y")
    with pytest.raises(KernelCheckError, match=r"after the call of tests/kernel/test_x.py::test_y could not run: no t"):
        _check_kernel(item, state, phase="call")  # type: ignore[arg-type]
