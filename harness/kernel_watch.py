"""The kernel watch, pure of pytest: every guest test runs inside a window, and nothing
the kernel does is lost.

A window opens before a test (kernel log mark, taint value, offset in the guest's
kernel console file) and is checked after the test's call and after its teardown.
When a window closes clean on a live guest, a cursor remembers where it ended, so
the kernel is also checked *between* windows:

- at the start of the next test on that guest (a timer that fired after the
  settle, a kthread that panicked during a host-only test): that test fails at
  setup, naming the test whose window the crash followed;
- when the session shuts the guest down: a crash after the last test fails the
  run, never ends it green.

A guest that died is a verdict, never "no verdict": its splats are read from the
kernel console file (the only record left), from where the window began. A
verdict lists the splats (harness.kernel_log.dmesg), the unexpected new taint and, on a kernel
with kmemleak, what the scans after a module's unload found (harness.kernel_log.kmemleak); the
pytest glue (harness.pytest_plugin.watch) turns a failing verdict into a test failure.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from harness.build.decode import DecodedFrame, decode_frames, render
from harness.errors import HarnessError, KernelCheckError, KernelCheckInfraError, LostGuestError
from harness.guest.kernel_ops import GuestKernel, LogMark
from harness.guest.vm import Guest
from harness.kernel_log.dmesg import AllowEntry, KernelLine, SplatReport, TaintFlag, scan_splats, unexpected_taint
from harness.kernel_log.kmemleak import LeakReading, LeakVerdict, judge_leaks, without_kmemleak_splats
from harness.session import KernelSession

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
    leaks: LeakVerdict | None = None  # the kmemleak scans after a module's unload, when there were any
    decoded: str = ""  # the failing splats' frames in modules built here, with source lines (harness.build.decode)
    frames: Mapping[str, tuple[DecodedFrame, ...]] = field(default_factory=dict)  # fingerprint -> decoded frames
    notes: tuple[str, ...] = ()  # what the checks could not do (the scan before a discard), said after the verdict

    @property
    def ok(self) -> bool:
        return self.splats.ok and not self.new_taint and self.died is None and (self.leaks is None or self.leaks.ok)

    @property
    def guest_suspect(self) -> bool:
        """True when the next test should get a freshly booted guest."""
        return (
            self.died is not None
            or bool(self.new_taint)
            or any(s.kind in FATAL_KINDS for s in self.splats.failures)
        )

    def suspect_reason(self) -> str:
        """Why the next test gets a fresh guest, in a few words ("" when the guest is trusted)."""
        if self.died is not None:
            return f"the guest kernel died ({self.died.reason})"
        kinds = [s.kind for s in self.splats.failures if s.kind in FATAL_KINDS]
        if kinds:
            return f"a kernel splat ({', '.join(dict.fromkeys(kinds))})"
        if self.new_taint:
            return f"a new kernel taint ({', '.join(str(f) for f in self.new_taint)})"
        return ""

    def message(self) -> str:
        parts = []
        if self.died is not None:
            parts.append(f"the guest kernel died ({self.died.reason}); its kernel console shows:")
            parts.append(self.splats.summary() if self.splats.failures else "  (no splat text on the console)")
            if self.decoded:
                parts.append(self.decoded)
            parts.append(f"--- guest kernel console (last lines) ---\n{self.died.console_tail}")
            return "\n".join(parts)
        if self.splats.failures:
            parts.append(f"kernel splat(s) during the test ({len(self.splats.failures)}):\n{self.splats.summary()}")
        if self.new_taint:
            flags = ", ".join(str(f) for f in self.new_taint)
            parts.append(f"kernel taint changed {self.taint_before} -> {self.taint_after}: unexpected {flags}")
        if self.leaks is not None and not self.leaks.ok:
            parts.append(self.leaks.message())
        if self.decoded:
            parts.append(self.decoded)
        parts.extend(self.notes)
        return "\n".join(parts)


def with_decoded(verdict: KernelVerdict, session: KernelSession) -> KernelVerdict:
    """`verdict` with its failing splats' frames in the modules the session built decoded to source lines."""
    reports = [(s.fingerprint, s.lines) for s in verdict.splats.failures]
    if verdict.leaks is not None:  # a leaked object's backtrace, named after the unloaded module's code
        reports += [(o.splat.fingerprint, (*o.lines, *o.frames)) for o in verdict.leaks.failures]
    if verdict.decoded or not reports:
        return verdict
    kos, sources, vmlinux = session.decode_inputs()
    frames: dict[str, tuple[DecodedFrame, ...]] = {}
    notes: list[str] = []
    for fingerprint, lines in reports:
        found, said = decode_frames(lines, kos, sources, vmlinux)
        frames[fingerprint] = tuple(found)
        notes += [n for n in said if n not in notes]
    shown = list(dict.fromkeys(d for found in frames.values() for d in found))
    return replace(verdict, decoded=render(shown, notes), frames=frames)


