"""eBPF observation: run bpftrace programs in the guest around a test and read what the kernel executed.

dmesg shows what the module chose to print; a bpftrace program shows which
functions actually ran, with which arguments, and how long they took.

Flow (BpfRunner.start / BpfTrace.stop):
  1. `bpftrace -f json PROGRAM ARGS...` starts in the background of the guest
     shell, stdout and stderr going to files in the shared results directory
     (the guest writes them, the host reads them directly).
  2. The program's BEGIN probe prints READY_MARKER. bpftrace fires BEGIN only
     after every other probe is attached, so seeing the marker in the output
     file confirms attach; start() returns only then (or raises).
  3. stop() sends SIGINT, waits for the process to exit (bpftrace then prints
     every map) and parses the JSON lines into typed results.

Programs are files: guest_scripts/bpf/<name>.bt, or any path the guest can
read (the guest sees the host filesystem read-only). See docs/ebpf.md.

The `ebpf` fixture hands out a BpfRunner for the test's guest, after the
module is loaded, and stops leftover programs afterwards. When the guest cannot
run bpftrace (not installed, does not start, kernel without the bpf() system
call) the test is skipped with the reason, or fails with it when the
require_ebpf setting is on (KNH_REQUIRE_EBPF=1, as in CI): see skip_or_fail().
The programs use kprobes, which need no kernel BTF.
"""

from __future__ import annotations

import itertools
import json
import secrets
import shlex
import time
import warnings
import weakref
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, NoReturn

import pytest

from .config import GUEST_SCRIPTS, SETTINGS_BY_NAME, HarnessConfig
from .errors import HarnessError
from .vm import Guest

if TYPE_CHECKING:
    from .kernelops import GuestKernel
    from .plugin import LoadedModule

PROGRAMS_DIR = GUEST_SCRIPTS / "bpf"
READY_MARKER = "KNH-BPF-READY"
# Present exactly when the kernel has the bpf() system call (CONFIG_BPF_SYSCALL).
BPF_SYSCALL_SYSCTL = "/proc/sys/kernel/unprivileged_bpf_disabled"
CLOCKSOURCE = "/sys/devices/system/clocksource/clocksource0/current_clocksource"
# Clocksources that advance once per timer tick: bpftrace's nsecs cannot time a call of a few µs.
TICK_CLOCKSOURCES = ("jiffies", "refined-jiffies")

DEFAULT_ATTACH_TIMEOUT = 180.0  # compiling and attaching under TCG on a busy host took 25 s
DEFAULT_STOP_TIMEOUT = 60.0
# bpftrace (0.17 at least) leaves its poll loop only when epoll_wait() returns EINTR.
# A SIGINT that lands while it is between two epoll_wait() calls sets its exit flag
# but interrupts nothing, and a program that prints nothing more then runs forever.
# A clean stop takes ~0.6 s under TCG, so SIGINT is sent again this often until it exits.
SIGINT_RESEND_S = 3.0
_POLL_S = 0.1


class EbpfError(HarnessError):
    """Base class of eBPF observation errors."""


class EbpfUnavailable(EbpfError):
    """The guest cannot run bpftrace programs, or cannot time a call (the reason says why).

    Tests skip, or fail when the require_ebpf setting is on (skip_or_fail).
    """


class BpfStopWarning(UserWarning):
    """bpftrace needed more than one SIGINT to stop (shown in pytest's warnings summary)."""


class BpfOutputError(EbpfError):
    """bpftrace wrote something the parser does not understand."""


class BpfProcessError(EbpfError):
    """bpftrace failed to start, to attach, or died while running."""


# ---- parsed output ----------------------------------------------------------


@dataclass(frozen=True)
class Bucket:
    """One histogram bucket: values from `low` to `high`, both inclusive (None = unbounded)."""

    low: int | None
    high: int | None
    count: int

    def __str__(self) -> str:
        lo = "-inf" if self.low is None else str(self.low)
        hi = "inf" if self.high is None else str(self.high)
        return f"[{lo}, {hi}]"


