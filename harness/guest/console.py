"""Drive a guest shell over its serial console with pexpect.

The guest shell runs without echo, readline or rc files. After its first
prompt the harness installs a prompt carrying a random token and the last exit
status (``__KNH_<token>:<status>:# ``), so a command's output is everything
before the next prompt and cannot end early because the output looks like one.
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pexpect

from harness.errors import CommandTimeout, InvalidGuestCommand, LostGuestError

READY_PROMPT = "KNH-SHELL-READY> "  # set by guest_scripts/guest-shell
MAX_COMMAND_CHARS = 3500  # the guest tty accepts at most 4095 bytes per line
_FORBIDDEN = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # \x01 would reach QEMU's monitor mux


@dataclass(frozen=True)
class CommandResult:
    command: str
    status: int
    output: str
    elapsed_s: float

    @property
    def ok(self) -> bool:
        return self.status == 0


def normalize_output(text: str) -> str:
    """Console text -> plain text: the serial line turns "\\n" into "\\r\\r\\n"."""
    return re.sub(r"\r+\n", "\n", text).replace("\r", "")


def check_command(command: str) -> None:
    if len(command) > MAX_COMMAND_CHARS:
        raise InvalidGuestCommand(
            f"guest command is {len(command)} characters; the console takes at most {MAX_COMMAND_CHARS}: "
            "put bulk data in a file under the results directory instead"
        )
    bad = _FORBIDDEN.search(command)
    if bad:
        raise InvalidGuestCommand(f"guest command contains control character {bad.group()!r}: {command[:80]!r}; "
                                  "keep it on one line (`;` between commands) and pass such bytes as printf escapes "
                                  "(\\NNN) or in a file")


class Console:
    """A prompt-synchronised shell on a pexpect child. Create, then call setup()."""

    def __init__(self, child: pexpect.spawn[str], *, token: str | None = None) -> None:
        self.child = child
        self.token = token or secrets.token_hex(8)
        self.prompt_re = re.compile(rf"__KNH_{self.token}:(\d+):# ")
        self.cont_marker = f"__KNH_{self.token}:CONT# "

    # -- low level -------------------------------------------------------
    def tail(self, chars: int = 3000) -> str:
        before = self.child.before if isinstance(self.child.before, str) else ""
        buf = self.child.buffer if isinstance(self.child.buffer, str) else ""
        return normalize_output((before + buf)[-chars:])

    def _expect(self, patterns: list[Any], timeout: float, what: str) -> int:
        try:
            return int(self.child.expect(patterns, timeout=timeout))
        except pexpect.EOF:
            raise LostGuestError(
                f"guest console closed while {what} (QEMU exited: panic or crash?)", console_tail=self.tail()
            ) from None

    # -- setup -------------------------------------------------------------
    def wait_ready(self, timeout: float) -> None:
        """Wait for the guest shell's first prompt (typing earlier loses input)."""
        idx = self._expect([READY_PROMPT, pexpect.TIMEOUT], timeout, "waiting for the guest shell")
        if idx == 1:
            raise CommandTimeout(f"no guest shell prompt within {timeout:.0f} s", console_tail=self.tail())

    def install_prompt(self, timeout: float) -> None:
        # The assignment is split ('__KNH_''token') so that even an echo of it
        # could not match the prompt pattern.
        self.child.send(f"PS1='__KNH_''{self.token}:$?:# '; PS2='__KNH_''{self.token}:CONT# '\n")
        self.wait_prompt(timeout, what="installing the prompt")

    # -- commands ----------------------------------------------------------
    def wait_prompt(self, timeout: float, what: str = "running a command") -> tuple[int, str]:
        idx = self._expect([self.prompt_re, self.cont_marker, pexpect.TIMEOUT], timeout, what)
        if idx == 1:
            self.child.send("\x03")
            self._expect([self.prompt_re, pexpect.TIMEOUT], 5, "cancelling incomplete input")
            raise InvalidGuestCommand(f"incomplete shell input while {what}: the shell waits for more (unbalanced "
                                      "quotes?); quote arguments with shlex.quote or pass an argv list")
        if idx == 2:
            raise CommandTimeout(f"timed out after {timeout:.1f} s {what}", console_tail=self.tail())
        match = self.child.match
        assert isinstance(match, re.Match)
        before = self.child.before if isinstance(self.child.before, str) else ""
        return int(match.group(1)), normalize_output(before)

    def run(self, command: str, timeout: float) -> CommandResult:
        """Run one shell command line and return its status and output."""
        check_command(command)
        start = time.monotonic()
        self.child.send(command + "\n")
        try:
            status, output = self.wait_prompt(timeout, what=f"running {command[:120]!r}")
        except CommandTimeout as e:
            recovered = self.interrupt()
            note = (
                "the command was interrupted; the guest is usable" if recovered else "the guest did not answer Ctrl-C"
            )
            err = CommandTimeout(f"{e.args[0].splitlines()[0]} ({note})", console_tail=self.tail())
            err.recovered = recovered
            raise err from None
        return CommandResult(command, status, output, time.monotonic() - start)

    def interrupt(self, timeout: float = 5.0, every: float = 1.0) -> bool:
        """Send Ctrl-C, again `every` seconds until a prompt comes back (a program may survive the
        first one, or miss it while it starts); True when the shell is back and in step."""
        deadline = time.monotonic() + timeout

        def ctrl_c() -> re.Pattern[str]:
            self.child.send("\x03")
            return self.prompt_re

        return self._until_answered(ctrl_c, deadline, every) and self._resync(max(deadline - time.monotonic(), 1.0))

    def _resync(self, timeout: float, every: float = 1.0) -> bool:
        """Skip what is left of an interrupted command: a Ctrl-C that reached the shell's own
        prompt printed one more prompt, which the next command must not take for its own. A
        marker is echoed, again `every` seconds with a new one while none comes back (a Ctrl-C
        still on its way discards the line typed before it); the last one sent is awaited,
        output of earlier ones skipped."""
        deadline = time.monotonic() + timeout

        def echo_marker() -> str:
            marker = f"KNH-SYNC-{secrets.token_hex(4)}"
            self.child.send(f"echo {marker[:4]}''{marker[4:]}\n")  # split: an echo of the line cannot match
            return marker

        if not self._until_answered(echo_marker, deadline, every):
            return False
        try:
            left = max(deadline - time.monotonic(), every)
            return self.child.expect([self.prompt_re, pexpect.TIMEOUT], timeout=left) == 0
        except pexpect.EOF:
            return False

    def _until_answered(self, send: Callable[[], str | re.Pattern[str]], deadline: float, every: float) -> bool:
        """Call `send` (it sends something and returns what answers it), again every `every` seconds
        until that answer is read; False at `deadline` or when the console closes."""
        try:
            while True:
                answer = send()
                wait = max(min(every, deadline - time.monotonic()), 0)
                if self.child.expect([answer, pexpect.TIMEOUT], timeout=wait) == 0:
                    return True
                if time.monotonic() >= deadline:
                    return False
        except pexpect.EOF:
            return False
