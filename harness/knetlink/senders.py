"""Host-side clients of the in-guest senders.

PySender keeps one `guest_scripts/nl_send.py persistent` process in the guest,
attached to the virtio-serial data channel, and exchanges one JSON line per
request, so a message costs a channel round trip instead of a Python start. Its
frames() request ships a batch of ready-made frames (the fuzzer's) and returns
what each one caused. CSender runs the C sender (`knl_send`) as a normal guest command.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.config import GUEST_SCRIPTS
from harness.errors import ChannelError, HarnessError
from harness.guest.channel import Channel
from harness.guest.vm import Guest, guest_python  # noqa: F401 (guest_python: its old home)

READY = "NLSEND READY"
C_SENDER = "sender/knl_send"  # built by module/Makefile's default goal, relative to the module directory


@dataclass(frozen=True)
class Ack:
    """One netlink ack: the request's sequence number and the errno (0 = success)."""

    seq: int
    error: int


class SenderError(HarnessError):
    """The sender reported an error instead of acks."""


Reply = tuple[int | None, int | None, int | None, int | None] | str
"""A reply to a frame: (type, seq, errno, echoed nlmsg_len), or "overrun" (the kernel dropped
replies) or "truncated" (a reply cut short)."""

FENCE_STATS: dict[str, int] = {"received": 1, "acked": 1}
"""What each fence of a frames request adds to the module's stat_* counters: the module counts a
control message (the fence is an NLMSG_NOOP) and acks it when it asks for NLM_F_ACK."""


@dataclass(frozen=True)
class FrameBatch:
    """The sender's answer to a frames request (see guest_scripts/fuzz_frames.py)."""

    replies: list[list[Reply]]  # per frame, the replies before its fence's ack
    links: list[str]  # the kernel log's new link: records, as /dev/kmsg prints them
    stats_before: dict[str, int] | None
    stats_after: dict[str, int] | None
    stopped: str | None  # why the batch ended early (a fence's ack did not come), with the frame's index
    guest_s: float  # the sender's time for the batch


def _reply(item: Any) -> Reply:
    if isinstance(item, str):
        return item
    mtype, seq, error, orig_len = item
    return (mtype, seq, error, orig_len)


def parse_frame_batch(reply: dict[str, Any]) -> FrameBatch:
    if "error" in reply and "frames" not in reply:
        raise SenderError(f"sender error: {reply['error']}")
    stopped = reply.get("stopped")
    return FrameBatch(
        replies=[[_reply(r) for r in replies] for replies in reply["frames"]],
        links=list(reply.get("links", [])),
        stats_before=reply.get("stats_before"),
        stats_after=reply.get("stats_after"),
        stopped=None if stopped is None else f"frame {stopped['index']}: {stopped['error']}",
        guest_s=float(reply.get("elapsed_s", 0.0)),
    )


def parse_acks(reply: dict[str, Any]) -> list[Ack]:
    if "error" in reply and "acks" not in reply:
        raise SenderError(f"sender error: {reply['error']}")
    return [Ack(int(a["seq"]), int(a["error"])) for a in reply.get("acks", [])]


