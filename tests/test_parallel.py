"""Kernels in parallel: the scheduling scope, the worker count, the merged summary."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.config import HarnessConfig
from harness.pytest_plugin.parallel import kernel_scope
from harness.pytest_plugin.report import breakage, summary_dict
from harness.pytest_plugin.runstate import RunState

LABELS = ["6.12.117+deb12-amd64", "6.1.0-57-amd64"]


@pytest.mark.parametrize(("nodeid", "scope"), [
    ("tests/kernel/test_seed.py::test_hello[6.1.0-57-amd64]", "6.1.0-57-amd64"),
    ("tests/kernel/test_seed.py::test_hello[6.12.117+deb12-amd64]", "6.12.117+deb12-amd64"),
    ("tests/test_reliability.py::test_killed[6.1.0-57-amd64-15]", "6.1.0-57-amd64"),  # with another parameter
    ("tests/test_fuzz.py::test_model_on_host[1]", "tests/test_fuzz.py::test_model_on_host[1]"),  # no kernel
    ("tests/kernel_6.1.0-57-amd64.py::test_x", "tests/kernel_6.1.0-57-amd64.py::test_x"),  # only ids count
])  # fmt: skip
def test_kernel_scope_groups_a_kernels_tests(nodeid: str, scope: str) -> None:
    assert kernel_scope(nodeid, LABELS) == scope


def _worker(release: str, outcome: str, splats: list[dict[str, object]]) -> dict[str, object]:
    return {"kernels": [{"release": release, "boots": 1, "boot_retries": 0, "boot_times_s": [4.2],
                         "accel": "tcg", "accel_reason": "requested", "accel_notice": "TCG"}],
            "outcomes": {f"t.py::test[{release}]": {"call": outcome}}, "splats": splats, "crashes": [],
            "skipped": []}  # fmt: skip


def test_summary_merges_what_the_workers_recorded(tmp_path: Path) -> None:
    state = RunState(HarnessConfig(), (), tmp_path)
    splat = {"test": "t.py::test[b]", "kernel": "b", "phase": "call", "kind": "warning", "fingerprint": "w",
             "allowed": False}  # fmt: skip
    state.remote += [_worker("a", "passed", []), _worker("b", "failed", [splat])]
    summary = summary_dict(state)
    assert [k["release"] for k in summary["kernels"]] == ["a", "b"]
    assert summary["tests"] == {"total": 2, "passed": 1, "failed": 1}
    assert summary["splats"] == [splat] and breakage(summary)
    state.remote[1]["splats"] = []
    assert not breakage(summary_dict(state))


@pytest.mark.parametrize(("markexpr", "kernel_tests"), [
    ("", True), ("kernel", True), ("not kernel", False), ("not full", True), ("kernel and not full", True),
    ("not kernel and not full", False), ("((", True), ("full", True), ("not (kernel and not full)", True),
])  # fmt: skip
def test_auto_workers_know_a_run_of_host_side_tests_by_its_mark_expression(markexpr: str, kernel_tests: bool) -> None:
    from harness.pytest_plugin.parallel import selects_kernel_tests

    assert selects_kernel_tests(markexpr) is kernel_tests
