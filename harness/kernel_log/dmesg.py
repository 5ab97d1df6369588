"""Parse kernel logs captured from throwaway guests.

Everything here is pure: functions take text (or lines) and return values.
The only I/O is :func:`load_allowlist`, which reads one allowlist file.

The module covers three jobs:

* turning raw log lines into :class:`KernelLine` records, whatever the
  capture format (serial console, ``dmesg -r``, ``/dev/kmsg``);
* finding kernel splats (WARNING, BUG, Oops, lockups, sanitizer reports,
  ...) and giving each one a fingerprint that does not depend on
  addresses or timestamps (:func:`scan_splats`);
* decoding ``/proc/sys/kernel/tainted`` (:func:`decode_taint`).
"""

from __future__ import annotations

import os
import re
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal, TypeAlias

from harness.errors import AllowlistError, ConfigError

__all__ = [
    "ADDRESS",
    "BACKTRACE_RE",
    "CALL_TRACE_RE",
    "FRAME_RE",
    "FUNC",
    "KMEMLEAK_PREFIX_RE",
    "MODULE_FRAME_RE",
    "OFFSET",
    "REGISTER_RE",
    "SPLAT_PATTERNS",
    "STACK_OPEN_RE",
    "TAINT_FLAGS",
    "AllowEntry",
    "Allowed",
    "AllowedSplat",
    "AllowlistError",
    "KernelLine",
    "LineStream",
    "LogInput",
    "Splat",
    "SplatPattern",
    "SplatReport",
    "TaintFlag",
    "decode_taint",
    "find_splats",
    "first_allowing",
    "iter_lines",
    "iter_numbered_lines",
    "iter_splats",
    "load_allowlist",
    "parse_allowlist",
    "parse_line",
    "parse_lines",
    "scan_splats",
    "trace_lines",
    "unexpected_taint",
]


# ---------------------------------------------------------------------------
# Log lines
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class KernelLine:
    """One kernel log message.

    ``level`` is the console log level (0..7) when the format carries it,
    ``timestamp`` the time since boot in seconds when printed, ``text`` the
    message without any prefix and ``raw`` the input line without its line
    terminator. ``caller`` is the ``CONFIG_PRINTK_CALLER`` id (``T123`` or
    ``C0``) when present.
    """

    level: int | None
    timestamp: float | None
    text: str
    raw: str
    caller: str | None = None


#: Anything the line-oriented functions accept: a whole log as ``str`` or
#: ``bytes`` (decoded as UTF-8, invalid bytes replaced), or an iterable of
#: single lines, either still raw (``str``) or already parsed.
LogInput: TypeAlias = str | bytes | Iterable[str | KernelLine]

_TS = r"\[\s*(?P<ts>\d+\.\d+)\]"
_CALLER = r"(?:\[\s*(?P<caller>[TC]\d+)\])?"
# dmesg -r: "<6>[   12.345678] text"; the prefix may carry a facility.
_SYSLOG_RE: Final = re.compile(rf"<(?P<prio>\d+)>(?:{_TS}{_CALLER} ?)?(?P<text>.*)", re.S)
# Serial console / dmesg: "[   12.345678] text" or "[  1.2][    T1] text".
_CONSOLE_RE: Final = re.compile(rf"{_TS}{_CALLER} ?(?P<text>.*)", re.S)
# /dev/kmsg: "prio,seq,usec,flags[,more];text".
_KMSG_RE: Final = re.compile(
    r"(?P<prio>\d+),(?P<seq>\d+),(?P<usec>\d+),(?P<flags>[^,;]*)"
    r"(?P<extra>,[^;]*)?;(?P<text>.*)",
    re.S,
)
_KMSG_CALLER_RE: Final = re.compile(r"(?:^|,)caller=([TC]\d+)(?:,|$)")
_KMSG_ESCAPE_RE: Final = re.compile(r"\\x([0-9a-fA-F]{2})")


def _unescape_kmsg(text: str) -> str:
    """Undo the ``\\xHH`` escaping /dev/kmsg applies to the message text.

    The kernel escapes control characters, bytes >= 0x7f and the backslash
    itself, so every backslash in a record starts an escape.
    """
    if "\\" not in text:
        return text
    unescaped = _KMSG_ESCAPE_RE.sub(lambda m: chr(int(m.group(1), 16)), text)
    try:
        data = unescaped.encode("latin-1")
    except UnicodeEncodeError:
        return unescaped
    return data.decode("utf-8", "replace")


