"""kmemleak on a debug kernel: the guest commands and the parser of its report.

The debug profile (harness.kernel_build.DEBUG_PROFILE) builds kmemleak without
its automatic scan thread; the harness scans itself, around each test that
loads a module:

1. before the test: ``clear`` (:data:`CLEAR`), so objects leaked earlier (by
   the kernel's own boot, by another test) are never blamed on this one;
2. after the module's rmmod: ``scan`` (:data:`SCAN`), then read
   :data:`KMEMLEAK_PATH` and :func:`parse_kmemleak` it;
3. :func:`split_by_module`: objects whose backtrace has a frame of the module
   fail the test; the others are kernel objects, reported and allowlistable.

kmemleak reports an object only when it is older than 5 s at the scan
(``MSECS_MIN_AGE`` in mm/kmemleak.c, not tunable): an allocation made less than
5 s before the scan shows up in a later scan, so :func:`scan_delay` says how
long to wait after the allocating module was loaded. A scan writes to
:data:`KMEMLEAK_PATH` and returns when it is done.

Report formats: 6.1 prints ``comm "insmod", pid 150, jiffies 4294902110 (age
12.348s)`` and backtrace lines ``[<00000000a1b2c3d4>] func+0x3c/0x90 [mod]``;
6.12 drops the age and the addresses and adds ``backtrace (crc 5e0d8c3a):``.
Both parse.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from .dmesg import Splat, iter_splats
from .splatframes import ModuleFrame, module_frames

KMEMLEAK_PATH: Final = "/sys/kernel/debug/kmemleak"
CLEAR: Final = "clear"  # forget every object reported so far (they are never reported again)
SCAN: Final = "scan"  # scan now; new unreferenced objects are then listed in KMEMLEAK_PATH
SCAN_OFF: Final = "scan=off"  # stop the automatic scan thread (for kernels built with it)
MIN_AGE_S: Final = 5.0  # mm/kmemleak.c MSECS_MIN_AGE

_OBJECT_RE: Final = re.compile(r"^unreferenced object 0x(?P<addr>[0-9a-f]+) \(size (?P<size>\d+)\):")
_COMM_RE: Final = re.compile(r'^\s+comm "(?P<comm>.*)", pid (?P<pid>\d+), jiffies (?P<jiffies>\d+)'
                             r"(?: \(age (?P<age>[\d.]+)s\))?")  # fmt: skip
_BACKTRACE_RE: Final = re.compile(r"^\s+backtrace(?: \(crc (?P<crc>[0-9a-f]+)\))?:\s*$")
_FRAME_RE: Final = re.compile(r"^\s+(?:\[<[0-9a-fA-F]+>\]\s+)?(?P<frame>\S+\+0x[0-9a-fA-F]+/0x[0-9a-fA-F]+.*)$")
_PREFIX_RE: Final = re.compile(r"^kmemleak: ")  # the same report printed to dmesg (kmemleak.verbose=1)


@dataclass(frozen=True)
class LeakedObject:
    """One ``unreferenced object`` of a kmemleak report."""

    address: int
    size: int
    comm: str
    pid: int
    age_s: float | None  # 6.1 prints it; 6.12 does not
    frames: tuple[str, ...]  # backtrace lines as printed, without addresses: "leak_alloc+0x2a/0x60 [leak]"
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
        if _BACKTRACE_RE.match(line):
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
    """Seconds to wait before a scan can report what a module allocated at `loaded_at` (monotonic
    seconds, same clock as `now`): kmemleak skips objects younger than MIN_AGE_S."""
    return max(0.0, loaded_at + MIN_AGE_S + 0.5 - now)


def write_argv(command: str) -> list[str]:
    """The guest argv that sends one command (CLEAR, SCAN, SCAN_OFF) to kmemleak."""
    if command not in (CLEAR, SCAN, SCAN_OFF):
        raise ValueError(f"not a kmemleak command the harness sends: {command!r}")
    return ["sh", "-c", f"echo {command} > {KMEMLEAK_PATH}"]