@dataclass(frozen=True)
class Histogram:
    """A bpftrace hist() or lhist(): the buckets bpftrace printed, in order."""

    buckets: tuple[Bucket, ...]

    @property
    def total(self) -> int:
        return sum(b.count for b in self.buckets)

    def nonzero(self) -> tuple[Bucket, ...]:
        return tuple(b for b in self.buckets if b.count)

    def count_above(self, value: int) -> int:
        """Samples in buckets whose lower bound is above `value` (buckets straddling it not counted)."""
        return sum(b.count for b in self.buckets if b.low is not None and b.low > value)

    def max_bound(self) -> int | None:
        """Upper bound of the highest non-empty bucket (None when that bucket is unbounded or all are empty)."""
        filled = self.nonzero()
        return filled[-1].high if filled else None

    def quantile_bucket(self, q: float) -> Bucket | None:
        """The bucket holding the q-quantile (0 < q <= 1), None for an empty histogram."""
        if not 0 < q <= 1:
            raise ValueError("q must be in (0, 1]")
        total = self.total
        if total == 0:
            return None
        target = q * total
        seen = 0
        for b in self.buckets:
            seen += b.count
            if b.count and seen >= target:
                return b
        return self.nonzero()[-1]

    def quantile(self, q: float) -> float | None:
        """Estimate of the q-quantile, interpolated linearly inside its bucket.

        Bucket [low, high] of integer samples is taken as the interval
        [low, high + 1). None when the histogram is empty or the quantile falls
        into an unbounded bucket.
        """
        bucket = self.quantile_bucket(q)
        if bucket is None or bucket.low is None or bucket.high is None:
            return None
        target = q * self.total
        before = 0
        for b in self.buckets:
            if b is bucket:
                break
            before += b.count
        frac = (target - before) / bucket.count
        return bucket.low + max(0.0, min(1.0, frac)) * (bucket.high + 1 - bucket.low)

    def render(self, unit: str = "", width: int = 40) -> str:
        """Text rendering like bpftrace's, non-empty range only."""
        filled = [i for i, b in enumerate(self.buckets) if b.count]
        if not filled:
            return "(empty)"
        shown = self.buckets[filled[0] : filled[-1] + 1]
        peak = max(b.count for b in shown)
        lines = []
        for b in shown:
            bar = "@" * (round(width * b.count / peak) if peak else 0)
            lines.append(f"{b!s:>22} {unit:<3}{b.count:>9} |{bar:<{width}}|")
        return "\n".join(lines)


@dataclass(frozen=True)
class Stats:
    """A bpftrace stats(): count, average and total (integers, as bpftrace prints them)."""

    count: int
    average: int
    total: int


MapValue = int | dict[str, int]
HistValue = Histogram | dict[str, Histogram]
StatsValue = Stats | dict[str, Stats]


