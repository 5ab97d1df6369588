#!/usr/bin/env python3
"""Measure what loading a module's in-tree dependencies costs per test.

On one guest per kernel and engine, alternately loads and unloads (KernelSession.load/unload, as
the kmod fixture does) tests/modules/mk_pwd (no dependency) and tests/modules/dep_intree (needs
crc7: modprobe before, removed after), and prints the median wall time of each and the difference,
the cost of the dependency.

Usage: .venv/bin/python scripts/measure_dependency_cost.py [--rounds 15] [--kernel REL ...] [--engine E ...]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from harness.build.kernel import expand_kernel_specs
from harness.build.kernel_build import resolve_kernel_spec
from harness.config import resolve
from harness.session import KernelSession, ModuleSource

MODULES = Path(__file__).resolve().parent.parent / "tests" / "modules"


def measure(release: str, engine: str, rounds: int) -> dict[str, float]:
    session = KernelSession(resolve({"engine": engine}), resolve_kernel_spec(release),
                            Path(tempfile.mkdtemp(prefix="knh-depcost-")))  # fmt: skip
    sources = {"plain": ModuleSource(MODULES / "mk_pwd"), "dependency": ModuleSource(MODULES / "dep_intree")}
    times: dict[str, list[float]] = {name: [] for name in sources}
    try:
        for source in sources.values():
            session.build(source)
        session.guest_kernel()
        for _ in range(rounds):
            for name, source in sources.items():
                start = time.monotonic()
                session.unload(session.load({}, source))
                times[name].append(time.monotonic() - start)
    finally:
        session.close()
    return {name: statistics.median(values) for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--kernel", action="append", default=None)
    parser.add_argument("--engine", action="append", default=None)
    args = parser.parse_args()
    print("| kernel | engine | load+unload, no dependency | with crc7 | dependency cost |")
    print("|---|---|---|---|---|")
    for release in expand_kernel_specs(tuple(args.kernel or ("all",))):
        for engine in args.engine or ("vng", "qemu"):
            m = measure(release, engine, args.rounds)
            print(f"| {release} | {engine} | {m['plain']:.3f} s | {m['dependency']:.3f} s | "
                  f"{m['dependency'] - m['plain']:.3f} s |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
