"""summary.json counts every test of the run, as pytest's summary line does: tests in a guest, tests
that boot guests of their own (a session only), tests on the host, each once by its outcome, with
pytest's names for them (xfailed and xpassed too); summary.md's table counts the same."""

from __future__ import annotations

import json

import pytest

from harness.pytest_plugin.report import outcome_of

FAKE_SESSION_CONFTEST = """
from fake_guest import session_fixture

knh_kernel_session = session_fixture()
"""

TESTS = """
import pytest


@pytest.fixture
def broken():
    raise RuntimeError("setup fails")


def test_in_a_guest(guest):
    pass


def test_boots_guests_of_its_own(knh_kernel_session):
    pass


def test_on_the_host():
    pass


def test_fails():
    assert 1 == 2


def test_setup_error(broken):
    pass


def test_skipped_kernel_test(knh_kernel_session):
    pytest.skip("not here")


@pytest.mark.xfail(reason="known")
def test_xfail():
    assert 1 == 2


@pytest.mark.xfail(reason="fixed since")
def test_xpass():
    pass
"""


def test_summary_json_counts_what_pytest_counts(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(FAKE_SESSION_CONFTEST)
    pytester.makepyfile(test_counts=TESTS)
    results = pytester.path / "results"
    result = pytester.runpytest("-p", "no:cacheprovider", "--results-dir", str(results))
    pytest_counts = {("error" if k == "errors" else k): n for k, n in result.parseoutcomes().items()
                     if k not in ("warnings", "warning", "deselected")}  # fmt: skip
    assert pytest_counts == {"passed": 3, "failed": 1, "error": 1, "skipped": 1, "xfailed": 1, "xpassed": 1}
    run = next(results.glob("run-*"))
    summary = json.loads((run / "summary.json").read_text())
    assert summary["tests"] == {"total": 8, **pytest_counts}
    assert sum(sum(row.values()) for row in summary["per_kernel"].values()) == 8
    table = [ln for ln in (run / "summary.md").read_text().splitlines() if ln.startswith("| ")]
    header, *rows = table
    assert header.split("|")[2:-1] == [" passed ", " failed ", " error ", " skipped ", " xfailed ", " xpassed "]
    assert sum(int(n) for row in rows for n in row.split("|")[2:-1]) == 8, table


@pytest.mark.parametrize(("phases", "outcome"), [
    ({"setup": "passed", "call": "passed"}, "passed"),
    ({"call": "failed", "teardown": "failed"}, "failed"),
    ({"setup": "failed"}, "error"),
    ({"call": "passed", "teardown": "failed"}, "error"),  # pytest's line counts it under passed and error
    ({"call": "skipped", "teardown": "failed"}, "error"),
    ({"setup": "skipped"}, "skipped"),
    ({"call": "xfailed"}, "xfailed"),
    ({"setup": "xfailed"}, "xfailed"),  # xfail(run=False): never run
    ({"call": "xpassed"}, "xpassed"),
])  # fmt: skip
def test_each_test_has_one_outcome(phases: dict[str, str], outcome: str) -> None:
    assert outcome_of(phases) == outcome