def _parse(raw: str) -> tuple[KernelLine, bool]:
    """Parse one line; the flag tells whether it was a /dev/kmsg record."""
    line = raw.replace("\r", "").rstrip("\n")
    m = _SYSLOG_RE.fullmatch(line)
    if m is not None:
        ts = m.group("ts")
        return (
            KernelLine(
                level=int(m.group("prio")) & 7,
                timestamp=float(ts) if ts is not None else None,
                text=m.group("text"),
                raw=line,
                caller=m.group("caller"),
            ),
            False,
        )
    m = _CONSOLE_RE.fullmatch(line)
    if m is not None:
        return (
            KernelLine(
                level=None,
                timestamp=float(m.group("ts")),
                text=m.group("text"),
                raw=line,
                caller=m.group("caller"),
            ),
            False,
        )
    m = _KMSG_RE.fullmatch(line)
    if m is not None:
        extra = m.group("extra") or ""
        cm = _KMSG_CALLER_RE.search(extra)
        return (
            KernelLine(
                level=int(m.group("prio")) & 7,
                timestamp=int(m.group("usec")) / 1_000_000,
                text=_unescape_kmsg(m.group("text")),
                raw=line,
                caller=cm.group(1) if cm is not None else None,
            ),
            True,
        )
    return KernelLine(level=None, timestamp=None, text=line, raw=line), False


def parse_line(raw: str) -> KernelLine:
    """Parse a single log line in any of the supported formats.

    Recognised: ``<6>[   12.345678] text`` (``dmesg -r``; the level is the
    priority modulo 8), ``[   12.345678] text`` (console), the same two with
    a ``[    T123]`` caller id, ``6,123,12345678,-;text`` (``/dev/kmsg``,
    timestamp in microseconds, ``\\xHH`` escapes undone) and bare text.
    Carriage returns and the trailing newline are removed.
    """
    return _parse(raw)[0]


def _source_items(source: LogInput) -> Iterator[str | KernelLine]:
    if isinstance(source, bytes):
        source = source.decode("utf-8", "replace")
    if isinstance(source, str):
        parts = source.split("\n")
        if parts and parts[-1] == "":
            parts.pop()
        yield from parts
    else:
        yield from source


def iter_numbered_lines(source: LogInput) -> Iterator[tuple[int, KernelLine]]:
    """Lazily parse ``source`` into ``(line_number, KernelLine)`` pairs.

    Line numbers are 1-based positions in the input. Dictionary lines that
    follow a /dev/kmsg record (they start with a space: `` KEY=value``) are
    skipped, so numbers can have gaps.
    """
    after_kmsg = False
    for number, item in enumerate(_source_items(source), start=1):
        if isinstance(item, KernelLine):
            after_kmsg = False
            yield number, item
            continue
        if after_kmsg and item.startswith(" "):
            continue
        line, after_kmsg = _parse(item)
        yield number, line


def iter_lines(source: LogInput) -> Iterator[KernelLine]:
    """Lazily parse ``source`` (see :func:`iter_numbered_lines`)."""
    for _, line in iter_numbered_lines(source):
        yield line


def parse_lines(source: LogInput) -> list[KernelLine]:
    """Parse a whole log (see :func:`iter_numbered_lines`)."""
    return list(iter_lines(source))


class LineStream:
    """A lazy stream of numbered kernel lines with unbounded look-ahead."""

    def __init__(self, lines: Iterable[tuple[int, KernelLine]]) -> None:
        self._lines = iter(lines)
        self._buffer: deque[tuple[int, KernelLine]] = deque()

    @classmethod
    def from_log(cls, source: LogInput) -> LineStream:
        return cls(iter_numbered_lines(source))

    def _fill(self, ahead: int) -> bool:
        while len(self._buffer) <= ahead:
            try:
                self._buffer.append(next(self._lines))
            except StopIteration:
                return False
        return True

    def at_end(self, ahead: int = 0) -> bool:
        """True when there is no line ``ahead`` positions from the front."""
        return not self._fill(ahead)

    def peek(self, ahead: int = 0) -> KernelLine:
        """The line ``ahead`` positions from the front, without consuming."""
        if not self._fill(ahead):
            raise IndexError("peek past the end of the log")
        return self._buffer[ahead][1]

    def line_number(self, ahead: int = 0) -> int:
        """The input line number of the line ``ahead`` positions away."""
        if not self._fill(ahead):
            raise IndexError("peek past the end of the log")
        return self._buffer[ahead][0]

    def pop(self) -> KernelLine:
        """Consume and return the front line."""
        return self.pop_numbered()[1]

    def pop_numbered(self) -> tuple[int, KernelLine]:
        """Consume and return the front line with its line number."""
        if not self._fill(0):
            raise IndexError("pop from the end of the log")
        return self._buffer.popleft()

    def __iter__(self) -> Iterator[tuple[int, KernelLine]]:
        while not self.at_end():
            yield self.pop_numbered()