@dataclass(frozen=True)
class BpfResults:
    """Everything a bpftrace run printed, by kind. Map names are given without the '@'.

    maps:   count()/sum()/min()/max()/avg() maps; a scalar map is an int, a keyed
            map a dict from key text (bpftrace joins several keys with ',') to int.
            A count() map that never fired is printed as 0 (scalar) by bpftrace.
    hists:  hist()/lhist() maps (a Histogram, or a dict of them for keyed maps).
    stats:  stats() maps.
    """

    maps: Mapping[str, MapValue] = field(default_factory=dict)
    hists: Mapping[str, HistValue] = field(default_factory=dict)
    stats: Mapping[str, StatsValue] = field(default_factory=dict)
    printfs: tuple[str, ...] = ()
    attached_probes: int | None = None
    lost_events: int = 0
    other: tuple[Mapping[str, Any], ...] = ()
    stderr: str = ""

    # -- lookups with messages that say what was there ------------------------
    def _missing(self, kind: str, name: str) -> KeyError:
        have = ", ".join("@" + h for h in sorted({*self.maps, *self.hists, *self.stats})) or "none"
        return KeyError(f"no {kind} @{name} in the bpftrace output (maps printed: {have})")

    def count(self, name: str, key: str | int | None = None, *, default: int | None = 0) -> int:
        """Value of a count()-like map; a map that never fired is not printed and counts as `default`.

        Pass default=None to insist that the map was printed.
        """
        name = name.lstrip("@")
        if name not in self.maps:
            if default is None:
                raise self._missing("map", name)
            return default
        value = self.maps[name]
        if key is None:
            if isinstance(value, dict):
                return sum(value.values())
            return value
        if not isinstance(value, dict):
            raise TypeError(f"@{name} has no keys")
        return value.get(str(key), 0)

    def keyed(self, name: str) -> dict[str, int]:
        """A keyed map as a dict (empty when the map never fired)."""
        value = self.maps.get(name.lstrip("@"), {})
        if isinstance(value, int):
            raise TypeError(f"@{name.lstrip('@')} is a scalar map ({value}), not a keyed one")
        return dict(value)

    def int_keyed(self, name: str) -> dict[int, int]:
        """A map keyed by one integer, e.g. @ack[errno] -> {0: 20, 22: 1}."""
        return {int(k): v for k, v in sorted(self.keyed(name).items(), key=lambda kv: int(kv[0]))}

    def hist(self, name: str, key: str | int | None = None) -> Histogram:
        """A hist()/lhist() map; an empty Histogram when the map never fired."""
        value = self.hists.get(name.lstrip("@"))
        if value is None:
            return Histogram(())
        if isinstance(value, dict):
            if key is None:
                raise TypeError(f"@{name.lstrip('@')} is keyed ({', '.join(value)}): pass key=")
            return value.get(str(key), Histogram(()))
        return value

    def stat(self, name: str) -> Stats | None:
        value = self.stats.get(name.lstrip("@"))
        if isinstance(value, dict):
            raise TypeError(f"@{name.lstrip('@')} is keyed: use .stats[name][key]")
        return value

    def summary(self) -> str:
        """Short text of all maps, for assertion messages."""
        parts = [f"@{k}: {v}" for k, v in sorted(self.maps.items())]
        for k, h in sorted(self.hists.items()):
            if isinstance(h, Histogram):
                parts.append(f"@{k}: hist of {h.total}")
            else:
                parts.append(f"@{k}: " + ", ".join(f"[{kk}] hist of {hh.total}" for kk, hh in h.items()))
        for k, s in sorted(self.stats.items()):
            parts.append(f"@{k}: {s}")
        if self.lost_events:
            parts.append(f"lost events: {self.lost_events}")
        return "; ".join(parts) or "(no maps printed)"