def with_leaks(verdict: KernelVerdict, reading: LeakReading | None, allowlist: Sequence[AllowEntry]) -> KernelVerdict:
    """`verdict` with what kmemleak listed after a module's unload. The kmemleak lines of the same
    check's kernel log (a scan's "N new suspected memory leaks") announce those same objects: the
    reading replaces them, so one leak is one failure naming the module, and a kernel-only leak is
    reported without failing."""
    if reading is None:
        return verdict
    return replace(verdict, splats=without_kmemleak_splats(verdict.splats), leaks=judge_leaks(reading, allowlist))


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


@dataclass(frozen=True)
class Cursor:
    """Where the last clean window on a guest ended, and which test it belonged to."""

    guest: Guest
    mark: LogMark
    taint: int
    console_offset: int
    test: str


@dataclass
class Window:
    """One test's watch: the guest and where its kernel log, taint and console stood."""

    session: KernelSession
    guest_kernel: GuestKernel
    mark: LogMark | None  # None: from the guest's first line (window_after_use of a guest booted by the test)
    taint: int
    console_offset: int
    unloads: int  # guest_kernel.unloads when the window opened; more after the test means a module went away
    lines: list[KernelLine] = field(default_factory=list)  # everything checked so far, for the artifacts
    kernel_failed: set[str] = field(default_factory=set)  # phases failed over the kernel's verdict
    closed: bool = False
    discarded: str = ""  # why the harness threw away the guest while it still answered ("" if it did not)

    @property
    def guest(self) -> Guest:
        return self.guest_kernel.guest


@dataclass(frozen=True)
class Policy:
    allowlist: Sequence[AllowEntry]
    allowed_taint: str
    settle_s: float


def console_offset(guest: Guest) -> int:
    path = guest.paths.kernel_log
    return path.stat().st_size if path.exists() else 0


def console_since(guest: Guest, offset: int) -> str:
    """The guest's kernel console file from `offset` on ("" if it is gone)."""
    try:
        with guest.paths.kernel_log.open("rb") as f:
            f.seek(offset)
            return f.read().decode(errors="replace")
    except OSError:
        return ""


def open_window(session: KernelSession, cursor: Cursor | None, policy: Policy) -> tuple[Window, KernelVerdict | None]:
    """Boot (or reuse) the session's guest and open a window on it; with a current `cursor`, also
    judge what the kernel did between the cursor's test and this window (no line is in neither).
    Raises HarnessError: BootError when no guest boots, LostGuestError when it dies meanwhile."""
    guest_kernel = session.guest_kernel()
    offset = console_offset(guest_kernel.guest)
    mark, taint = guest_kernel.mark_and_taint()  # a taint from here on also prints after the mark
    between = None
    if cursor is not None and cursor.guest is guest_kernel.guest:
        lines = guest_kernel.lines_between(cursor.mark, mark)
        between = with_decoded(judge(lines, cursor.taint, taint, policy.allowlist, policy.allowed_taint), session)
    return Window(session, guest_kernel, mark, taint, offset, guest_kernel.unloads), between


def window_after_use(session: KernelSession, start: Cursor | None, unloads: int) -> Window | None:
    """The window of a test that used the session's guest without asking for a guest fixture (it loaded a
    module through the session, say), opened after the fact: from `start`, the cursor of the guest the test
    began with, or from the first line of a guest it booted (taint 0, console from its start). None when the
    session has no guest now."""
    guest_kernel = session.current_guest_kernel
    if guest_kernel is None:
        return None
    if start is not None and start.guest is guest_kernel.guest:
        return Window(session, guest_kernel, start.mark, start.taint, start.console_offset, unloads)
    return Window(session, guest_kernel, None, 0, 0, 0)


def _death(guest: Guest, offset: int, policy: Policy) -> KernelVerdict:
    return judge_death(console_since(guest, offset), guest.dead_reason or "QEMU exited", policy.allowlist)


def _guarded(guest: Guest, offset: int, policy: Policy, what: str,
             probe: Callable[[], KernelVerdict]) -> KernelVerdict:  # fmt: skip
    """Run the guest commands of a check: a guest that dies meanwhile is a death verdict, any other
    failure on a live guest a KernelCheckError (the checks are never silently skipped)."""
    try:
        if not guest.alive:
            raise LostGuestError("guest is not running")
        return probe()
    except LostGuestError:
        return _death(guest, offset, policy)
    except HarnessError as e:
        if not guest.alive:
            return _death(guest, offset, policy)
        error = KernelCheckInfraError if e.infra else KernelCheckError
        raise error(f"the kernel checks {what} could not run: {e}") from e