# ---------------------------------------------------------------------------
# Call traces: the one table of their lines, for the splats here and for
# harness.kernel_log.frames and harness.kernel_log.kmemleak
# ---------------------------------------------------------------------------

#: A symbol as the kernel prints it, compiler suffixes included (``foo.isra.0``).
FUNC: Final = r"[A-Za-z_.$][\w.$]*"
#: The offset and size after a symbol: ``+0x8b/0xb0``.
OFFSET: Final = r"\+0x[0-9a-fA-F]+/0x[0-9a-fA-F]+"
#: The address older kernels (and kmemleak before 6.12) print before a symbol, if any: ``[<ffffffffa000005f>] ``.
ADDRESS: Final = r"(?:\[<[0-9a-fA-F]+>\]\s+)?"

#: The line that opens a call trace.
CALL_TRACE_RE: Final = re.compile(r"^Call [Tt]race:")
#: The line that opens a kmemleak object's allocation trace (``crc`` since 6.12).
BACKTRACE_RE: Final = re.compile(r"^\s*backtrace(?: \(crc (?P<crc>[0-9a-f]+)\))?:\s*$")
#: A line of an x86-64 register dump (``RIP: 0010:...``, ``R10: ...``, ``FS:  ...``, ``Code: ...``): the
#: name and its colon, so that a message such as ``FS-Cache: Loaded`` is not one.
REGISTER_RE: Final = re.compile(r"^(?:RIP|RSP|RAX|RDX|RBP|RSI|R\d+|FS|GS|CS|CR\d|DR\d|PKRU|Code):")
#: A stack's opening marker inside a trace: ``<TASK>``, ``<IRQ>``, ``<#DF>``.
STACK_OPEN_RE: Final = re.compile(r"^\s*<#?[A-Z_]+>\s*$")
#: The prefix of a kmemleak report printed to the kernel log (``kmemleak.verbose=1``).
KMEMLEAK_PREFIX_RE: Final = re.compile(r"^kmemleak:(?=\s)")
#: A call-trace frame: ``? `` for a frame the unwinder calls unreliable, then ``func+0x8b/0xb0``.
FRAME_RE: Final = re.compile(rf"^\s*(?P<unreliable>\? )?{ADDRESS}(?P<func>{FUNC}){OFFSET}")
#: A frame in a loadable module, anywhere in a line: ``func+0x8b/0xb0 [module]``, with a build id after the
#: module's name on kernels that print one.
MODULE_FRAME_RE: Final = re.compile(
    rf"(?P<unreliable>\? )?{ADDRESS}(?P<func>{FUNC}){OFFSET} \[(?P<module>[\w-]+)(?: [0-9a-f]+)?\]"
)


def trace_lines(texts: Iterable[str]) -> Iterator[tuple[str, bool]]:
    """Each line, without a ``kmemleak:`` prefix, with whether it lies in a call trace or a kmemleak
    backtrace: the lines after ``Call Trace:`` (``backtrace:``) through its frames, indented lines,
    register lines and stack markers; the first other line ends it."""
    in_trace = False
    for raw in texts:
        text = KMEMLEAK_PREFIX_RE.sub("", raw)
        if CALL_TRACE_RE.match(text) or BACKTRACE_RE.match(text):
            in_trace = True
            yield text, False
            continue
        if in_trace and not (
            text[:1].isspace() or FRAME_RE.match(text) or REGISTER_RE.match(text) or STACK_OPEN_RE.match(text)
        ):
            in_trace = False
        yield text, in_trace


# ---------------------------------------------------------------------------
# Splats
# ---------------------------------------------------------------------------

BlockEnd: TypeAlias = Literal["trace", "separator", "indent", "line"]


@dataclass(frozen=True)
class SplatPattern:
    """A denylist entry: lines matching ``regex`` start a splat of ``kind``.

    ``end`` says how far the block reaches: ``trace`` (through the call
    trace or an ``---[ end ...]---`` marker), ``separator`` (through the
    closing ``====`` line of sanitizer reports), ``indent`` (following
    indented lines, kmemleak objects) or ``line`` (the line alone).
    ``standalone`` reports never belong to a block that has not reached its
    call trace yet; they start a new one.
    """

    kind: str
    regex: re.Pattern[str]
    end: BlockEnd = "trace"
    standalone: bool = False


