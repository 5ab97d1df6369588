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

The output parser is harness.kernel_log.bpftrace; the `ebpf` fixture (harness.pytest_plugin.ebpf_fixtures)
hands out a BpfRunner per test. The programs use kprobes, which need no kernel BTF.
"""

from __future__ import annotations

import functools
import itertools
import secrets
import shlex
import shutil
import subprocess
import time
import warnings
import weakref
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType

from harness.config import GUEST_SCRIPTS
from harness.errors import BpfOutputError, BpfProcessError, EbpfError, EbpfUnavailable, HarnessError
from harness.guest.vm import Guest
from harness.kernel_log.bpftrace import BpfResults, parse_output

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


class BpfStopWarning(UserWarning):
    """bpftrace needed more than one SIGINT to stop (shown in pytest's warnings summary)."""


class BpfNotStoppedWarning(BpfStopWarning):
    """bpftrace could not be stopped at the end of a test (the stop's error is the message): the test's own
    outcome stands, the program's results are lost, and it may still run in the guest."""



# ---- running programs in the guest ----------------------------------------------


def resolve_program(program: str | Path, programs_dir: Path = PROGRAMS_DIR) -> Path:
    """A program name ("prog" or "prog.bt") from `programs_dir`, or a path to a .bt file."""
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
            except HarnessError as e:  # the test's own exception is the one to report; this one is recorded
                self._not_stopped("after the test raised", e)

    def _not_stopped(self, when: str, error: HarnessError) -> None:
        warnings.warn(f"bpftrace {self.program.name} could not be stopped {when}: {error}",
                      BpfNotStoppedWarning, stacklevel=3)  # fmt: skip


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
                "command -v bpftrace >/dev/null || echo NO-BPFTRACE; "
                f"test -e {BPF_SYSCALL_SYSCTL} || echo NO-BPF-SYSCALL; echo \"RELEASE $(uname -r)\""
            )
            self._unavailable = _unavailable_from(result.output + host_bpftrace_failure())
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
        """`with runner.trace("prog") as t: ...`, then t.results (stopped at the end of the block)."""
        with self.start(program, *args, env=env, timeout=timeout) as t:
            yield t

    def _forget(self, trace: BpfTrace) -> None:
        if trace in self._running:
            self._running.remove(trace)

    def stop_all(self) -> None:
        """Stop programs a test left running (results discarded); one that cannot be stopped is a
        BpfNotStoppedWarning, not an error of the test."""
        for trace in list(self._running):
            try:
                if self.guest.alive:
                    trace.stop()
            except HarnessError as e:
                trace._not_stopped("after the test", e)
            self._forget(trace)


@functools.cache
def host_bpftrace_failure() -> str:
    """`bpftrace --version` run once on the host, whose programs the guest runs (its root is the host's):
    "" when it works or is not there (the guest's `command -v` says so), else ``BPFTRACE-FAILS <status>``
    and the output's last lines. In a guest under TCG the same run costs 3-5 s (the binary and LLVM
    linked under emulation); on the host it costs milliseconds."""
    path = shutil.which("bpftrace")
    if path is None:
        return ""
    try:
        proc = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"BPFTRACE-FAILS 126\n{e}\n"
    if proc.returncode == 0:
        return ""
    said = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-3:])
    return f"BPFTRACE-FAILS {proc.returncode}\n{said}\n"


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
            f"bpftrace does not run for the guest ({release}): `bpftrace --version` on the host, whose programs "
            f"the guest runs, exited with status {status}"
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


_RUNNERS: weakref.WeakKeyDictionary[Guest, BpfRunner] = weakref.WeakKeyDictionary()


def runner_for(guest: Guest, scratch: Path) -> BpfRunner:
    """One runner per guest, so the availability check runs once per boot."""
    runner = _RUNNERS.get(guest)
    if runner is None:
        runner = _RUNNERS[guest] = BpfRunner(guest, scratch)
    return runner
