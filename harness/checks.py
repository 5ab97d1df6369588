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
class GuestDied:
    """The guest kernel stopped answering: why, and the end of its kernel console."""

    reason: str
    console_tail: str


@dataclass(frozen=True)
class KernelVerdict:
    splats: SplatReport
    new_taint: tuple[TaintFlag, ...]
    taint_before: int
    taint_after: int
    died: GuestDied | None = None

    @property
    def ok(self) -> bool:
        return self.splats.ok and not self.new_taint and self.died is None

    @property
    def guest_suspect(self) -> bool:
        """True when the next test should get a freshly booted guest."""
        return (
            self.died is not None
            or bool(self.new_taint)
            or any(s.kind in FATAL_KINDS for s in self.splats.failures)
        )

    def message(self) -> str:
        parts = []
        if self.died is not None:
            parts.append(f"the guest kernel died ({self.died.reason}); its kernel console shows:")
            parts.append(self.splats.summary() if self.splats.failures else "  (no splat text on the console)")
            parts.append(f"--- guest kernel console (last lines) ---\n{self.died.console_tail}")
            return "\n".join(parts)
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


def judge_death(console_text: str, reason: str, allowlist: Sequence[AllowEntry], tail_lines: int = 30) -> KernelVerdict:
    """The verdict on a guest that died: the splats its kernel console printed (`console_text`,
    from where the window began) and the console's last lines."""
    tail = "\n".join(console_text.splitlines()[-tail_lines:])
    return KernelVerdict(scan_splats(console_text, allowlist), (), 0, 0, GuestDied(reason, tail))
