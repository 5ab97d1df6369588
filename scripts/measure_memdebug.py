#!/usr/bin/env python3
"""Measure what the stock-kernel memory-debug helpers (harness/build/memdebug.py) cost.

For each kernel and each variant (KNH_MEMORY_DEBUG=off, kfence, slub, all) this
boots the fast (qemu) engine with `python -m harness exec --no-module`, rounds
interleaved so host noise hits every variant alike, and records:

* boot_s: "guest ready in X s" as the harness reports it;
* loop_ms: a fork/exec-heavy loop in the guest (100 x /bin/true), which
  allocates and frees many slab objects, timed inside the guest;
* wall_s: the whole exec (boot, loop, shutdown) seen from the host.

`--kernel debug --variants off` next to a stock release measures the debug kernel the same way.

Usage: .venv/bin/python scripts/measure_memdebug.py [--rounds 5] [--kernel REL ...] [--json out.json]
Prints a Markdown table of medians (min-max) for docs/kernels.md.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from harness.build.config_items import read_kernel_config  # noqa: E402
from harness.build.kernel import Kernel, installed_kernels  # noqa: E402
from harness.build.kernel_build import built_kernel_for_spec  # noqa: E402
from harness.build.memdebug import memory_debug_args  # noqa: E402

VARIANTS = ("off", "kfence", "slub", "all")
LOOP = 'a=$(date +%s%N); i=0; while [ $i -lt 100 ]; do /bin/true; i=$((i+1)); done; b=$(date +%s%N); ' \
       'echo "KNH_LOOP_MS=$(( (b-a)/1000000 ))"; cat /proc/cmdline'  # fmt: skip
READY_RE = re.compile(r"guest ready in ([\d.]+) s")
LOOP_RE = re.compile(r"KNH_LOOP_MS=(\d+)")


def run_once(release: str, variant: str) -> dict[str, float] | None:
    env = {**os.environ, "KNH_MEMORY_DEBUG": variant}
    argv = [sys.executable, "-m", "harness", "exec", "--kernel", release, "--engine", "qemu", "--no-module",
            "--boot-timeout", "900", "--command-timeout", "600", "--", "sh", "-c", LOOP]  # fmt: skip
    start = time.monotonic()
    proc = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    wall = time.monotonic() - start
    ready, loop = READY_RE.search(proc.stderr), LOOP_RE.search(proc.stdout)
    if proc.returncode != 0 or ready is None or loop is None:
        print(f"  {release} {variant}: failed (exit {proc.returncode})\n{proc.stderr[-2000:]}", file=sys.stderr)
        return None
    return {"boot_s": float(ready.group(1)), "loop_ms": float(loop.group(1)), "wall_s": wall}


def helpers_of(variant: str) -> tuple[str, ...]:
    return {"off": (), "all": ("kfence", "slub")}.get(variant, (variant,))


def kernel_for(spec: str) -> Kernel | None:
    installed = {k.release: k for k in installed_kernels()}
    return installed.get(spec) or built_kernel_for_spec(spec)


def distinct_variants(spec: str, variants: list[str]) -> list[str]:
    """The variants that give this kernel different arguments (the debug kernel: just one)."""
    kernel = kernel_for(spec)
    config = read_kernel_config(kernel) if kernel is not None else {}
    seen: dict[tuple[str, ...], str] = {}
    for variant in variants:
        seen.setdefault(memory_debug_args(config, helpers_of(variant)), variant)
    return list(seen.values())


def fmt(values: list[float], digits: int) -> str:
    if not values:
        return "-"
    return f"{statistics.median(values):.{digits}f} ({min(values):.{digits}f}-{max(values):.{digits}f})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--kernel", action="append", default=[], help="release (default: every installed one)")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"subset of {','.join(VARIANTS)}")
    parser.add_argument("--json", dest="json_out", default="")
    args = parser.parse_args()
    releases = args.kernel or [k.release for k in installed_kernels()]
    variants = [v for v in args.variants.split(",") if v]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown variant(s) {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
    plan = {r: distinct_variants(r, variants) for r in releases}
    results: dict[str, dict[str, list[dict[str, float]]]] = {r: {v: [] for v in plan[r]} for r in releases}
    for n in range(args.rounds):
        for release in releases:
            for variant in plan[release]:
                sample = run_once(release, variant)
                if sample is not None:
                    results[release][variant].append(sample)
                    print(f"round {n + 1} {release} {variant}: {sample}", file=sys.stderr, flush=True)
    print("| kernel | KNH_MEMORY_DEBUG | arguments | boot to ready (s) | 100 fork+exec (ms) | whole exec (s) | runs |")
    print("|---|---|---|---|---|---|---|")
    for release in releases:
        kernel = kernel_for(release)
        config = read_kernel_config(kernel) if kernel is not None else {}
        for variant in plan[release]:
            samples = results[release][variant]
            kargs = " ".join(memory_debug_args(config, helpers_of(variant))) or "(none)"
            print(f"| {release} | {variant} | `{kargs}` | {fmt([s['boot_s'] for s in samples], 2)} | "
                  f"{fmt([s['loop_ms'] for s in samples], 0)} | {fmt([s['wall_s'] for s in samples], 1)} | "
                  f"{len(samples)} |")  # fmt: skip
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
