"""The benchmark's figures for guests of a foreign architecture (arm64 on an x86_64 host), beside the host's.

The same measurements as the host's main figures where they apply to any guest: boot to a ready
shell (the qemu engine, the one a foreign guest boots with), the console round trip, insmod and
rmmod of the module, and the per-test overhead of an empty kernel test. Each architecture whose
store has a kernel (``python -m harness arch-setup ARCH``) is measured on its newest kernel.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from harness.arches import ARCHES, is_foreign
from harness.build.kernel import foreign_kernels
from harness.config import HarnessConfig
from harness.knetlink.bench import console_rtt, fresh_boots, load_cycles, per_test_overhead, quick_options
from harness.session import KernelSession

ARCH_KEYS = ("boot_to_ready_s", "console_rtt_ms", "insmod_s", "rmmod_s", "per_test_overhead_s")


def foreign_specs() -> list[str]:
    """The newest kernel of every foreign architecture that has one in its store, as --kernel values."""
    out = []
    for arch in ARCHES.values():
        kernels = foreign_kernels(arch) if is_foreign(arch) else []
        if kernels:
            out.append(kernels[0].spec)
    return out


def arch_figures(cfg: HarnessConfig, spec: str, session_for: Callable[[HarnessConfig], KernelSession],
                 boots: int, rtt_samples: int, cycles: int, overhead_tests: int,
                 progress: Callable[[str], None]) -> dict[str, Any]:  # fmt: skip
    """ARCH_KEYS for the kernel `spec` names, as {key: Figure.as_dict()} plus the kernel and accelerator."""
    c = replace(cfg, kernels=(spec,), engine="qemu", boot_retries=0)
    with contextlib.ExitStack() as keep:
        boot, failed, session = fresh_boots(lambda: session_for(c), boots, spec, progress, keep)
        boot.note = "qemu engine (-M virt under TCG for arm64), fresh guests"
        boot.extra = {"failed_boots": failed}
        rtt = console_rtt(session.guest(), rtt_samples)
        insmod, rmmod = load_cycles(session, cycles)
        kernel, accel = session.kernel, session.accel().accel
    opts = replace(quick_options(boots, 1), overhead_tests=overhead_tests)
    overhead = per_test_overhead(c, kernel.spec, opts, progress)
    figs = {"boot_to_ready_s": boot, "console_rtt_ms": rtt, "insmod_s": insmod, "rmmod_s": rmmod,
            "per_test_overhead_s": overhead}  # fmt: skip
    return {"kernel": kernel.spec, "accel": accel, **{k: figs[k].as_dict() for k in ARCH_KEYS}}


def host_median(result: dict[str, Any], key: str) -> float | None:
    """The host's figure a foreign one compares with: for the boot, the qemu engine's (the one both boot with)."""
    figure = result.get(key, {})
    if key == "boot_to_ready_s":
        figure = figure.get("by_engine", {}).get("qemu", figure)
    median: float | None = figure.get("median")
    return median


def format_arch_rows(result: dict[str, Any]) -> list[str]:
    """The table's rows for result["arches"]: each figure beside the host's, with the ratio."""
    rows = []
    for name, figs in result.get("arches", {}).items():
        rows.append(f"{name} guests: kernel {figs['kernel']}, accelerator {figs['accel']} (the host's guests: "
                    "the qemu engine's boot)")  # fmt: skip
        for key in ARCH_KEYS:
            theirs, ours = figs[key]["median"], host_median(result, key)
            ratio = f" ({theirs / ours:.2f}x the host's {ours:.4g})" if theirs and ours else ""
            shown = "-" if theirs is None else f"{theirs:.4g}"
            rows.append(f"  {key:<20} {shown:>10}{ratio}")
    return rows
