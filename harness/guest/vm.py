"""Own one guest: start virtme-ng on a pty, hand out its console, never leak QEMU.

Layout of a guest's run directory (under the results directory):
    console.log      everything the interactive console printed (transcript)
    kernel.log       the guest kernel's console (hvc0): oopses and panics survive here
    argv.txt     the exact command that started the guest
"""

from __future__ import annotations

import ctypes
import functools
import os
import secrets
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO

import pexpect

from harness.errors import BootError, ChannelError, CommandTimeout, GuestCommandError, GuestError, LostGuestError
from harness.guest.channel import FIND_PORT, Channel
from harness.guest.cmdline import CHANNEL_NAME, shell_join
from harness.guest.console import CommandResult, Console
from harness.kernel_log.dmesg import find_splats, parse_lines

_PR_SET_PDEATHSIG = 1


# Signals the guest's process tree must not inherit as ignored: a harness started under nohup or in
# the background of a script ignores SIGHUP or SIGINT, and vng, its shell and virtme-run (and QEMU
# until it installs its own handlers) would then outlive the hangup that the harness's death causes.
HANGUP_SIGNALS = (signal.SIGHUP, signal.SIGINT, signal.SIGQUIT)


def _child_setup(kernel_log: str) -> None:
    """Runs in the forked child before exec: stderr (the guest kernel console) to a file,
    the hangup signals at their defaults, and die with the parent (when the kernel refuses that,
    a line in the file says so). QEMU itself is a grandchild;
    it goes away on the pty hangup that the parent's death causes, and on close() via the
    process group."""
    fd = os.open(kernel_log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 2)
    os.close(fd)
    for sig in HANGUP_SIGNALS:
        signal.signal(sig, signal.SIG_DFL)
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        refused = libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL) != 0
        reason = os.strerror(ctypes.get_errno()) if refused else ""
    except OSError as e:  # no C library to call
        refused, reason = True, str(e)
    if refused:  # stderr is the guest kernel console file now: the record stays beside the guest's log
        os.write(2, f"[knh] prctl(PR_SET_PDEATHSIG, SIGKILL) failed in the guest launcher ({reason}): the guest "
                    "may outlive a harness that is killed; stop a leftover guest by the -name in argv.txt of its "
                    "run directory\n".encode())  # fmt: skip


@dataclass(frozen=True)
class GuestLaunch:
    """How to start one guest: the exact argv and what it is, for messages."""

    argv: tuple[str, ...]
    name: str  # unique per guest; also QEMU's -name, so `pgrep -f NAME` finds it
    release: str
    accel: str
    engine: str  # "vng" or "qemu"
    channel: Path | None = None  # host socket of the virtio-serial data channel, if any
    root: Path = Path("/")  # the host directory that is the guest's root (a foreign architecture's, or the host's)


SYSTEM_PYTHON = Path("/usr/bin/python3")


@functools.cache
def guest_python(root: Path = Path("/")) -> str:
    """The interpreter a guest program (a sender) runs on: the distribution's python3 of the guest's root.

    In the host's root, when that is Python 3.10 or newer, else the harness's own: the guest sees the host's
    root, so either works. Distributions build their interpreter with PGO and LTO and link libpython into it;
    under TCG a pyenv-style build (shared libpython, no PGO) ran the sender's send/ack loop about 30% slower
    (docs/performance.md). A foreign architecture's root has only its own.
    """
    if root != Path("/"):
        return str(SYSTEM_PYTHON)
    if SYSTEM_PYTHON.exists():
        try:
            proc = subprocess.run([str(SYSTEM_PYTHON), "-c", "import sys; print(sys.version_info >= (3, 10))"],
                                  capture_output=True, text=True, timeout=30, check=False)  # fmt: skip
        except (OSError, subprocess.TimeoutExpired):
            return sys.executable
        if proc.returncode == 0 and proc.stdout.strip() == "True":
            return str(SYSTEM_PYTHON)
    return sys.executable


