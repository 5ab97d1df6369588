"""Past one machine: the shards of a run for a CI matrix, and one report from the shards' results.

``python -m harness matrix --json`` prints the shard list for GitHub Actions' ``strategy.matrix``
(kernel x tier x engine; the installed kernels with headers unless ``--kernel`` names others, e.g.
the distribution flavours a CI job installs), so the workflow's matrix comes from the harness.
``python -m harness report DIR...`` merges the results directories of several shards (downloaded
artifacts: each holds ``run-*/summary.json`` and JUnit files) into one summary.json, summary.md
and JUnit file, grouped as one run's would be.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from harness.build.kernel import expand_kernel_specs
from harness.cli.base import EXIT_HARNESS, Command, Output
from harness.formats.junit import merge_junit
from harness.formats.summary_md import append_step_summary, render_markdown

TIERS = ("quick", "full")
LIST_KEYS = ("kernels", "splats", "crashes", "skipped", "coverage", "kmemleak", "failures")


def shard_matrix(kernels: Sequence[str], tiers: Sequence[str], engines: Sequence[str]) -> dict[str, Any]:
    """`{"include": [{"kernel", "tier", "engine"}, ...]}`: every combination, kernels first."""
    return {"include": [{"kernel": k, "tier": t, "engine": e} for k in kernels for t in tiers for e in engines]}


def merge_summaries(summaries: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """One summary from several runs' summary.json: outcomes, lists and per-kernel counts put together,
    the totals counted again (a test id names its kernel, so the shards' tests never collide)."""
    outcomes: dict[str, str] = {}
    per_kernel: dict[str, dict[str, int]] = {}
    for s in summaries:
        outcomes.update(s.get("outcomes", {}))
        for kernel, kernel_counts in s.get("per_kernel", {}).items():
            row = per_kernel.setdefault(kernel, {})
            for outcome, n in kernel_counts.items():
                row[outcome] = row.get(outcome, 0) + n
    counts = Counter(outcomes.values())
    merged: dict[str, Any] = {
        "engine": ", ".join(dict.fromkeys(str(s.get("engine", "?")) for s in summaries)),
        "tests": {"total": len(outcomes), **counts},
        "outcomes": outcomes,
        "per_kernel": per_kernel,
    }
    for key in LIST_KEYS:
        merged[key] = [item for s in summaries for item in s.get(key, ())]
    return merged


def shard_summaries(directory: Path) -> list[Path]:
    """The summary.json files of the runs under a shard's results directory."""
    return sorted(directory.rglob("summary.json"))


def add_matrix_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--kernel", action="append", default=None, metavar="KERNEL",
                   help="kernel of a shard (repeatable; default: every installed kernel with headers)")  # fmt: skip
    p.add_argument("--tier", action="append", default=None, choices=TIERS, help="tier (repeatable; default quick)")
    p.add_argument("--engine", action="append", default=None, choices=("vng", "qemu"),
                   help="engine (repeatable; default vng)")  # fmt: skip
    p.add_argument("--json", action="store_true", help="one line of JSON for strategy.matrix (fromJSON)")


def run_matrix(args: argparse.Namespace) -> int:
    kernels = [k for k in expand_kernel_specs(tuple(args.kernel or ("all",))) if k]
    if not kernels:
        Output(False).error("no kernel for the matrix: none installed with headers; name them with --kernel")
        return EXIT_HARNESS
    matrix = shard_matrix(kernels, args.tier or ["quick"], args.engine or ["vng"])
    if args.json:
        print(json.dumps(matrix, separators=(",", ":")))
    else:
        for shard in matrix["include"]:
            print(f"{shard['kernel']}\t{shard['tier']}\t{shard['engine']}")
    return 0


def add_report_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("directories", nargs="+", type=Path, metavar="DIR", help="results directories of the shards")
    p.add_argument("--out", type=Path, default=Path("results/merged"), metavar="DIR",
                   help="where summary.json, summary.md and junit.xml go (default results/merged)")  # fmt: skip


def run_report(args: argparse.Namespace) -> int:
    out = Output(False)
    paths = [p for d in args.directories for p in shard_summaries(d)]
    missing = [str(d) for d in args.directories if not shard_summaries(d)]
    if missing:
        out.error(f"no summary.json under {', '.join(missing)}: not a results directory of a run (download the "
                  "shards' results artifacts, each holding run-*/summary.json)")  # fmt: skip
        return EXIT_HARNESS
    try:
        summaries = [json.loads(p.read_text()) for p in paths]
    except (OSError, ValueError) as e:
        out.error(f"a shard's summary.json is unreadable: {e}")
        return EXIT_HARNESS
    merged = merge_summaries(summaries)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "summary.json").write_text(json.dumps(merged, indent=2) + "\n")
    markdown = render_markdown(merged, f"{len(paths)} shard(s) merged")
    (args.out / "summary.md").write_text(markdown)
    junits = sorted(p for d in args.directories for p in d.rglob("*.xml") if not p.is_relative_to(args.out))
    if junits:
        merge_junit(junits).write(args.out / "junit.xml", encoding="utf-8", xml_declaration=True)
    append_step_summary(markdown)
    sys.stdout.write(markdown)
    failed = merged["tests"].get("failed", 0) + merged["tests"].get("error", 0)
    return 1 if failed or merged["crashes"] or any(not s["allowed"] for s in merged["splats"]) else 0


COMMANDS = (
    Command("matrix", "the shards of a run for a CI matrix (kernel x tier x engine), --json for strategy.matrix",
            add_matrix_arguments, run_matrix),
    Command("report", "merge the results directories of several shards into one summary.md/summary.json/JUnit",
            add_report_arguments, run_report),
)  # fmt: skip
