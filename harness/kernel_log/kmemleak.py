"""kmemleak on a debug kernel: the guest commands, the parser of its report, and what a report
means for the test that unloaded a module.

The debug profile (harness.build.config_items.DEBUG_PROFILE) builds kmemleak without
its automatic scan thread; the harness scans itself, around each test that
loads a module (harness.guest.kernel_ops does the guest side, harness.kernel_watch the check):

1. before the module's insmod: ``clear`` (:data:`CLEAR`), so objects reported earlier (by
   a scan of an earlier test) are never blamed on this one;
2. before the rmmod: where the module's sections are (:func:`sections_argv`);
3. at the test's next kernel check after the rmmod: ``scan`` (:data:`SCAN`) :data:`SCANS`
   times, the last one at least :data:`MIN_AGE_S` after the rmmod (:func:`scan_delay`), then
   read :data:`KMEMLEAK_PATH` and ``clear`` again; :func:`leak_reading` parses the report
   and names the module's frames (the first scan that finds an object unreferenced only
   records a checksum of its content; the next one reports it if the content did not change);
4. :func:`judge_leaks`: objects whose backtrace has a frame of an unloaded module fail the
   test; the others are the kernel's, reported and never failing. Both go through the splat
   allowlist, matched against :func:`allow_text`.

After the rmmod the module's code is gone, so the kernel prints its frames in a
backtrace as bare addresses (``[<ffffffffa000005f>] 0xffffffffa000005f``): the
module is found by address. Before the rmmod, read where the module's sections
are (:func:`sections_argv`, :func:`parse_sections`); :func:`module_symbols`
combines that with the functions of the module's ``.ko`` on the host, and
:func:`symbolize` turns those addresses back into ``leak_alloc+0x2a/0x70
[leak]``.

kmemleak reports an object only when it is older than 5 s at the scan
(``MSECS_MIN_AGE`` in mm/kmemleak.c, not tunable): a module allocates at the latest
before its rmmod returns, so the last scan starts :func:`scan_delay` after the rmmod.
A scan writes to :data:`KMEMLEAK_PATH` and returns when it is done.

Each scan that lists new objects also prints ``kmemleak: N new suspected memory leaks`` to the
kernel log, a splat of kind ``kmemleak``; in a check that read the report those lines are
superseded by it (:func:`without_kmemleak_splats`): one leak, one failure, naming the module.

Report formats: 6.1 prints ``comm "insmod", pid 150, jiffies 4294902110 (age
12.348s)`` and backtrace lines ``[<00000000a1b2c3d4>] func+0x3c/0x90 [mod]``;
6.12 drops the age and the addresses and adds ``backtrace (crc 5e0d8c3a):``.
Both parse.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Final

from harness.errors import KernelCheckError
from harness.formats.elf import ko_functions
from harness.kernel_log.dmesg import (
    ADDRESS,
    BACKTRACE_RE,
    OFFSET,
    Allowed,
    AllowEntry,
    Splat,
    SplatReport,
    first_allowing,
    iter_splats,
)
from harness.kernel_log.frames import ModuleFrame, module_frames

KMEMLEAK_PATH: Final = "/sys/kernel/debug/kmemleak"
CLEAR: Final = "clear"  # forget every object reported so far (they are never reported again)
SCAN: Final = "scan"  # scan now; new unreferenced objects are then listed in KMEMLEAK_PATH
SCAN_OFF: Final = "scan=off"  # stop the automatic scan thread (for kernels built with it)
MIN_AGE_S: Final = 5.0  # mm/kmemleak.c MSECS_MIN_AGE
SCANS: Final = 2  # scans after the rmmod before a leaked object is listed (checksum, then report)

_OBJECT_RE: Final = re.compile(r"^unreferenced object 0x(?P<addr>[0-9a-f]+) \(size (?P<size>\d+)\):")
_COMM_RE: Final = re.compile(r'^\s+comm "(?P<comm>.*)", pid (?P<pid>\d+), jiffies (?P<jiffies>\d+)'
                             r"(?: \(age (?P<age>[\d.]+)s\))?")  # fmt: skip
_FRAME_RE: Final = re.compile(rf"^\s+{ADDRESS}(?P<frame>\S+{OFFSET}.*|0x[0-9a-fA-F]+)\s*$")
_BARE_RE: Final = re.compile(r"^0x(?P<addr>[0-9a-fA-F]+)$")
_PREFIX_RE: Final = re.compile(r"^kmemleak: ")  # the same report printed to dmesg (kmemleak.verbose=1)


@dataclass(frozen=True)
class LeakedObject:
    """One ``unreferenced object`` of a kmemleak report."""

    address: int
    size: int
    comm: str
    pid: int
    age_s: float | None  # 6.1 prints it; 6.12 does not
    frames: tuple[str, ...]  # backtrace as printed, without [<...>]: "leak_alloc+0x2a/0x60 [leak]" or
    # "0xffffffffa000005f" (code of a module unloaded since: see symbolize)
    lines: tuple[str, ...]  # the whole entry

    @property
    def module_frames(self) -> list[ModuleFrame]:
        return module_frames(self.frames)

    def touches(self, module: str) -> bool:
        """Whether the allocation backtrace passes through `module` (- and _ alike)."""
        return bool(module_frames(self.frames, module))

    @property
    def splat(self) -> Splat:
        """The entry as a harness splat (kind "kmemleak", with a fingerprint of its backtrace)."""
        return next(iter_splats(self.lines))

    def summary(self) -> str:
        where = ", ".join(str(f) for f in self.module_frames[:3]) or (self.frames[2] if len(self.frames) > 2 else "?")
        return f"unreferenced object 0x{self.address:x} ({self.size} bytes, {self.comm}/{self.pid}) from {where}"


def parse_kmemleak(text: str | Iterable[str]) -> list[LeakedObject]:
    """Every object of a kmemleak report (the debugfs file, or dmesg lines of kmemleak.verbose)."""
    lines = text.splitlines() if isinstance(text, str) else list(text)
    objects: list[LeakedObject] = []
    entry: list[str] = []
    for raw in [*lines, ""]:
        line = _PREFIX_RE.sub("", raw)
        if _OBJECT_RE.match(line) or not (line[:1].isspace()):
            if entry:
                objects.append(_object(entry))
                entry = []
            if _OBJECT_RE.match(line):
                entry = [line]
            continue
        if entry:
            entry.append(line)
    return objects


def _object(entry: list[str]) -> LeakedObject:
    head = _OBJECT_RE.match(entry[0])
    assert head is not None
    comm, pid, age = "", 0, None
    frames: list[str] = []
    in_backtrace = False
    for line in entry[1:]:
        m = _COMM_RE.match(line)
        if m is not None:
            comm, pid = m.group("comm"), int(m.group("pid"))
            age = float(m.group("age")) if m.group("age") else None
            continue
        if BACKTRACE_RE.match(line):
            in_backtrace = True
            continue
        f = _FRAME_RE.match(line) if in_backtrace else None
        if f is not None:
            frames.append(f.group("frame").strip())
    return LeakedObject(int(head.group("addr"), 16), int(head.group("size")), comm, pid, age, tuple(frames),
                        tuple(entry))  # fmt: skip


def split_by_module(objects: Iterable[LeakedObject], module: str) -> tuple[list[LeakedObject], list[LeakedObject]]:
    """(objects allocated through `module`: the test's failures, the others: the kernel's)."""
    ours: list[LeakedObject] = []
    others: list[LeakedObject] = []
    for obj in objects:
        (ours if obj.touches(module) else others).append(obj)
    return ours, others


def scan_delay(loaded_at: float, now: float) -> float:
    """Seconds to wait before a scan can report what was allocated at `loaded_at` or earlier (monotonic
    seconds, same clock as `now`; the harness passes the rmmod's time): kmemleak skips objects younger
    than MIN_AGE_S."""
    return max(0.0, loaded_at + MIN_AGE_S + 0.5 - now)


def write_argv(command: str) -> list[str]:
    """The guest argv that sends one command (CLEAR, SCAN, SCAN_OFF) to kmemleak."""
    if command not in (CLEAR, SCAN, SCAN_OFF):
        raise ValueError(f"not a kmemleak command the harness sends: {command!r}")
    return ["sh", "-c", f"echo {command} > {KMEMLEAK_PATH}"]


# ---- frames of a module that is gone: symbols from its .ko and its section addresses -------------------


_ALIASES: Final = frozenset({"init_module", "cleanup_module"})


def sections_argv(module: str) -> list[str]:
    """Guest argv listing where the loaded `module`'s sections are (run it before the rmmod)."""
    return ["grep", "-r", ".", f"/sys/module/{module.replace('-', '_')}/sections"]


def parse_sections(output: str) -> dict[str, int]:
    """{section: address} from the output of sections_argv (`.../sections/.text:0xffffffffa0000000`)."""
    out: dict[str, int] = {}
    for line in output.splitlines():
        path, sep, value = line.strip().rpartition(":")
        if sep and value.startswith("0x") and "/sections/" in path:
            out[path.rsplit("/sections/", 1)[1]] = int(value, 16)
    return out


@dataclass(frozen=True)
class ModuleSymbols:
    """The functions of one loaded module at their run-time addresses."""

    module: str
    functions: tuple[tuple[int, int, str], ...]  # (start, size, name), sorted by start

    def lookup(self, address: int) -> str | None:
        """`func+0xoff/0xsize [module]` for an address inside one of the module's functions."""
        starts = [f[0] for f in self.functions]
        i = bisect.bisect_right(starts, address) - 1
        if i < 0:
            return None
        start, size, name = self.functions[i]
        if not start <= address < start + max(size, 1):
            return None
        return f"{name}+0x{address - start:x}/0x{size:x} [{self.module}]"


def module_symbols(module: str, ko: Path, sections: Mapping[str, int]) -> ModuleSymbols:
    """The module's functions placed at the section addresses the guest reported (parse_sections)."""
    # init_module and cleanup_module alias the module's init and exit functions: the real names sort
    # after them, and lookup takes the last function starting at an address.
    placed = sorted(
        (sections[section] + offset, name not in _ALIASES, size, name)
        for section, offset, size, name in ko_functions(ko)
        if section in sections
    )
    return ModuleSymbols(module.replace("-", "_"), tuple((start, size, name) for start, _, size, name in placed))


def symbolize(obj: LeakedObject, symbols: Iterable[ModuleSymbols]) -> LeakedObject:
    """`obj` with its bare-address frames named after the module functions they fall in."""
    tables = list(symbols)

    def name(frame: str) -> str:
        m = _BARE_RE.match(frame)
        if m is None:
            return frame
        address = int(m.group("addr"), 16)
        return next((found for t in tables if (found := t.lookup(address)) is not None), frame)

    frames = tuple(name(f) for f in obj.frames)
    if frames == obj.frames:
        return obj
    lines = tuple(_rename_line(line, obj.frames, frames) for line in obj.lines)
    return replace(obj, frames=frames, lines=lines)


def _rename_line(line: str, old: tuple[str, ...], new: tuple[str, ...]) -> str:
    for before, after in zip(old, new, strict=True):
        if before != after and line.rstrip().endswith(" " + before):
            return line.rstrip()[: -len(before)] + after
    return line


# ---- after rmmods: a reading of the report, and what it means for the test ----------------------------

SCAN_TIMEOUT_S: Final = 600.0  # one scan of a 1 GB guest: 5 to 15 s under TCG here (docs/kernels.md)


def may_have_kmemleak(config: Mapping[str, str]) -> bool:
    """Whether a kernel with `config` ({symbol: value}, from harness.build.config_items.read_kernel_config)
    may have kmemleak, so the guest is asked once: CONFIG_DEBUG_KMEMLEAK=y, or no configuration found.
    A kernel configured without it (every stock kernel here) is never asked."""
    return not config or config.get("DEBUG_KMEMLEAK") == "y"


@dataclass(frozen=True)
class UnloadedModule:
    """A module unloaded since the last scan: its .ko and where its sections were (parse_sections)."""

    name: str
    ko: Path
    sections: tuple[tuple[str, int], ...]
    unloaded_at: float  # time.monotonic() when its rmmod returned


@dataclass(frozen=True)
class LeakReading:
    """What kmemleak listed after the unload of `modules`: the report parsed, their frames named."""

    modules: tuple[str, ...]
    objects: tuple[LeakedObject, ...]
    scans_s: tuple[float, ...]  # how long each scan took


def leak_reading(report: str, unloaded: Iterable[UnloadedModule], scans_s: Iterable[float]) -> LeakReading:
    """The reading of `report` (KMEMLEAK_PATH after the scans). Raises KernelCheckError when a
    module's .ko cannot be read (its frames could not be told from the kernel's)."""
    gone = list(unloaded)
    try:
        tables = [module_symbols(u.name, u.ko, dict(u.sections)) for u in gone]
    except (OSError, ValueError) as e:
        raise KernelCheckError(f"cannot name the frames of an unloaded module for kmemleak: {e}") from e
    objects = tuple(symbolize(obj, tables) for obj in parse_kmemleak(report))
    return LeakReading(tuple(dict.fromkeys(u.name.replace("-", "_") for u in gone)), objects, tuple(scans_s))


def allow_text(obj: LeakedObject) -> str:
    """What splat allowlist entries match for a leaked object: its heading line and its backtrace,
    `unreferenced object 0x... (size 64): from kmalloc_trace+0x26/0xc0, leak_alloc+0x5e/0xb2 [leak], ...`."""
    return f"{obj.lines[0].strip()} from {', '.join(obj.frames)}"


@dataclass(frozen=True)
class AllowedLeak(Allowed):
    """A leaked object that a splat allowlist entry let through."""

    obj: LeakedObject


@dataclass(frozen=True)
class LeakVerdict:
    """A reading judged: objects allocated through an unloaded module fail the test; the kernel's
    are reported and never fail it; the allowlist lets either kind through, with its reason."""

    modules: tuple[str, ...]
    failures: tuple[LeakedObject, ...]
    kernel: tuple[LeakedObject, ...]
    allowed: tuple[AllowedLeak, ...]
    scans_s: tuple[float, ...]

    @property
    def ok(self) -> bool:
        return not self.failures

    def touches(self, obj: LeakedObject) -> bool:
        return any(obj.touches(m) for m in self.modules)

    def _scans(self) -> str:
        return f"{len(self.scans_s)} scans after the rmmod, {sum(self.scans_s):.1f} s"

    def message(self, max_lines: int = 20) -> str:
        """The failure text: every object of the modules, with its kind, fingerprint and entry."""
        if not self.failures:
            return ""
        head = (f"kmemleak: {_objects(len(self.failures))} leaked by module {', '.join(self.modules)} "
                f"(unreferenced after its unload; {self._scans()}):")  # fmt: skip
        return "\n".join([head, *_entries("kmemleak", self.failures, max_lines)])

    def kernel_message(self, max_lines: int = 20) -> str:
        """The report of the kernel's objects (and of allowed ones): not a failure."""
        parts = []
        if self.kernel:
            parts.append(f"kmemleak: {_objects(len(self.kernel))} whose allocation does not pass through "
                         f"{', '.join(self.modules)} (reported, not failing: the kernel's own, or kept alive "
                         "by a reference the module took and never dropped; allowlist it if it is the kernel's):")
            parts.extend(_entries("kernel leak", self.kernel, max_lines))
        parts.extend(f"allowed kmemleak [{a.obj.splat.fingerprint}]: {a.obj.summary()}: {a.why}" for a in self.allowed)
        return "\n".join(parts)


def _objects(n: int) -> str:
    return f"{n} object{'s' if n != 1 else ''}"


_FULL_ENTRIES: Final = 2  # objects shown with their whole entry; the others with their summary line


def _entries(label: str, objects: Iterable[LeakedObject], max_lines: int) -> list[str]:
    """One line per object (kind, fingerprint, summary); the first ones with their kmemleak entry."""
    out = []
    for i, obj in enumerate(objects):
        out.append(f"{label} [{obj.splat.fingerprint}]: {obj.summary()}")
        if i < _FULL_ENTRIES:
            out.extend("    " + ln for ln in obj.lines[:max_lines])
            if len(obj.lines) > max_lines:
                out.append(f"    ... ({len(obj.lines) - max_lines} more lines)")
    return out


def judge_leaks(reading: LeakReading, allowlist: Iterable[AllowEntry]) -> LeakVerdict:
    """Split a reading into the modules' objects (failures), the kernel's and the allowed ones."""
    entries = tuple(allowlist)
    failures: list[LeakedObject] = []
    kernel: list[LeakedObject] = []
    allowed: list[AllowedLeak] = []
    verdict = LeakVerdict(reading.modules, (), (), (), reading.scans_s)
    for obj in reading.objects:
        entry = first_allowing(entries, allow_text(obj))
        if entry is not None:
            allowed.append(AllowedLeak(entry=entry, obj=obj))
        else:
            (failures if verdict.touches(obj) else kernel).append(obj)
    return replace(verdict, failures=tuple(failures), kernel=tuple(kernel), allowed=tuple(allowed))


def without_kmemleak_splats(report: SplatReport) -> SplatReport:
    """`report` without its kmemleak splats (the "N new suspected memory leaks" lines a scan prints,
    verbose object lines): a check that read the kmemleak report judges those objects itself."""
    return SplatReport(tuple(s for s in report.failures if s.kind != "kmemleak"),
                       tuple(a for a in report.allowed if a.splat.kind != "kmemleak"))  # fmt: skip