def _pat(kind: str, regex: str, end: BlockEnd = "trace", standalone: bool = False) -> SplatPattern:
    return SplatPattern(kind, re.compile(regex), end, standalone)


#: Checked in order; the first match names the kind of a line.
SPLAT_PATTERNS: Final[tuple[SplatPattern, ...]] = (
    _pat("cut-here", r"^-+\[ cut here \]-+$"),
    _pat("kasan", r"\bBUG: KASAN: ", "separator", True),
    _pat("kfence", r"\bBUG: KFENCE: ", "separator", True),
    _pat("ubsan", r"^UBSAN: ", "separator", True),
    _pat("soft-lockup", r"\bBUG: soft lockup\b", standalone=True),
    _pat("hard-lockup", r"\bhard LOCKUP\b", standalone=True),
    _pat("rcu-stall", r"(?:^|\brcu: )INFO: rcu_\w+ (?:self-)?detected stalls?\b", standalone=True),
    _pat("hung-task", r"^INFO: task .+ blocked for more than \d+ seconds", standalone=True),
    _pat(
        "sleep-in-atomic",
        r"^BUG: (?:sleeping function called from invalid context|scheduling while atomic)",
    ),
    _pat(
        "lockdep",
        r"^WARNING: (?:possible circular locking dependency|possible recursive locking"
        r"|inconsistent lock state|possible irq lock inversion|suspicious RCU usage"
        r"|bad unlock balance|held lock freed|lock held when returning to user space"
        r"|lock held at task exit|nested lock was not taken|bad contention detected)",
        standalone=True,
    ),
    _pat("odebug", r"^ODEBUG: "),  # a WARN: the [ cut here ] block it starts is of this kind
    # x86 says BUG:, arm64 "Unable to handle kernel NULL pointer dereference at virtual address 0000000000000000"
    _pat("null-deref", r"^(?:BUG: kernel|Unable to handle kernel) NULL pointer dereference\b"),
    _pat("list-corruption", r"\blist_(?:add|del)(?:_rcu)? corruption\b"),
    _pat("refcount", r"^refcount_t: "),
    _pat("stack-protector", r"\bstack-protector: Kernel stack is corrupted\b"),
    _pat("panic", r"^Kernel panic - not syncing\b"),
    _pat("gpf", r"^general protection fault\b"),
    _pat("unable-to-handle", r"^Unable to handle kernel\b"),
    _pat("oops", r"^(?:Oops\b|invalid opcode: [0-9a-f]{4} \[#\d+\])"),
    _pat("bug", r"^(?:kernel BUG at |BUG: )"),
    _pat("warning", r"^WARNING: "),
    _pat("kmemleak", r"\bkmemleak: \d+ new suspected memory leaks?\b", "line", True),
    _pat("kmemleak", r"\bunreferenced object 0x[0-9a-f]+ \(size \d+\):", "indent", True),
)

_CUT_HERE: Final = SPLAT_PATTERNS[0]

_MAX_BLOCK_LINES: Final = 250
_MAX_PRELUDE_LINES: Final = 150
_MAX_AFTER_END_LINES: Final = 30
_FINGERPRINT_FRAMES: Final = 3

_END_TRACE_RE: Final = re.compile(r"^---\[ end trace(?: [0-9a-f]+)? \]---")  # UBSAN 6.5+: no id
_END_PANIC_RE: Final = re.compile(r"^---\[ end Kernel panic\b")
_PANIC_RE: Final = re.compile(r"^Kernel panic - not syncing\b")
_CLOSE_RE: Final = re.compile(r"^\s*</#?[A-Z_]+>\s*$")
_TAIL_RE: Final = re.compile(
    r"^(?:irq event stamp:|hardirqs last|softirqs last|Modules linked in:|CR2: "
    r"|Kernel Offset:|Dumping ftrace buffer)"
)
_NOTE_RE: Final = re.compile(r"^note: ")
_SEPARATOR_RE: Final = re.compile(r"^={20,}\s*$")
_KMEMLEAK_CONT_RE: Final = re.compile(r"^kmemleak:\s{2,}")

_SITE_AT_RE: Final = re.compile(rf" at \S+:\d+ ({FUNC}){OFFSET}")
_SITE_IN_RE: Final = re.compile(rf"\bin:? ({FUNC}){OFFSET}")
_KERNEL_PC_RE: Final = re.compile(rf"^(?:RIP: 0010:|pc : )({FUNC}){OFFSET}")

