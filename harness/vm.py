"""Own one guest: start virtme-ng on a pty, hand out its console, never leak QEMU.

Layout of a guest's run directory (under the results directory):
    console.log      everything the interactive console printed (transcript)
    kernel.log       the guest kernel's console (hvc0): oopses and panics survive here
    vng-argv.txt     the exact command that started the guest
"""

from __future__ import annotations

import ctypes
import os
import secrets
import shlex
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO

import pexpect

from .cmdline import VngSpec, shell_join, vng_argv
from .console import CommandResult, Console
from .errors import BootError, GuestCommandError, GuestError, HarnessError, LostGuestError

_PR_SET_PDEATHSIG = 1


def _child_setup(kernel_log: str) -> None:
    """Runs in the forked child before exec: stderr (the guest kernel console) to a file,
    and die with the parent. QEMU itself is a grandchild; it goes away on the pty hangup
    that the parent's death causes, and on close() via the process group."""
    fd = os.open(kernel_log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 2)
    os.close(fd)
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError:
        pass


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

    def __init__(self, spec: VngSpec, run_dir: Path, *, command_timeout: float = 60.0) -> None:
        self.spec = spec
        self.paths = GuestPaths(run_dir)
        self.command_timeout = command_timeout
        self.boot_time_s: float | None = None
        self._child: pexpect.spawn | None = None
        self._console: Console | None = None
        self._transcript: IO[str] | None = None
        self._foreground: str | None = None  # description of a running foreground program
        self.dead_reason: str | None = None

    # -- lifecycle ---------------------------------------------------------
    def start(self, boot_timeout: float) -> None:
        self.paths.run_dir.mkdir(parents=True, exist_ok=True)
        argv = vng_argv(self.spec)
        (self.paths.run_dir / "vng-argv.txt").write_text(shlex.join(argv) + "\n")
        env = dict(os.environ)
        # virtme-ng starts its helpers (virtme-run) through PATH: keep its own bin dir first.
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
            raise BootError(f"could not start {argv[0]}: {e}", kernel_log=self.paths.kernel_log) from None
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
                f"guest {self.spec.name} ({self.spec.kernel.release}, {self.spec.accel}) did not boot: {e.args[0].splitlines()[0]}",
                console_tail=e.console_tail, kernel_log=self.paths.kernel_log, transcript=self.paths.transcript,
            ) from None
        except BaseException:
            self.close()
            raise
        self.boot_time_s = time.monotonic() - start

    @property
    def alive(self) -> bool:
        return self._child is not None and self._child.isalive() and self.dead_reason is None

    @property
    def pid(self) -> int | None:
        return self._child.pid if self._child is not None else None

    def close(self) -> None:
        """Stop the guest: kill QEMU and virtme-ng (the whole process group)."""
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
                kernel_log=self.paths.kernel_log, transcript=self.paths.transcript,
            )
        return self._console

    def run(
        self, command: Sequence[str] | str, *, timeout: float | None = None, check: bool = False
    ) -> CommandResult:
        """Run a command in the guest shell. An argv list is quoted; a string is shell syntax."""
        text = command if isinstance(command, str) else shell_join(command)
        self.end_foreground()
        try:
            result = self.console.run(text, timeout or self.command_timeout)
        except LostGuestError as e:
            self.dead_reason = "QEMU exited"
            raise LostGuestError(
                e.args[0].splitlines()[0], console_tail=e.console_tail,
                kernel_log=self.paths.kernel_log, transcript=self.paths.transcript,
            ) from None
        if check and result.status != 0:
            raise GuestCommandError(text, result.status, result.output)
        return result

    def mark_dead(self, reason: str) -> None:
        self.dead_reason = reason

    # -- foreground programs (e.g. a persistent sender reading the console) --
    def start_foreground(self, argv: Sequence[str], ready_pattern: str, timeout: float | None = None) -> str:
        """Start a program that talks line by line over the console; returns its ready line."""
        self.end_foreground()
        console = self.console
        console.start(shell_join(argv))
        self._foreground = shell_join(argv)
        try:
            return console.expect_line(ready_pattern, timeout or self.command_timeout, f"starting {argv[0]}").group(1)
        except HarnessError:
            self._foreground = None
            console.interrupt()
            raise

    def foreground_request(self, line: str, reply_pattern: str, timeout: float | None = None) -> str:
        if self._foreground is None:
            raise HarnessError("no foreground program is running in the guest")
        self.console.send_line(line)
        return self.console.expect_line(reply_pattern, timeout or self.command_timeout, "waiting for a reply").group(1)

    @property
    def foreground_active(self) -> bool:
        return self._foreground is not None

    def end_foreground(self, quit_line: str | None = None) -> None:
        """Stop the foreground program (with `quit_line`, else end of input) and get the shell back."""
        if self._foreground is None:
            return
        self._foreground = None
        console = self.console
        console.child.send((quit_line + "\n") if quit_line else "\x04")
        try:
            console.wait_prompt(self.command_timeout, what="ending a foreground program")
        except GuestError:
            if not console.interrupt():
                self.dead_reason = "guest stopped answering"
                raise


def new_guest_name() -> str:
    return f"knh-{secrets.token_hex(4)}"
