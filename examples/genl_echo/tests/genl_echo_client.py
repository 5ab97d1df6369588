"""Host side of the genl_echo sender: run it in the guest, parse its JSON lines."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.guest.vm import Guest

# pyroute2's GenericNetlinkSocket imports asyncio: a Python start costs about
# 1 s under KVM but 20-30 s under TCG on a busy machine (the guest reads the
# interpreter's files over 9p), more than the default command timeout.
SENDER_TIMEOUT_S = 180.0


@dataclass(frozen=True)
class EchoResult:
    status: int  # the sender's exit status: 0 all replied, 1 an error, 2 family not found
    replies: list[dict[str, Any]]  # one {"msg", "reply"} or {"msg", "error"} per request
    output: str

    @property
    def texts(self) -> list[str | None]:
        """The reply strings, None where a request got an error."""
        return [r.get("reply") for r in self.replies]

    @property
    def errors(self) -> list[int]:
        """errno per request, 0 where a reply came back."""
        return [int(r.get("error", 0)) for r in self.replies]


class EchoClient:
    """Runs sender/genl_echo_send.py in the guest with the test process's Python,
    once per call (all messages of a call share one process).

    The guest shares the host's root file system (read-only), so the venv's
    interpreter and pyroute2 are there under the same paths.
    """

    def __init__(
        self, guest: Guest, script: Path, python: str = sys.executable, timeout: float = SENDER_TIMEOUT_S
    ) -> None:
        self.guest = guest
        self.script = script
        self.python = python
        self.timeout = timeout

    def send(self, *messages: str, family: str | None = None, no_attr: bool = False) -> EchoResult:
        argv = [self.python, str(self.script)]
        if family is not None:
            argv += ["--family", family]
        if no_attr:
            argv.append("--no-attr")
        result = self.guest.run([*argv, "--", *messages], timeout=self.timeout)
        replies = [json.loads(line) for line in result.output.splitlines() if line.startswith("{")]
        return EchoResult(result.status, replies, result.output)