# Frames that belong to the reporting machinery rather than to the bug.
_NOISE_FRAMES: Final = frozenset(
    {
        "dump_stack",
        "dump_stack_lvl",
        "show_stack",
        "show_trace_log_lvl",
        "__warn",
        "__warn_printk",
        "warn_slowpath_fmt",
        "report_bug",
        "handle_bug",
        "exc_invalid_op",
        "panic",
        "vpanic",
        "__stack_chk_fail",
        "ubsan_epilogue",
        "print_report",
        "kasan_report",
        "kasan_check_range",
        "kfence_report_error",
        "kfence_handle_page_fault",
        "__die",
        "__die_body",
        "die",
        "die_addr",
        "page_fault_oops",
        "kernelmode_fixup_or_oops",
        "__bad_area_nosemaphore",
        "bad_area_nosemaphore",
        "do_user_addr_fault",
        "exc_page_fault",
        "exc_general_protection",
        "__schedule",
        "schedule",
        "schedule_timeout",
        "schedule_preempt_disabled",
        "io_schedule",
        "watchdog_timer_fn",
        "__hrtimer_run_queues",
        "hrtimer_interrupt",
        "nmi_cpu_backtrace",
        "nmi_cpu_backtrace_handler",
        "nmi_handle",
        "default_do_nmi",
        "exc_nmi",
        "nmi_trigger_cpumask_backtrace",
        "arch_trigger_cpumask_backtrace",
        "rcu_dump_cpu_stacks",
        "print_cpu_stall",
        "check_cpu_stall",
        "rcu_pending",
        "rcu_sched_clock_irq",
        "update_process_times",
        "tick_sched_handle",
        "tick_sched_timer",
        "tick_nohz_handler",
        "kmemleak_alloc",
        "slab_post_alloc_hook",
        # KASAN, might_sleep, ODEBUG and lockdep reporting (lockdep's check_noncircular and the
        # lock_acquire frames stay: fingerprints already use them)
        "print_address_description",
        "print_circular_bug",
        "__might_resched",
        "__might_sleep",
        "___might_sleep",
        "__schedule_bug",
        "debug_print_object",
        "__debug_check_no_obj_freed",
        "debug_check_no_obj_freed",
    }
)
_NOISE_PREFIX_RE: Final = re.compile(
    r"^(?:__ubsan_handle_|__asan_|__kasan_|asm_exc_|asm_sysvec_|sysvec_|__sysvec_"
    r"|__kmem_cache_alloc|kmem_cache_alloc|kmalloc_|__kmalloc|__kvmalloc|kvmalloc)"
)


def _match_pattern(text: str) -> SplatPattern | None:
    for pattern in SPLAT_PATTERNS:
        if pattern.regex.search(text):
            return pattern
    return None


def _is_heading(text: str) -> bool:
    pattern = _match_pattern(text)
    return pattern is not None and pattern is not _CUT_HERE


def _function_name(symbol: str) -> str:
    """``foo.constprop.0`` -> ``foo``: drop compiler-generated suffixes."""
    return symbol.split(".", 1)[0] or symbol


@dataclass(frozen=True)
class Splat:
    """One kernel report found in a log.

    ``line_no`` is the input line number of its first line, ``lines`` the
    message texts of the whole block and ``fingerprint`` a stable identity:
    ``kind:site:frame1:frame2:frame3`` where ``site`` is the function named
    in the WARNING/KASAN heading or the kernel-mode RIP (``-`` if none) and
    the frames are the first reliable call-trace functions outside the
    reporting machinery, without offsets or module names.
    """

    kind: str
    line_no: int
    lines: tuple[str, ...]
    fingerprint: str

    @property
    def heading(self) -> str:
        """The line that names the report: its first line, or for a
        ``[ cut here ]`` block the WARNING/BUG line that follows the marker."""
        return next((text for text in self.lines if _is_heading(text)), self.lines[0] if self.lines else "")

    def summary(self, max_lines: int = 15) -> str:
        """A short text for a failure message: heading plus first lines."""
        head = f"{self.kind} at log line {self.line_no} [{self.fingerprint}]"
        shown = list(self.lines[:max_lines])
        rest = len(self.lines) - len(shown)
        if rest > 0:
            shown.append(f"... ({rest} more lines)")
        return "\n".join([head, *("  " + line for line in shown)])