def _int(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise BpfOutputError(f"{where}: expected an integer, got {value!r}")
    return value


def _histogram(value: Any, where: str) -> Histogram:
    if not isinstance(value, list):
        raise BpfOutputError(f"{where}: expected a list of buckets, got {type(value).__name__}")
    buckets = []
    for item in value:
        if not isinstance(item, dict) or "count" not in item:
            raise BpfOutputError(f"{where}: bad bucket {item!r}")
        low = _int(item["min"], where) if "min" in item else None
        high = _int(item["max"], where) if "max" in item else None
        buckets.append(Bucket(low, high, _int(item["count"], where)))
    return Histogram(tuple(buckets))


def _stats(value: Any, where: str) -> Stats:
    if not isinstance(value, dict) or not {"count", "average", "total"} <= set(value):
        raise BpfOutputError(f"{where}: bad stats value {value!r}")
    return Stats(_int(value["count"], where), _int(value["average"], where), _int(value["total"], where))


def _map_value(value: Any, where: str) -> MapValue:
    if isinstance(value, dict):
        return {str(k): _int(v, where) for k, v in value.items()}
    return _int(value, where)


def _is_stats(value: Any) -> bool:
    return isinstance(value, dict) and set(value) == {"count", "average", "total"}


def parse_output(stdout: str, stderr: str = "") -> BpfResults:
    """Parse `bpftrace -f json` standard output (one JSON object per line; blank lines ignored)."""
    maps: dict[str, MapValue] = {}
    hists: dict[str, HistValue] = {}
    stats: dict[str, StatsValue] = {}
    printfs: list[str] = []
    other: list[Mapping[str, Any]] = []
    attached: int | None = None
    lost = 0
    for lineno, line in enumerate(stdout.splitlines(), 1):
        if not line.strip():
            continue
        where = f"bpftrace output line {lineno}"
        try:
            obj = json.loads(line)
        except ValueError as e:
            raise BpfOutputError(f"{where} is not JSON ({e}): {line[:300]!r}") from None
        if not isinstance(obj, dict) or "type" not in obj:
            raise BpfOutputError(f"{where} is not a bpftrace JSON record: {line[:300]!r}")
        kind, data = obj["type"], obj.get("data")
        if kind == "printf":
            printfs.append(str(data))
        elif kind == "attached_probes":
            attached = _int(data.get("probes") if isinstance(data, dict) else None, where)
        elif kind == "lost_events":
            lost += _int(data.get("events") if isinstance(data, dict) else None, where)
        elif kind in ("map", "hist", "stats"):
            if not isinstance(data, dict):
                raise BpfOutputError(f"{where}: {kind} record without a map: {line[:300]!r}")
            for raw_name, value in data.items():
                name = str(raw_name).lstrip("@")
                w = f"{where} (@{name})"
                if kind == "map":
                    maps[name] = _map_value(value, w)
                elif kind == "hist":
                    if isinstance(value, dict):
                        hists[name] = {str(k): _histogram(v, w) for k, v in value.items()}
                    else:
                        hists[name] = _histogram(value, w)
                elif _is_stats(value):
                    stats[name] = _stats(value, w)
                elif isinstance(value, dict) and value and all(_is_stats(v) for v in value.values()):
                    stats[name] = {str(k): _stats(v, w) for k, v in value.items()}
                else:  # avg() is printed as a "stats" record holding plain numbers
                    maps[name] = _map_value(value, w)
        else:
            other.append(obj)
    return BpfResults(maps, hists, stats, tuple(printfs), attached, lost, tuple(other), stderr)


# ---- running programs in the guest ----------------------------------------------


def resolve_program(program: str | Path, programs_dir: Path = PROGRAMS_DIR) -> Path:
    """A program name ("knetlink", "knetlink.bt") from `programs_dir`, or a path to a .bt file."""
    path = Path(program)
    if not path.is_absolute() and path.parent == Path("."):
        path = programs_dir / (path.name if path.suffix == ".bt" else path.name + ".bt")
    path = path.resolve()
    if not path.is_file():
        available = ", ".join(sorted(p.stem for p in programs_dir.glob("*.bt"))) or "none"
        raise EbpfError(f"bpftrace program {program} not found ({path}); programs in {programs_dir}: {available}")
    if READY_MARKER not in path.read_text(errors="replace"):
        raise EbpfError(
            f"{path} does not print {READY_MARKER!r} in BEGIN: without it the harness cannot confirm attach "
            f'(add: BEGIN {{ printf("{READY_MARKER}\\n"); }})'
        )
    return path


class BpfTrace:
    """One running bpftrace program in the guest. stop() returns its parsed results."""

    def __init__(self, runner: BpfRunner, program: Path, base: Path) -> None:
        self.runner = runner
        self.program = program
        self.out = base.with_suffix(".out")
        self.err = base.with_suffix(".err")
        self.pidfile = base.with_suffix(".pid")
        self.rcfile = base.with_suffix(".rc")
        self.pid: int | None = None
        self.attach_s: float | None = None
        self.stop_s: float | None = None  # first SIGINT to exit, seconds
        self.sigints = 0  # SIGINTs it took (more than one: see SIGINT_RESEND_S)
        self.results: BpfResults | None = None

    # -- files the guest writes ---------------------------------------------------
    def _read(self, path: Path) -> str:
        try:
            return path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def _read_int(self, path: Path) -> int | None:
        text = self._read(path).strip()
        return int(text) if text.isdigit() else None

    def exit_status(self) -> int | None:
        """bpftrace's exit status once it ended, None while it runs."""
        return self._read_int(self.rcfile)

    @property
    def running(self) -> bool:
        return self.pid is not None and self.exit_status() is None

    def output(self) -> str:
        """Both output files, for error messages."""
        out, err = self._read(self.out).rstrip(), self._read(self.err).rstrip()
        return f"--- bpftrace stdout ({self.out}) ---\n{out[-4000:] or '(empty)'}\n" \
               f"--- bpftrace stderr ({self.err}) ---\n{err[-4000:] or '(empty)'}"  # fmt: skip

    def _fail(self, what: str) -> BpfProcessError:
        return BpfProcessError(f"bpftrace {self.program.name}: {what}\n{self.output()}")

    # -- lifecycle ------------------------------------------------------------------
    def wait_attached(self, timeout: float) -> None:
        start = time.monotonic()
        while True:
            if self.pid is None:
                self.pid = self._read_int(self.pidfile)
            if READY_MARKER in self._read(self.out):
                self.attach_s = time.monotonic() - start
                return
            status = self.exit_status()
            if status is not None:
                raise self._fail(f"exited with status {status} before attaching")
            if time.monotonic() - start > timeout:
                self.kill()
                raise self._fail(f"not attached after {timeout:.0f} s (killed)")
            time.sleep(_POLL_S)

    def _sigint(self) -> None:
        self.sigints += 1
        self.runner.guest.run(f"kill -INT {self.pid} 2>/dev/null")

    def _process_state(self) -> str:
        """Where a bpftrace that does not stop sits: scheduler state, wait channel, kernel stack."""
        if self.pid is None or not self.runner.guest.alive:
            return ""
        d = f"/proc/{self.pid}"
        result = self.runner.guest.run(
            f"grep -E '^(State|SigPnd|ShdPnd|SigBlk|SigCgt):' {d}/status; echo wchan: $(cat {d}/wchan); "
            f"echo syscall: $(cat {d}/syscall); cat {d}/stack",
        )
        return f"--- bpftrace process {self.pid} before the kill ---\n{result.output.strip()}"

    def kill(self) -> None:
        if self.pid is not None and self.runner.guest.alive:
            self.runner.guest.run(f"kill -KILL {self.pid} 2>/dev/null")

    def stop(self, timeout: float = DEFAULT_STOP_TIMEOUT) -> BpfResults:
        """SIGINT, wait for the exit (maps are printed then), parse. Raises if bpftrace died early."""
        if self.results is not None:
            return self.results
        died_before = self.exit_status()
        if died_before is None:
            if self.pid is None:
                self.pid = self._read_int(self.pidfile)
            if self.pid is None:
                raise self._fail(f"no pid in {self.pidfile}: cannot stop it")
            start = last_sigint = time.monotonic()
            self._sigint()
            while self.exit_status() is None:
                now = time.monotonic()
                if now - start > timeout:
                    state = self._process_state()
                    self.kill()
                    raise self._fail(
                        f"still running {timeout:.0f} s after the first of {self.sigints} SIGINTs (killed)\n{state}"
                    )
                if now - last_sigint >= SIGINT_RESEND_S:
                    last_sigint = now
                    self._sigint()
                time.sleep(_POLL_S)
            self.stop_s = time.monotonic() - start
            if self.sigints > 1:
                warnings.warn(
                    f"bpftrace {self.program.name} stopped only after {self.sigints} SIGINTs "
                    f"({self.stop_s:.1f} s): it missed the first (see SIGINT_RESEND_S)",
                    BpfStopWarning, stacklevel=2,
                )  # fmt: skip
        self.runner._forget(self)
        status = self.exit_status()
        if died_before is not None:
            raise self._fail(f"died while the test ran (exit status {died_before}): results are incomplete")
        if status != 0:
            raise self._fail(f"exited with status {status} after SIGINT")
        try:
            results = parse_output(self._read(self.out), self._read(self.err))
        except BpfOutputError as e:
            raise BpfOutputError(f"{e}\n{self.output()}") from None
        self.results = results
        if not self.runner.keep_files:
            for p in (self.out, self.err, self.pidfile, self.rcfile):
                p.unlink(missing_ok=True)
        return results

    def __enter__(self) -> BpfTrace:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        if et is None:
            self.stop()
        elif self.running:
            try:
                self.stop()
            except HarnessError:
                pass  # the test's own exception is the one to report


class BpfRunner:
    """Starts bpftrace programs in one guest. `scratch` must be the guest-writable shared directory."""

    def __init__(
        self, guest: Guest, scratch: Path, *, attach_timeout: float = DEFAULT_ATTACH_TIMEOUT,
        programs_dir: Path = PROGRAMS_DIR, keep_files: bool = False,
    ) -> None:  # fmt: skip
        self.guest = guest
        self.scratch = scratch
        self.attach_timeout = attach_timeout
        self.programs_dir = programs_dir
        self.keep_files = keep_files
        self._token = secrets.token_hex(4)
        self._counter = itertools.count(1)
        self._running: list[BpfTrace] = []
        self._unavailable: str | None = None
        self._checked = False
        self._clock: str | None = None
        self._clock_checked = False

    def unavailable_reason(self) -> str | None:
        """Why this guest cannot run bpftrace, None when it can. Checked once per runner.

        Only bpftrace itself and the bpf() system call are required: the programs use
        kprobes, which need no kernel BTF. Anything else that stops a program (a
        missing probe, no kprobe support) is a BpfProcessError when it starts.
        """
        if not self._checked:
            result = self.guest.run(
                "if ! command -v bpftrace >/dev/null; then echo NO-BPFTRACE; "
                "else out=$(bpftrace --version 2>&1); rc=$?; "
                "[ $rc = 0 ] || { echo \"BPFTRACE-FAILS $rc\"; echo \"$out\" | tail -n 3; }; fi; "
                f"test -e {BPF_SYSCALL_SYSCTL} || echo NO-BPF-SYSCALL; echo \"RELEASE $(uname -r)\""
            )
            self._unavailable = _unavailable_from(result.output)
            self._checked = True
        return self._unavailable

    def clock_reason(self) -> str | None:
        """Why bpftrace's nsecs cannot time a call of a few µs in this guest, None when it can. Checked once."""
        if not self._clock_checked:
            source = self.guest.run(f"cat {CLOCKSOURCE}").output.strip()
            self._clock = _clock_problem(source)
            self._clock_checked = True
        return self._clock

    def check(self) -> None:
        reason = self.unavailable_reason()
        if reason is not None:
            raise EbpfUnavailable(reason)

    def check_clock(self) -> None:
        reason = self.clock_reason()
        if reason is not None:
            raise EbpfUnavailable(reason)

    def start(
        self, program: str | Path, *args: str | int, env: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> BpfTrace:  # fmt: skip
        """Start `program` (positional parameters `args` are its $1, $2, ...) and return once it is attached."""
        self.check()
        path = resolve_program(program, self.programs_dir)
        self.scratch.mkdir(parents=True, exist_ok=True)
        trace = BpfTrace(self, path, self.scratch / f"bpf-{self._token}-{next(self._counter)}-{path.stem}")
        argv = ["bpftrace", "-f", "json", str(path), *map(str, args)]
        if env:
            argv = ["env", *(f"{k}={v}" for k, v in env.items()), *argv]
        q = shlex.quote
        # Inner subshell: records bpftrace's pid and, when it ends, its exit status.
        # Its own output goes nowhere: a non-interactive bash reports a killed child
        # ("line 1: 123 Killed ...") on its stderr, which would otherwise land on the
        # console in the middle of a later command's output.
        # Outer subshell: keeps the job out of the interactive shell's job table (no "[1] 123").
        command = (
            f"( ( {shlex.join(argv)} > {q(str(trace.out))} 2> {q(str(trace.err))} & "
            f"echo $! > {q(str(trace.pidfile))}; wait $!; echo $? > {q(str(trace.rcfile))} ) "
            "> /dev/null 2>&1 & )"
        )
        self.guest.run(command, check=True)
        self._running.append(trace)
        try:
            trace.wait_attached(timeout or self.attach_timeout)
        except BaseException:
            self._forget(trace)
            raise
        return trace

    @contextmanager
    def trace(
        self, program: str | Path, *args: str | int, env: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> Iterator[BpfTrace]:  # fmt: skip
        """`with runner.trace("knetlink") as t: ...`, then t.results (stopped at the end of the block)."""
        with self.start(program, *args, env=env, timeout=timeout) as t:
            yield t

    def _forget(self, trace: BpfTrace) -> None:
        if trace in self._running:
            self._running.remove(trace)

    def stop_all(self) -> None:
        """Stop programs a test left running (results discarded, errors ignored)."""
        for trace in list(self._running):
            try:
                if self.guest.alive:
                    trace.stop()
            except HarnessError:
                pass
            self._forget(trace)


def _unavailable_from(output: str) -> str | None:
    """The reason in the availability probe's output (see BpfRunner.unavailable_reason), None when fine."""
    lines = [ln.strip() for ln in output.splitlines() if ln.strip()]
    release = next((ln.split(None, 1)[1] for ln in lines if ln.startswith("RELEASE ") and " " in ln), "?")
    if "NO-BPFTRACE" in lines:
        return (
            f"bpftrace not found in the guest ({release}): `command -v bpftrace` failed; the guest runs the "
            "host's programs, so install it on the host (Debian: apt-get install bpftrace)"
        )
    fails = [i for i, ln in enumerate(lines) if ln.startswith("BPFTRACE-FAILS")]
    if fails:
        status = lines[fails[0]].partition(" ")[2] or "?"
        said = "\n".join(ln for ln in lines[fails[0] + 1 :] if not ln.startswith(("NO-BPF-SYSCALL", "RELEASE ")))
        return (
            f"bpftrace does not run in the guest ({release}): `bpftrace --version` exited with status {status}"
            + (f": {said}" if said else "")
            + "; reinstall it on the host (Debian: apt-get install --reinstall bpftrace)"
        )
    if "NO-BPF-SYSCALL" in lines:
        return (
            f"guest kernel {release} has no bpf() system call (no {BPF_SYSCALL_SYSCTL}: CONFIG_BPF_SYSCALL off); "
            "boot a kernel built with CONFIG_BPF_SYSCALL=y and CONFIG_KPROBES=y"
        )
    return None


def _clock_problem(clocksource: str) -> str | None:
    if clocksource not in TICK_CLOCKSOURCES:
        return None
    return (
        f"the guest's clocksource is {clocksource} ({CLOCKSOURCE}): bpftrace's nsecs then advances one timer "
        "tick (1-10 ms) at a time, so a call of a few µs measures 0 or a whole tick. The kernel falls back to it "
        "when it distrusts the TSC (its log says 'Marking TSC unstable'); a guest on KVM (kvm-clock), with an "
        "HPET (the vng engine's machine has one) or booted with tsc=reliable has a fine clock"
    )


def skip_or_fail(reason: str, config: HarnessConfig) -> NoReturn:
    """End a test whose guest cannot do the eBPF observation it is about: skip, or fail when required.

    The require_ebpf setting (KNH_REQUIRE_EBPF=1, --require-ebpf, ini knh_require_ebpf) makes it a
    failure, so a CI run cannot go green by running fewer tests.
    """
    setting = SETTINGS_BY_NAME["require_ebpf"]
    if config.require_ebpf:
        where = config.sources.get("require_ebpf", "the configuration")
        pytest.fail(f"eBPF observation is required ({setting.env}=1 from {where}) but unavailable: {reason}",
                    pytrace=False)  # fmt: skip
    pytest.skip(f"eBPF observation unavailable: {reason} (with {setting.env}=1 this is a failure)")


def available_runner(guest: Guest, scratch: Path, config: HarnessConfig) -> BpfRunner:
    """The guest's BpfRunner; skips or fails the test (skip_or_fail) when the guest cannot run bpftrace."""
    runner = _runner_for(guest, scratch)
    reason = runner.unavailable_reason()
    if reason is not None:
        skip_or_fail(reason, config)
    return runner


# ---- the knetlink programs ------------------------------------------------------------


@dataclass(frozen=True)
class KnetlinkCounts:
    """What knetlink.bt saw: calls of the receive path and acks by errno (0 = success, 22 = EINVAL)."""

    datagrams: int  # knetlink_rcv calls
    messages: int  # knetlink_handle_msg calls
    acks: dict[int, int]  # netlink_ack calls from inside knetlink_rcv, by -err

    @property
    def acks_total(self) -> int:
        return sum(self.acks.values())

    @classmethod
    def from_results(cls, results: BpfResults) -> KnetlinkCounts:
        return cls(results.count("rcv"), results.count("handle_msg"), results.int_keyed("ack"))


@dataclass(frozen=True)
class LatencyReport:
    """knetlink_rcv entry-to-return time from knetlink_latency.bt (one sample per datagram)."""

    log2_ns: Histogram
    fine_us: Histogram  # 1 us buckets up to 99 us
    coarse_us: Histogram  # 10 us buckets up to 9999 us
    stats_ns: Stats | None

    @classmethod
    def from_results(cls, results: BpfResults) -> LatencyReport:
        return cls(results.hist("lat_ns"), results.hist("lat_us_fine"), results.hist("lat_us"),
                   results.stat("lat_stats_ns"))  # fmt: skip

    @property
    def count(self) -> int:
        return self.log2_ns.total

    @property
    def mean_us(self) -> float | None:
        return self.stats_ns.average / 1000 if self.stats_ns and self.stats_ns.count else None

    def quantile_us(self, q: float) -> float | None:
        """q-quantile in µs from the finest histogram that bounds it (None when there are no samples)."""
        for hist, scale in ((self.fine_us, 1.0), (self.coarse_us, 1.0), (self.log2_ns, 1e-3)):
            value = hist.quantile(q)
            if value is not None:
                return value * scale
        return None

    @property
    def median_us(self) -> float | None:
        return self.quantile_us(0.5)

    def render(self) -> str:
        """A few text lines for a benchmark report."""
        if not self.count:
            return "in-kernel knetlink_rcv latency: no samples"

        def fmt(v: float | None) -> str:
            return "n/a" if v is None else f"{v:.1f} us"

        head = (
            f"in-kernel knetlink_rcv latency (eBPF, {self.count} calls): median {fmt(self.median_us)}, "
            f"p90 {fmt(self.quantile_us(0.9))}, p99 {fmt(self.quantile_us(0.99))}, mean {fmt(self.mean_us)}"
        )
        return head + "\n" + self.log2_ns.render("ns")


def measure_handler_latency(
    guest: Guest, scratch: Path, send: Callable[[], object], *, program: str | Path = "knetlink_latency",
    timeout: float | None = None, runner: BpfRunner | None = None,
) -> LatencyReport:  # fmt: skip
    """Run `send()` (e.g. `lambda: py_sender.bench(20000)`) under knetlink_latency.bt and return the latency.

    `scratch` is a guest-writable shared directory, e.g. `guest_kernel.scratch`. The module must be
    loaded. Raises EbpfUnavailable when the guest cannot run bpftrace or its clock advances in whole
    timer ticks (the numbers would be 0 or a tick). `report.median_us` is the in-kernel median per
    datagram; `report.render()` is the text for a report. `runner` reuses a runner for the same
    guest (the `ebpf` fixture's), whose availability is already known.
    """
    runner = runner or BpfRunner(guest, scratch)
    runner.check()
    runner.check_clock()
    with runner.trace(program, timeout=timeout) as t:
        send()
    assert t.results is not None
    return LatencyReport.from_results(t.results)


# ---- pytest fixture (registered through harness.plugin.FIXTURE_MODULES) ----------------


@pytest.fixture
def ebpf(guest: Guest, guest_kernel: GuestKernel, kmod: LoadedModule, knh_config: HarnessConfig) -> Iterator[BpfRunner]:
    """A BpfRunner for the test's guest, after the module under test is loaded.

    When the guest cannot run bpftrace the test is skipped with the reason, or fails with it
    when the require_ebpf setting is on (skip_or_fail). Programs still running at the end of
    the test are stopped before the module unloads.
    """
    runner = available_runner(guest, guest_kernel.scratch, knh_config)
    try:
        yield runner
    finally:
        runner.stop_all()


_RUNNERS: weakref.WeakKeyDictionary[Guest, BpfRunner] = weakref.WeakKeyDictionary()


def _runner_for(guest: Guest, scratch: Path) -> BpfRunner:
    """One runner per guest, so the availability check runs once per boot."""
    runner = _RUNNERS.get(guest)
    if runner is None:
        runner = _RUNNERS[guest] = BpfRunner(guest, scratch)
    return runner
