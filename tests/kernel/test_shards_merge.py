"""Two shards (one per kernel) merged with `python -m harness report` give the report of one run over
both kernels: the same counts per kernel, the same distinct failures with the same fingerprints.

Each run is a small pytest session of its own (pytester, a subprocess) on tests/modules/crashy: one
test whose insmod oopses, one that passes, on the fast engine."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
from inner_runs import MODULES, source_conftest  # tests/kernel/inner_runs.py

from harness.build.kernel import expand_kernel_specs

CONFTEST = source_conftest(MODULES / "crashy")
TESTS = """
def test_oops(guest_kernel, built_module):
    guest_kernel.insmod(built_module.module(), {"oops_init": "1"})

def test_loads(kmod):
    pass
"""

pytestmark = [pytest.mark.kernel, pytest.mark.full, pytest.mark.usefixtures("shared_cache")]


def run(pytester: pytest.Pytester, results: Path, kernels: list[str]) -> dict[str, Any]:
    args = ["-p", "no:cacheprovider", "--engine", "qemu", "--results-dir", str(results)]
    for kernel in kernels:
        args += ["--kernel", kernel]
    pytester.runpytest_subprocess(*args).assert_outcomes(passed=len(kernels), failed=len(kernels))
    [summary] = results.glob("run-*/summary.json")
    return dict(json.loads(summary.read_text()))


def fingerprints(summary: dict[str, Any]) -> list[str]:
    return sorted(s["fingerprint"] for s in summary["splats"] if not s["allowed"])


def test_two_shards_merged_equal_one_run_over_both_kernels(pytester: pytest.Pytester) -> None:
    kernels = [k for k in expand_kernel_specs(("all",)) if k]
    if len(kernels) < 2:
        pytest.skip(f"needs two installed kernels with headers, found {kernels}")
    kernels = kernels[:2]
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_crashy=TESTS)
    whole = run(pytester, pytester.path / "whole", kernels)
    for n, kernel in enumerate(kernels):
        run(pytester, pytester.path / f"shard{n}", [kernel])
    out = pytester.path / "merged"
    proc = pytester.run(sys.executable, "-m", "harness", "report", str(pytester.path / "shard0"),
                        str(pytester.path / "shard1"), "--out", str(out))  # fmt: skip
    assert proc.ret == 1  # the merged run has failures
    merged = json.loads((out / "summary.json").read_text())
    assert merged["per_kernel"] == whole["per_kernel"]
    assert merged["tests"] == whole["tests"]
    assert fingerprints(merged) == fingerprints(whole)
    [whole_md] = (pytester.path / "whole").glob("run-*/summary.md")
    distinct = [line for line in whole_md.read_text().splitlines() if line.startswith("### ")]
    assert distinct == [line for line in (out / "summary.md").read_text().splitlines() if line.startswith("### ")]
    assert distinct == [f"### 1. null-deref on {' and '.join(kernels)}, 2 tests"]