def _trace_len(stream: LineStream, start: int) -> int:
    """Length of a block that ends with its call trace or an end marker."""
    n = 1
    depth = 0
    in_trace = False
    trace_done = False
    while n < _MAX_BLOCK_LINES and not stream.at_end(start + n):
        text = stream.peek(start + n).text
        if _END_TRACE_RE.match(text):
            n += 1
            return n + _after_end_len(stream, start + n)
        if _END_PANIC_RE.match(text):
            return n + 1
        if depth > 0:
            n += 1
            if STACK_OPEN_RE.match(text):
                depth += 1
            elif _CLOSE_RE.match(text):
                depth -= 1
                trace_done = depth == 0
            continue
        if STACK_OPEN_RE.match(text):
            depth = 1
            in_trace = True
            n += 1
            continue
        if trace_done:
            if _TAIL_RE.match(text):
                n += 1
                continue
            return n
        if in_trace:
            # A trace without <TASK> markers (kernels before 5.16, arm64).
            if text[:1].isspace() or REGISTER_RE.match(text):
                n += 1
                continue
            if _TAIL_RE.match(text):
                trace_done = True
                n += 1
                continue
            return n
        if CALL_TRACE_RE.match(text):
            in_trace = True
            n += 1
            continue
        pattern = _match_pattern(text)
        # A report of its own, except right after a [ cut here ] marker: that marker's report
        # (UBSAN since 6.5 prints the marker, its report and ---[ end trace ]---).
        after_marker = n == 1 and _CUT_HERE.regex.search(stream.peek(start).text) is not None
        if pattern is not None and pattern.standalone and not after_marker:
            return n
        if n >= _MAX_PRELUDE_LINES:
            # No trace and no end marker: report the heading line alone
            # rather than swallowing unrelated log lines.
            return 1
        n += 1
    return n


def _after_end_len(stream: LineStream, start: int) -> int:
    """Lines after ``---[ end trace`` that still belong to the report.

    x86 repeats the registers after an Oops; a panic caused by the Oops
    (``panic_on_oops``) follows and is the same incident.
    """
    m = 0
    while m < _MAX_AFTER_END_LINES and not stream.at_end(start + m):
        text = stream.peek(start + m).text
        if not (REGISTER_RE.match(text) or _NOTE_RE.match(text)):
            break
        m += 1
    if not stream.at_end(start + m) and _PANIC_RE.match(stream.peek(start + m).text):
        m += _trace_len(stream, start + m)
    return m


def _separator_len(stream: LineStream, start: int) -> int:
    """Sanitizer reports end with a line of ``=``; fall back to the trace."""
    n = 1
    while n < _MAX_BLOCK_LINES and not stream.at_end(start + n):
        text = stream.peek(start + n).text
        if _SEPARATOR_RE.match(text):
            return n + 1
        pattern = _match_pattern(text)
        if pattern is not None and pattern.standalone:
            break
        n += 1
    return _trace_len(stream, start)


def _indent_len(stream: LineStream, start: int) -> int:
    n = 1
    while n < _MAX_BLOCK_LINES and not stream.at_end(start + n):
        text = stream.peek(start + n).text
        if not (text[:1].isspace() or _KMEMLEAK_CONT_RE.match(text)):
            break
        n += 1
    return n


def _block_len(stream: LineStream, pattern: SplatPattern) -> int:
    if pattern.end == "line":
        return 1
    if pattern.end == "indent":
        return _indent_len(stream, 0)
    if pattern.end == "separator":
        return _separator_len(stream, 0)
    return _trace_len(stream, 0)


def _block_kind(pattern: SplatPattern, texts: tuple[str, ...]) -> str:
    if pattern is not _CUT_HERE:
        return pattern.kind
    for text in texts[1:]:
        inner = _match_pattern(text)
        if inner is not None and inner is not _CUT_HERE:
            return inner.kind
    return pattern.kind


def _site(texts: tuple[str, ...]) -> str:
    for text in texts:
        if _match_pattern(text) is None:
            continue
        m = _SITE_AT_RE.search(text) or _SITE_IN_RE.search(text)
        if m is not None:
            return _function_name(m.group(1))
    for text in texts:
        m = _KERNEL_PC_RE.match(text)
        if m is not None:
            return _function_name(m.group(1))
    return ""


def _is_noise(name: str) -> bool:
    return name in _NOISE_FRAMES or _NOISE_PREFIX_RE.match(name) is not None


def _frames(texts: tuple[str, ...], limit: int) -> list[str]:
    frames: list[str] = []
    for text, in_trace in trace_lines(texts):
        m = FRAME_RE.match(text) if in_trace else None
        if m is None:
            continue
        name = _function_name(m.group("func"))
        if m.group("unreliable") is None and not _is_noise(name):
            frames.append(name)
            if len(frames) == limit:
                break
    return frames


