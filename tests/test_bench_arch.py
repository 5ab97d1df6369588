"""The benchmark's rows for foreign architectures (harness/knetlink/bench_arch.py), without a guest."""

from __future__ import annotations

from typing import Any

import pytest

from harness.knetlink import bench_arch
from harness.knetlink.bench_arch import ARCH_KEYS, format_arch_rows, host_median


def fig(median: float | None) -> dict[str, Any]:
    return {"median": median, "min": median, "max": median, "runs": 1}


def result() -> dict[str, Any]:
    host = {k: fig(1.0) for k in ARCH_KEYS}
    host["boot_to_ready_s"] = {**fig(7.0), "by_engine": {"vng": fig(7.0), "qemu": fig(3.0)}}
    arm = {k: fig(2.0) for k in ARCH_KEYS}
    arm["boot_to_ready_s"] = fig(12.0)
    return {**host, "arches": {"arm64": {"kernel": "arm64:6.1.0-57-arm64", "accel": "tcg", **arm}}}


def test_the_boot_compares_with_the_host_qemu_engine() -> None:
    """Both boot with the qemu engine: the host's vng figure would make the ratio about the engine."""
    r = result()
    assert host_median(r, "boot_to_ready_s") == 3.0
    assert host_median(r, "insmod_s") == 1.0
    rows = format_arch_rows(r)
    assert rows[0].startswith("arm64 guests: kernel arm64:6.1.0-57-arm64, accelerator tcg")
    boot = next(row for row in rows if "boot_to_ready_s" in row)
    assert "(4.00x the host's 3)" in boot, boot
    assert all("(2.00x the host's 1)" in row for row in rows[1:] if "boot_to_ready_s" not in row), rows


def test_a_figure_not_taken_shows_a_dash_and_no_ratio() -> None:
    r = result()
    r["arches"]["arm64"]["per_test_overhead_s"] = fig(None)
    row = next(row for row in format_arch_rows(r) if "per_test_overhead_s" in row)
    assert row.split()[-1] == "-", row


def test_no_arch_set_up_adds_no_row() -> None:
    assert format_arch_rows({k: fig(1.0) for k in ARCH_KEYS}) == []


def test_foreign_specs_are_the_newest_kernel_of_each_store(monkeypatch: pytest.MonkeyPatch) -> None:
    from pathlib import Path

    from harness.build.kernel import Kernel

    def kernels(arch: Any) -> list[Kernel]:
        if arch.name != "arm64":
            return []
        return [Kernel(r, Path(f"/s/boot/vmlinuz-{r}"), Path("/s/build"), arch="arm64")
                for r in ("6.12.118+deb12-arm64", "6.1.0-57-arm64")]  # fmt: skip

    monkeypatch.setattr(bench_arch, "foreign_kernels", kernels)
    monkeypatch.setattr(bench_arch, "is_foreign", lambda arch: arch.name != "x86_64")
    assert bench_arch.foreign_specs() == ["arm64:6.12.118+deb12-arm64"]
