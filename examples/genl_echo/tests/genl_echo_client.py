"""Host side of the genl_echo sender: one persistent process per guest, on the data channel."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.errors import ChannelError
from harness.guest.channel import Channel
from harness.guest.vm import Guest

READY = "GENL_ECHO READY"  # what sender/genl_echo_send.py prints in persistent mode once it serves

# pyroute2's GenericNetlinkSocket imports asyncio: a Python start costs about
# 1 s under KVM but 5-30 s under TCG (the guest reads the interpreter's files
# over 9p), more than the default command timeout. The process starts once per guest.
START_TIMEOUT_S = 180.0
REQUEST_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class EchoResult:
    status: int  # the sender's exit status: 0 all replied, 1 an error, 2 family not found
    replies: list[dict[str, Any]]  # one {"msg", "reply"} or {"msg", "error"} per request
    output: str  # the JSON lines the command form prints, for assertion messages

    @property
    def texts(self) -> list[str | None]:
        """The reply strings, None where a request got an error."""
        return [r.get("reply") for r in self.replies]

    @property
    def errors(self) -> list[int]:
        """errno per request, 0 where a reply came back."""
        return [int(r.get("error", 0)) for r in self.replies]


class EchoClient:
    """Drives sender/genl_echo_send.py in the guest, run with the test process's Python.

    The guest shares the host's root file system (read-only), so the venv's
    interpreter and pyroute2 are there under the same paths.

    The sender runs in its persistent mode with stdin and stdout on the guest's
    data channel (Guest.start_on_channel): the first send() starts it, later
    sends, in this test and the next ones on the same guest, reuse it, one JSON
    line each way per send(). The sender resolves the family on every request,
    so the module can be loaded and unloaded between sends. One program owns
    the channel at a time: when another one took it, the next send() starts
    the sender again.
    """

    def __init__(self, guest: Guest, script: Path, python: str | None = None, *, stderr: Path | None = None,
                 timeout: float = REQUEST_TIMEOUT_S) -> None:  # fmt: skip
        self.guest = guest
        self.script = script
        # The harness's own interpreter has pyroute2 (a dev dependency) and is the guest's in the host's root;
        # a foreign architecture's root has the distribution's python3 with python3-pyroute2.
        self.python = python or (sys.executable if guest.launch.root == Path("/") else guest.python)
        self.stderr = stderr or guest.paths.run_dir / "genl_echo_send.stderr"  # the guest can write the run dir
        self.timeout = timeout
        self._owner = f"genl_echo_send:{python}:{script}"  # tells this sender from other channel programs

    def _channel(self) -> Channel:
        guest = self.guest
        if guest.channel_owner == self._owner and guest.channel_program_running and guest.channel is not None:
            return guest.channel  # started by an earlier send, maybe in an earlier test
        argv = [self.python, str(self.script), "persistent"]
        return guest.start_on_channel(argv, READY, stderr=self.stderr, owner=self._owner, timeout=START_TIMEOUT_S)

    def send(self, *messages: str, family: str | None = None, no_attr: bool = False) -> EchoResult:
        """What `genl_echo_send.py [--family NAME] [--no-attr] MSG...` would exit with and print."""
        request: dict[str, Any] = {"messages": list(messages), "no_attr": no_attr}
        if family is not None:
            request["family"] = family
        channel = self._channel()
        try:
            channel.send_line(json.dumps(request))
            answer = json.loads(channel.read_line(self.timeout))
        except (ChannelError, ValueError) as e:  # no answer, or not JSON
            # A late answer would be taken for the next request's: the next send starts a fresh sender.
            self.guest.stop_channel_program()
            raise ChannelError(f"genl_echo_send.py: {e}\n--- its stderr ---\n{self._stderr_tail()}") from None
        if "status" not in answer:
            raise ChannelError(f"genl_echo_send.py could not serve {request}: {answer.get('error', answer)}")
        replies = answer["replies"]
        return EchoResult(answer["status"], replies, "\n".join(json.dumps(r) for r in replies))

    def _stderr_tail(self) -> str:
        return self.stderr.read_text(errors="replace")[-1500:] if self.stderr.exists() else ""