def _fingerprint(kind: str, texts: tuple[str, ...]) -> str:
    site = _site(texts) or "-"
    return ":".join([kind, site, *_frames(texts, _FINGERPRINT_FRAMES)])


def iter_splats(lines: LogInput | LineStream) -> Iterator[Splat]:
    """Lazily find the splats of a log, each block reported once."""
    stream = lines if isinstance(lines, LineStream) else LineStream.from_log(lines)
    while not stream.at_end():
        pattern = _match_pattern(stream.peek().text)
        if pattern is None:
            stream.pop()
            continue
        first = stream.line_number()
        count = _block_len(stream, pattern)
        texts = tuple(stream.pop().text for _ in range(count))
        kind = _block_kind(pattern, texts)
        yield Splat(kind=kind, line_no=first, lines=texts, fingerprint=_fingerprint(kind, texts))


# ---------------------------------------------------------------------------
# Allowlist
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class AllowEntry:
    """An allowlist entry: a splat whose heading line (:attr:`Splat.heading`)
    matches ``pattern`` from its first character passes."""

    pattern: re.Pattern[str]
    reason: str
    source: str = "<string>"
    line_no: int = 0

    def matches(self, splat: Splat) -> bool:
        return self.allows(splat.heading)

    def allows(self, text: str) -> bool:
        """Whether ``pattern`` matches ``text`` from its first character."""
        return self.pattern.match(text) is not None


def first_allowing(entries: Iterable[AllowEntry], text: str) -> AllowEntry | None:
    """The first of ``entries`` that lets ``text`` through (a splat's heading, a leaked object's text)."""
    return next((entry for entry in entries if entry.allows(text)), None)


ALLOWLIST_SEPARATOR: Final = "##"


def parse_allowlist(text: str, source: str = "<string>") -> tuple[AllowEntry, ...]:
    """Parse allowlist text: one ``<regex> ## <reason>`` entry per line.

    Blank lines and lines whose first non-blank character is ``#`` are
    comments. The first ``##`` ends the regex (surrounding blanks stripped),
    which must match a splat's heading line from its start (``re.match``).
    The reason is mandatory. Errors raise :class:`AllowlistError` (a
    :class:`~harness.errors.ConfigError`) naming ``source`` and the line.
    """
    entries: list[AllowEntry] = []
    for line_no, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            entries.append(_parse_entry(stripped, source, line_no))
    return tuple(entries)


def _parse_entry(line: str, source: str, line_no: int) -> AllowEntry:
    regex, sep, reason = (part.strip() for part in line.partition(ALLOWLIST_SEPARATOR))
    if not sep:
        raise AllowlistError(source, line_no, "missing '## <reason>'", "end the entry with '## <why it is harmless>'")
    if not reason:
        raise AllowlistError(source, line_no, "empty reason after '##'", "say after '##' why the splat is harmless")
    try:
        compiled = re.compile(regex)
    except re.error as exc:
        raise AllowlistError(
            source, line_no, f"invalid regex {regex!r}: {exc}", "correct the regex (Python re syntax; escape literal "
            "characters such as ( [ . + with a backslash)"
        ) from None  # fmt: skip
    return AllowEntry(compiled, reason, source, line_no)


