"""After-test kernel checks: splats in the test's kernel log window and new taint.

Pure policy on top of harness.dmesg: given the lines and taint values, say
what is wrong. The plugin turns a non-empty verdict into a test failure.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .dmesg import AllowEntry, KernelLine, SplatReport, TaintFlag, scan_splats, unexpected_taint

# Splat kinds after which the guest kernel is not trusted for the next test.
FATAL_KINDS = frozenset({"oops", "panic", "null-deref", "gpf", "unable-to-handle", "bug", "soft-lockup",
                         "hard-lockup", "rcu-stall", "hung-task", "kasan", "kfence", "list-corruption"})  # fmt: skip


@dataclass(frozen=True)
class KernelVerdict:
    splats: SplatReport
    new_taint: tuple[TaintFlag, ...]
    taint_before: int
    taint_after: int

    @property
    def ok(self) -> bool:
        return self.splats.ok and not self.new_taint

    @property
    def guest_suspect(self) -> bool:
        """True when the next test should get a freshly booted guest."""
        return bool(self.new_taint) or any(s.kind in FATAL_KINDS for s in self.splats.failures)

    def message(self) -> str:
        parts = []
        if self.splats.failures:
            parts.append(f"kernel splat(s) during the test ({len(self.splats.failures)}):\n{self.splats.summary()}")
        if self.new_taint:
            flags = ", ".join(str(f) for f in self.new_taint)
            parts.append(f"kernel taint changed {self.taint_before} -> {self.taint_after}: unexpected {flags}")
        return "\n".join(parts)


def judge(
    lines: Sequence[KernelLine], taint_before: int, taint_after: int, allowlist: Sequence[AllowEntry], allowed: str
) -> KernelVerdict:
    report = scan_splats(list(lines), allowlist)
    return KernelVerdict(report, tuple(unexpected_taint(taint_before, taint_after, allowed)), taint_before, taint_after)