@dataclass(frozen=True)
class GuestPaths:
    run_dir: Path

    @property
    def transcript(self) -> Path:
        return self.run_dir / "console.log"

    @property
    def kernel_log(self) -> Path:
        return self.run_dir / "kernel.log"


class Guest:
    """One booted guest. Use as a context manager, or call start()/close()."""

    def __init__(self, launch: GuestLaunch, run_dir: Path, *, command_timeout: float = 60.0) -> None:
        self.launch = launch
        self.paths = GuestPaths(run_dir)
        self.command_timeout = command_timeout
        self.boot_time_s: float | None = None
        self._child: pexpect.spawn[str] | None = None
        self._console: Console | None = None
        self._transcript: IO[str] | None = None
        self.dead_reason: str | None = None
        self._channel: Channel | None = None
        self._channel_pid: int | None = None
        self.channel_owner: str | None = None  # what the running channel program is (see start_on_channel)

    # -- lifecycle ---------------------------------------------------------
    def start(self, boot_timeout: float) -> None:
        self.paths.run_dir.mkdir(parents=True, exist_ok=True)
        argv = list(self.launch.argv)
        (self.paths.run_dir / "argv.txt").write_text(shlex.join(argv) + "\n")
        env = dict(os.environ)
        # virtme-ng starts its helpers (virtme-run) through PATH: keep its own bin dir first.
        # A virtual environment's bin directory also holds the vng the session chose.
        vng_dir = str(Path(argv[0]).parent) if os.sep in argv[0] else ""
        if vng_dir:
            env["PATH"] = vng_dir + os.pathsep + env.get("PATH", "")
        env["TERM"] = "dumb"
        self._transcript = self.paths.transcript.open("a", encoding="utf-8", errors="replace")
        kernel_log = str(self.paths.kernel_log)
        start = time.monotonic()
        try:
            child = pexpect.spawn(
                argv[0], argv[1:], env=env, encoding="utf-8", codec_errors="replace",
                echo=False, timeout=boot_timeout, dimensions=(50, 400),
                preexec_fn=lambda: _child_setup(kernel_log),
            )  # fmt: skip
        except (pexpect.ExceptionPexpect, OSError) as e:
            self.close()
            raise BootError(f"could not start {argv[0]}: {e}", kernel_log=self.paths.kernel_log,
                            splats=console_splats(self.paths.kernel_log)) from None  # fmt: skip
        child.delaybeforesend = None
        child.logfile_read = self._transcript
        self._child = child
        self._console = Console(child)
        try:
            self._console.wait_ready(boot_timeout)
            self._console.install_prompt(timeout=30)
        except GuestError as e:
            self.close()
            raise BootError(
                f"guest {self.launch.name} ({self.launch.release}, {self.launch.engine}/{self.launch.accel}) "
                f"did not boot: {e.args[0].splitlines()[0]}",
                console_tail=e.console_tail,
                kernel_log=self.paths.kernel_log,
                transcript=self.paths.transcript,
                splats=console_splats(self.paths.kernel_log),
            ) from None
        except BaseException:
            self.close()
            raise
        self.boot_time_s = time.monotonic() - start

    @property
    def python(self) -> str:
        """The interpreter for programs run in this guest (guest_python of its root)."""
        return guest_python(self.launch.root)

    @property
    def alive(self) -> bool:
        return self._child is not None and self._child.isalive() and self.dead_reason is None

    @property
    def pid(self) -> int | None:
        return self._child.pid if self._child is not None else None

    def close(self) -> None:
        """Stop the guest: kill QEMU and virtme-ng (the whole process group)."""
        if self._channel is not None:
            self._channel.close()
            self._channel = None
        child, self._child, self._console = self._child, None, None
        if child is not None:
            pid = child.pid
            if pid is not None:
                try:
                    os.killpg(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
            try:
                child.close(force=True)
            except pexpect.ExceptionPexpect:
                pass
        if self._transcript is not None:
            self._transcript.close()
            self._transcript = None
        if self.launch.channel is not None:
            self.launch.channel.unlink(missing_ok=True)
            try:
                self.launch.channel.parent.rmdir()
            except OSError:
                pass

    def __enter__(self) -> Guest:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    # -- commands ----------------------------------------------------------
    @property
    def console(self) -> Console:
        if self._console is None or self.dead_reason is not None:
            raise LostGuestError(
                f"guest is not running ({self.dead_reason or 'not started or closed'})",
                kernel_log=self.paths.kernel_log,
                transcript=self.paths.transcript,
                splats=console_splats(self.paths.kernel_log),
            )
        return self._console

    def run(self, command: Sequence[str] | str, *, timeout: float | None = None, check: bool = False) -> CommandResult:
        """Run a command in the guest shell. An argv list is quoted; a string is shell syntax."""
        text = command if isinstance(command, str) else shell_join(command)
        try:
            result = self.console.run(text, timeout or self.command_timeout)
        except CommandTimeout as e:
            if not e.recovered:
                # The console is out of step with the shell: nothing it says can be trusted now.
                self.dead_reason = "unresponsive after a command timeout"
            raise
        except LostGuestError as e:
            self.dead_reason = "QEMU exited"
            raise LostGuestError(
                e.args[0].splitlines()[0],
                console_tail=e.console_tail,
                kernel_log=self.paths.kernel_log,
                transcript=self.paths.transcript,
                splats=console_splats(self.paths.kernel_log),
            ) from None
        if check and result.status != 0:
            raise GuestCommandError(text, result.status, result.output)
        return result

    def mark_dead(self, reason: str) -> None:
        self.dead_reason = reason

    # -- the data channel ---------------------------------------------------
    def start_on_channel(
        self, argv: Sequence[str], ready_line: str, *, stderr: Path, owner: str, timeout: float = 60.0
    ) -> Channel:
        """Start `argv` in the guest with stdin/stdout on the data channel; wait for `ready_line`.

        Only one program owns the channel at a time: a running one is stopped first.
        """
        if self.launch.channel is None:
            raise ChannelError(f"the {self.launch.engine} engine guest has no data channel")
        self.stop_channel_program()
        port = self.run(FIND_PORT.format(name=CHANNEL_NAME), check=True).output.strip()
        if not port.startswith("/dev/"):
            raise ChannelError(f"virtio-serial port {CHANNEL_NAME} not found in the guest (virtio_console missing?)")
        if self._channel is None:
            self._channel = Channel(self.launch.channel)
        self._channel.connect()
        self._channel.drain()
        cmd = f"{shell_join(argv)} <>{port} >&0 2>>{shlex.quote(str(stderr))} & echo $!"
        self._channel_pid = int(self.run(cmd, check=True).output.strip().splitlines()[-1])
        try:
            line = self._channel.read_line(timeout)
        except ChannelError as e:
            err = stderr.read_text(errors="replace")[-2000:] if stderr.exists() else ""
            raise ChannelError(f"{argv[0]} did not get ready on the channel: {e}\n{err}") from None
        if line.strip() != ready_line:
            raise ChannelError(f"{argv[0]} said {line!r} instead of {ready_line!r} on the channel")
        self.channel_owner = owner
        return self._channel

    def stop_channel_program(self) -> None:
        pid, self._channel_pid = self._channel_pid, None
        self.channel_owner = None
        if pid is not None and self.alive:
            self.run(f"kill {pid} 2>/dev/null; wait {pid} 2>/dev/null; true")

    @property
    def channel(self) -> Channel | None:
        """The host end of the data channel, once a program was started on it."""
        return self._channel

    @property
    def channel_program_running(self) -> bool:
        return self._channel_pid is not None


def console_splats(kernel_log: Path, most: int = 3) -> str:
    """The first lines of the last `most` splats on a guest's kernel console file ("" if none)."""
    try:
        text = kernel_log.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(s.summary(max_lines=3) for s in find_splats(parse_lines(text))[-most:])


def new_guest_name() -> str:
    return f"knh-{secrets.token_hex(4)}"