def load_allowlist(path: str | os.PathLike[str]) -> tuple[AllowEntry, ...]:
    """Read and parse an allowlist file (see :func:`parse_allowlist`).

    An unreadable file (missing, a directory, not UTF-8) or a malformed entry
    raises :class:`~harness.errors.ConfigError` naming the path (and the line).
    """
    source = os.fspath(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        problem = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError(
            f"{source}: cannot read the splat allowlist: {problem}; fix: create the file or point "
            "--splat-allowlist / KNH_SPLAT_ALLOWLIST / knh_splat_allowlist at an existing UTF-8 file"
        ) from None
    return parse_allowlist(text, source=source)


@dataclass(frozen=True)
class Allowed:
    """What an allowlist entry let through, with the entry: a splat (:class:`AllowedSplat`) or a leaked
    object (:class:`harness.kernel_log.kmemleak.AllowedLeak`)."""

    entry: AllowEntry

    @property
    def reason(self) -> str:
        return self.entry.reason

    @property
    def why(self) -> str:
        """The entry's reason and where the entry stands: ``harmless quirk (splat_allowlist.txt:12)``."""
        return f"{self.entry.reason} ({self.entry.source}:{self.entry.line_no})"


@dataclass(frozen=True)
class AllowedSplat(Allowed):
    """A splat that an allowlist entry let through."""

    splat: Splat


@dataclass(frozen=True)
class SplatReport:
    """The splats of a log, split into failures and allowed ones."""

    failures: tuple[Splat, ...]
    allowed: tuple[AllowedSplat, ...]

    @property
    def ok(self) -> bool:
        return not self.failures

    def summary(self, max_lines: int = 15) -> str:
        """Failure message text: every failing splat, then allowed ones."""
        parts = [splat.summary(max_lines) for splat in self.failures]
        parts.extend(
            f"allowed {a.splat.kind} at log line {a.splat.line_no} [{a.splat.fingerprint}]: {a.why}"
            for a in self.allowed
        )
        return "\n".join(parts)


def scan_splats(lines: LogInput, allowlist: Iterable[AllowEntry] = ()) -> SplatReport:
    """Find all splats and split them by the allowlist."""
    entries = tuple(allowlist)
    failures: list[Splat] = []
    allowed: list[AllowedSplat] = []
    for splat in iter_splats(lines):
        entry = first_allowing(entries, splat.heading)
        if entry is None:
            failures.append(splat)
        else:
            allowed.append(AllowedSplat(entry=entry, splat=splat))
    return SplatReport(tuple(failures), tuple(allowed))


def find_splats(lines: LogInput, allowlist: Iterable[AllowEntry] = ()) -> list[Splat]:
    """The splats of a log that no allowlist entry matches."""
    return list(scan_splats(lines, allowlist).failures)


# ---------------------------------------------------------------------------
# Taint
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class TaintFlag:
    """One bit of ``/proc/sys/kernel/tainted``."""

    bit: int
    letter: str
    description: str

    def __str__(self) -> str:
        return f"{self.letter} (bit {self.bit}): {self.description}"


#: Taint bits as in Documentation/admin-guide/tainted-kernels.rst. Bit 0
#: prints as ``P`` when set and ``G`` when clear.
TAINT_FLAGS: Final[tuple[TaintFlag, ...]] = (
    TaintFlag(0, "P", "proprietary module was loaded (G when clear)"),
    TaintFlag(1, "F", "module was force loaded"),
    TaintFlag(2, "S", "kernel running on an out of specification system"),
    TaintFlag(3, "R", "module was force unloaded"),
    TaintFlag(4, "M", "processor reported a Machine Check Exception (MCE)"),
    TaintFlag(5, "B", "bad page referenced or some unexpected page flags"),
    TaintFlag(6, "U", "taint requested by userspace application"),
    TaintFlag(7, "D", "kernel died recently, i.e. there was an OOPS or BUG"),
    TaintFlag(8, "A", "an ACPI table was overridden by user"),
    TaintFlag(9, "W", "kernel issued warning"),
    TaintFlag(10, "C", "staging driver was loaded"),
    TaintFlag(11, "I", "workaround for bug in platform firmware applied"),
    TaintFlag(12, "O", "externally-built (out-of-tree) module was loaded"),
    TaintFlag(13, "E", "unsigned module was loaded"),
    TaintFlag(14, "L", "soft lockup occurred"),
    TaintFlag(15, "K", "kernel has been live patched"),
    TaintFlag(16, "X", "auxiliary taint, defined for and used by distros"),
    TaintFlag(17, "T", "kernel was built with the struct randomization plugin"),
    TaintFlag(18, "N", "an in-kernel test has been run"),
    TaintFlag(19, "J", "userspace used a mutating debug operation in fwctl"),
)

_TAINT_BY_BIT: Final = {flag.bit: flag for flag in TAINT_FLAGS}


def decode_taint(value: int) -> list[TaintFlag]:
    """The flags set in a taint value, lowest bit first.

    Bits this module does not know are returned with letter ``?``.
    """
    if value < 0:
        raise ValueError(f"taint value must not be negative: {value}")
    flags: list[TaintFlag] = []
    bit = 0
    while value >> bit:
        if value >> bit & 1:
            flags.append(_TAINT_BY_BIT.get(bit) or TaintFlag(bit, "?", f"unknown taint bit {bit}"))
        bit += 1
    return flags


def unexpected_taint(before: int, after: int, allowed: str = "OE") -> list[TaintFlag]:
    """Flags newly set between ``before`` and ``after`` whose letter is not
    in ``allowed``. Unknown bits are always unexpected.

    ``O`` (out-of-tree module) and ``E`` (unsigned module) are the taints
    loading the module under test is expected to cause.
    """
    new = after & ~before
    return [flag for flag in decode_taint(new) if flag.letter == "?" or flag.letter not in allowed]