class PySender:
    """The persistent Python sender in the guest, on the virtio-serial data channel.

    One sender process per guest and protocol lives across tests: starting
    Python in a TCG guest costs a second or more. Between tests
    it closes its netlink socket ("close" request), because an open socket of
    the module's protocol holds a reference on the module and rmmod would fail.
    """

    def __init__(self, guest: Guest, proto: int, *, stderr: Path, python: str | None = None,
                 script: Path | None = None) -> None:  # fmt: skip
        self.guest = guest
        self.proto = proto
        self.stderr = stderr
        self.python = python or guest.python
        self.script = script or GUEST_SCRIPTS / "nl_send.py"
        self._owner = f"nl_send:{self.proto}:{self.python}:{self.script}"
        self._channel: Channel | None = None

    def _ensure(self) -> Channel:
        running = self.guest.channel if self.guest.channel_owner == self._owner else None
        if running is not None and self.guest.channel_program_running:
            self._channel = running  # the sender an earlier test started: reuse it
        else:
            argv = [self.python, str(self.script), "--proto", str(self.proto), "persistent"]
            self._channel = self.guest.start_on_channel(argv, READY, stderr=self.stderr, owner=self._owner, timeout=180)
        return self._channel

    def start(self) -> None:
        """Start the sender in the guest now (or find the running one), so that no timed request pays for it."""
        self._ensure()

    def request(self, obj: dict[str, Any], timeout: float = 60.0) -> dict[str, Any]:
        channel = self._ensure()
        channel.send_line(json.dumps(obj, separators=(",", ":")))
        try:
            reply = json.loads(channel.read_line(timeout))
        except ChannelError as e:
            err = self.stderr.read_text(errors="replace")[-1500:] if self.stderr.exists() else ""
            raise SenderError(f"{e}\n--- sender stderr ---\n{err}") from None
        if not isinstance(reply, dict):
            raise SenderError(f"sender replied {reply!r}")
        return reply

    def send(self, text: str | None = None, *, data: bytes | None = None, **fields: Any) -> list[Ack]:
        """Send one message (text, or raw payload bytes) and return its acks."""
        req: dict[str, Any] = {"op": "send", **fields}
        if data is not None:
            req["hex"] = data.hex()
        elif text is not None:
            req["text"] = text
        return parse_acks(self.request(req))

    def batch(self, messages: Sequence[dict[str, Any]]) -> list[Ack]:
        """Several messages in one datagram."""
        return parse_acks(self.request({"op": "batch", "messages": list(messages)}))

    def raw(self, datagram: bytes, *, expect: int = 1, wait_ms: int = 200) -> list[Ack]:
        """A hand-made (possibly malformed) datagram; collects up to `expect` acks."""
        return parse_acks(self.request({"op": "raw", "hex": datagram.hex(), "expect": expect, "wait_ms": wait_ms}))

    def frames(self, frames: Sequence[bytes], *, stats: str | None = None, links: bool = True) -> FrameBatch:
        """Send each frame as one datagram followed by a fence; collect its replies, and the batch's link lines.

        ``stats`` is the module's parameter directory (/sys/module/NAME/parameters): the
        sender reads its stat_* counters before and after the batch.
        """
        req = {"op": "frames", "hex": [f.hex() for f in frames], "stats": stats, "links": links}
        return parse_frame_batch(self.request(req, timeout=max(60.0, len(frames) * 0.05)))

    def bench(self, count: int, text: str = "bench") -> dict[str, Any]:
        """``count`` send/ack round trips of the frame ``knl_send -n count text`` sends (nlmsg_len
        NLMSG_SPACE(len(text)), the payload NUL-padded): {"count", "errors", "bytes", "elapsed_s", "rate"}."""
        request = {"op": "bench", "count": count, "text": text, "seed_len": True}
        return self.request(request, timeout=max(60.0, count / 500))

    def release(self) -> None:
        """Close the sender's netlink socket (the process stays for the next test)."""
        if self._channel is not None and self.guest.alive and self.guest.channel_owner == self._owner:
            reply = self.request({"op": "close"})
            if "error" in reply:
                raise SenderError(f"sender could not close its socket: {reply['error']}")

    def stop(self) -> None:
        if self.guest.alive and self.guest.channel_owner == self._owner:
            self.guest.stop_channel_program()


_ACK_LINE = re.compile(r"^ack seq=(\d+) error=(\d+)$", re.M)
_SUMMARY = re.compile(r"sent=(\d+) acked=(\d+) failed=(\d+) elapsed_us=(\d+)")


@dataclass(frozen=True)
class CSendResult:
    status: int
    acks: list[Ack]
    output: str

    def summary(self) -> dict[str, int] | None:
        m = _SUMMARY.search(self.output)
        if not m:
            return None
        return dict(zip(("sent", "acked", "failed", "elapsed_us"), map(int, m.groups()), strict=True))


class CSender:
    """The C sender built next to the module (module/sender/knl_send.c)."""

    def __init__(self, guest: Guest, binary: Path, proto: int) -> None:
        self.guest = guest
        self.binary = binary
        self.proto = proto

    def send(self, *messages: str, count: int | None = None, quiet: bool = False) -> CSendResult:
        argv = [str(self.binary), "-p", str(self.proto)]
        if count is not None:
            argv += ["-n", str(count)]
        if quiet:
            argv.append("-q")
        result = self.guest.run([*argv, "--", *messages])
        acks = [Ack(int(s), int(e)) for s, e in _ACK_LINE.findall(result.output)]
        return CSendResult(result.status, acks, result.output)
