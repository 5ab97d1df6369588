"""The CI matrix and the merge of shards' results: pure parts, on summaries and JUnit files shaped like
recorded runs'."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from harness.cli import commands as cli
from harness.cli.shards import merge_summaries, shard_matrix
from harness.formats.junit import merge_junit


def test_matrix_is_every_kernel_tier_and_engine() -> None:
    assert shard_matrix(["a", "b"], ["quick"], ["vng", "qemu"]) == {"include": [
        {"kernel": "a", "tier": "quick", "engine": "vng"}, {"kernel": "a", "tier": "quick", "engine": "qemu"},
        {"kernel": "b", "tier": "quick", "engine": "vng"}, {"kernel": "b", "tier": "quick", "engine": "qemu"}]}


def test_matrix_command_prints_json_for_strategy_matrix(capsys: Any) -> None:
    assert cli.main(["matrix", "--kernel", "generic", "--kernel", "generic-hwe-24.04", "--tier", "full", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"include": [
        {"kernel": "generic", "tier": "full", "engine": "vng"},
        {"kernel": "generic-hwe-24.04", "tier": "full", "engine": "vng"}]}  # fmt: skip


def shard(kernel: str, outcome: str, splats: list[dict[str, Any]]) -> dict[str, Any]:
    test = f"t.py::test_a[{kernel}]"
    outcomes = {test: outcome, f"t.py::test_b[{kernel}]": "passed"}
    return {"engine": "vng", "kernels": [{"release": kernel}], "outcomes": outcomes,
            "per_kernel": {kernel: {outcome: 1, "passed": 1} if outcome != "passed" else {"passed": 2}},
            "splats": splats, "crashes": [], "skipped": [], "coverage": [], "kmemleak": [], "failures": []}  # fmt: skip


def test_merged_shards_count_and_list_everything_once() -> None:
    s1 = shard("6.1", "failed", [{"test": "t.py::test_a[6.1]", "fingerprint": "x", "allowed": False}])
    s2 = shard("6.12", "passed", [])
    merged = merge_summaries([s1, s2])
    assert merged["tests"] == {"total": 4, "failed": 1, "passed": 3}
    assert merged["per_kernel"] == {"6.1": {"failed": 1, "passed": 1}, "6.12": {"passed": 2}}
    assert [k["release"] for k in merged["kernels"]] == ["6.1", "6.12"] and len(merged["splats"]) == 1
    assert merged["engine"] == "vng"


def test_junit_files_of_shards_become_one(tmp_path: Path) -> None:
    for n, (tests, failures) in enumerate(((3, 1), (2, 0))):
        suite = ET.Element("testsuite", name="pytest", tests=str(tests), failures=str(failures), errors="0",
                           skipped="0")  # fmt: skip
        ET.SubElement(suite, "testcase", name=f"test_{n}")
        root = ET.Element("testsuites")
        root.append(suite)
        ET.ElementTree(root).write(tmp_path / f"junit-{n}.xml")
    (tmp_path / "broken.xml").write_text("<not closed")
    merged = merge_junit(sorted(tmp_path.glob("*.xml"))).getroot()
    assert (merged.get("tests"), merged.get("failures")) == ("5", "1")
    assert [c.get("name") for c in merged.iter("testcase")] == ["test_0", "test_1"]