def settle(seconds: float) -> None:
    """Give the guest kernel `seconds` after an unload (the settle setting), before it is judged."""
    if seconds > 0:  # on the host: the guest runs meanwhile, and a `sleep` process costs ~60 ms under TCG
        time.sleep(seconds)


def check_window(window: Window, policy: Policy) -> KernelVerdict:
    """Check what the kernel did since the window's mark (or since it was last checked) and
    move the mark on. After a module unload the kernel first gets `policy.settle_s`, then, on a
    kernel with kmemleak, the scans for what the module leaked (GuestKernel.find_leaks). A verdict
    after which the guest is discarded (guest_suspect) gets those scans too: scan_before_discard."""
    guest, guest_kernel = window.guest, window.guest_kernel
    if window.session.current_guest is not guest:
        return with_decoded(_death(guest, window.console_offset, policy), window.session)

    def probe() -> KernelVerdict:
        reading = None
        if guest_kernel.unloads > window.unloads:
            settle(policy.settle_s)
            reading = guest_kernel.find_leaks()  # before the log is read: a scan's lines belong to this check
        window.unloads = guest_kernel.unloads
        mark, taint = guest_kernel.mark_and_taint()
        lines = guest_kernel.lines_between(window.mark, mark)
        window.lines.extend(lines)
        verdict = judge(lines, window.taint, taint, policy.allowlist, policy.allowed_taint)
        window.mark, window.taint = mark, taint
        verdict = with_leaks(verdict, reading, policy.allowlist)
        if verdict.guest_suspect and reading is None:
            verdict = scan_before_discard(verdict, window, policy)
        return verdict

    return with_decoded(_guarded(guest, window.console_offset, policy, "of the test", probe), window.session)


def scan_before_discard(verdict: KernelVerdict, window: Window, policy: Policy) -> KernelVerdict:
    """`verdict` (after which the guest is discarded) with the kmemleak scans a normal unload gets:
    on a kernel with kmemleak whose guest still answers, the modules this session built that are
    still loaded are unloaded, newest first, and scanned (GuestKernel.find_leaks), so a module that
    both splats and leaks has both reported. What fails here is a note on the verdict, never in its
    place: the splat is what the test failed over."""
    guest_kernel = window.guest_kernel
    try:
        if not guest_kernel.has_kmemleak():
            return verdict
        built = window.session.decode_inputs()[0]  # {module name: .ko} of the modules built here
        for name in [n for n in guest_kernel.module_list() if n in built]:
            guest_kernel.rmmod(name)
        reading = guest_kernel.find_leaks()
    except HarnessError as e:
        note = f"the kmemleak scan before the guest was discarded did not run: {e.args[0].splitlines()[0]}"
        return replace(verdict, notes=(*verdict.notes, note))
    return with_leaks(verdict, reading, policy.allowlist)


def cursor_after(window: Window, test: str) -> Cursor | None:
    """Where the next check on this guest starts; None when the guest is gone."""
    guest = window.guest
    if window.session.current_guest is not guest or not guest.alive or window.mark is None:
        return None
    return Cursor(guest, window.mark, window.taint, console_offset(guest), test)


def dead_since(cursor: Cursor, policy: Policy) -> KernelVerdict | None:
    """The death verdict when the cursor's guest died after the cursor's test, else None."""
    return None if cursor.guest.alive else _death(cursor.guest, cursor.console_offset, policy)


def check_after_last(session: KernelSession, cursor: Cursor, policy: Policy) -> KernelVerdict:
    """Before the session shuts its guest down: did the kernel stay clean after the last test?
    The kernel first gets `policy.settle_s` (a crash still in flight lands here)."""

    def probe() -> KernelVerdict:
        settle(policy.settle_s)
        guest_kernel = session.guest_kernel()
        lines = guest_kernel.lines_since(cursor.mark)
        return judge(lines, cursor.taint, guest_kernel.taint(), policy.allowlist, policy.allowed_taint)

    return with_decoded(_guarded(cursor.guest, cursor.console_offset, policy, "after the last test", probe), session)


def cursor_current(session: KernelSession, cursor: Cursor | None) -> bool:
    """True when `cursor` still describes the session's guest (it was not thrown away on purpose)."""
    return cursor is not None and session.current_guest is cursor.guest
