"""The guest half of the fuzzer: send frames made on the host and collect what they caused.

The host generates the frames (harness/knetlink/fuzz_model.py, Hypothesis on the
host's CPU) and ships them in batches to the persistent sender (nl_send.py,
request ``{"op": "frames"}``), which calls :func:`run_frames`:

  * each frame goes out as one datagram, then a *fence*: an NLMSG_NOOP with
    NLM_F_REQUEST | NLM_F_ACK and no payload, on the same socket. The module
    acks a control message with NLM_F_ACK and prints nothing for it;
  * replies are read until the fence's ack arrives. Netlink delivers a
    socket's replies in order, so by then every ack the frame could produce
    is in: no waiting for acks that should not come;
  * after the batch, the new kernel log records starting with ``link:`` are
    read from /dev/kmsg, as /dev/kmsg prints them (backslashes and control
    characters as ``\\xHH``): one read per record and none per frame. The
    host splits them between the frames with its model;
  * the module's stat_* counters are read before and after the batch.

The fence's ack is recognised by its whole echoed header (type, flags, seq,
pid); its sequence number is chosen so that the header does not occur in the
frame. Nothing is judged here: the host compares the replies with its model.

Standard library only, imported by nl_send.py on the first frames request.
"""

from __future__ import annotations

import errno
import os
import struct
import time

from nlframes import NLM_F_ACK, NLM_F_REQUEST, NLMSG_ERROR, NLMSG_HDRLEN, NLMSG_NOOP
from nlsocket import NetlinkSocket, SocketError

TYPE_CHECKING = False
if TYPE_CHECKING:
    Reply = list[int | None] | str  # [type, seq, errno, echoed nlmsg_len], or "overrun" / "truncated"

FENCE_TYPE = NLMSG_NOOP
FENCE_FLAGS = NLM_F_REQUEST | NLM_F_ACK
FENCE_PID = 0x4B4E4846  # any value: the fence's ack is matched on its whole echoed header
STAT_NAMES = ("received", "printed", "acked", "errors")
KMSG_RECORD_MAX = 16384

_HDR = struct.Struct("=IHHII")
_ACK = struct.Struct("=IHHIIiIHHII")  # nlmsghdr, nlmsgerr.error, the echoed nlmsghdr
_ERRNO = struct.Struct("=IHHIIi")


class KmsgTail:
    """The kernel log records written after :meth:`open`, read without blocking."""

    def __init__(self, prefix: bytes = b"link:") -> None:
        self.prefix = prefix
        self.fd = -1

    def open(self) -> None:
        try:
            self.fd = os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK)
            os.lseek(self.fd, 0, os.SEEK_END)
        except OSError as exc:
            self.close()
            raise SocketError(f"/dev/kmsg: {exc}") from exc

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def lines(self) -> list[str]:
        """Texts of the new records that start with the prefix, in order."""
        out: list[str] = []
        read, fd, prefix = os.read, self.fd, self.prefix
        while True:
            try:
                record = read(fd, KMSG_RECORD_MAX)
            except BlockingIOError:
                return out
            except OSError as exc:
                if exc.errno == errno.EPIPE:  # records overwritten before they were read
                    out.append("<kmsg: records lost>")
                    continue
                raise SocketError(f"/dev/kmsg: {exc}") from exc
            # "prio,seq,usec,flags[,...];text\n" then optional " KEY=value" lines
            text = record[record.find(b";") + 1 :]
            text = text[: text.find(b"\n")] if b"\n" in text else text
            if text.startswith(prefix):
                out.append(text.decode("ascii", "backslashreplace"))


def read_stats(stats_dir: str | None) -> dict[str, int] | None:
    """The module's stat_* counters from its parameter directory (None without one)."""
    if not stats_dir:
        return None
    stats: dict[str, int] = {}
    for name in STAT_NAMES:
        with open(f"{stats_dir}/stat_{name}", "rb") as f:
            stats[name] = int(f.read())
    return stats


def decode_replies(data: memoryview, replies: list[Reply], fence: bytes) -> bool:
    """Append every message of one received datagram to ``replies``; True once the fence's ack was seen.

    Anything after the fence's ack in the same datagram is kept too (the host
    sees it as a reply the frame did not cause).
    """
    total = len(data)
    off = 0
    fenced = False
    while total - off >= NLMSG_HDRLEN:
        length, mtype, _flags, seq, _pid = _HDR.unpack_from(data, off)
        if length < NLMSG_HDRLEN or length > total - off:
            replies.append("truncated")
            break
        if mtype == NLMSG_ERROR and length >= _ACK.size:
            fields = _ACK.unpack_from(data, off)
            if not fenced and fields[5] == 0 and data[off + 20 : off + 36] == fence:
                fenced = True
            else:
                replies.append([mtype, seq, abs(fields[5]), fields[6]])
        elif mtype == NLMSG_ERROR and length >= _ERRNO.size:
            replies.append([mtype, seq, abs(_ERRNO.unpack_from(data, off)[5]), None])
        else:
            replies.append([mtype, seq, None, None])
        off += (length + 3) & ~3
    return fenced


def _fence_for(sock: NetlinkSocket, frame: bytes) -> bytes:
    while True:
        fence = _HDR.pack(NLMSG_HDRLEN, FENCE_TYPE, FENCE_FLAGS, sock.take_seq(), FENCE_PID)
        if fence not in frame:
            return fence


def run_frames(sock: NetlinkSocket, frames: list[bytes], *, links: bool = True,
               stats_dir: str | None = None) -> dict[str, object]:  # fmt: skip
    """Send each frame followed by its fence; the replies to each, and the link lines and counters of the batch.

    A fence whose ack does not come within the socket's receive timeout ends
    the batch: "stopped" names the frame, and the socket is reopened so that
    late replies cannot be taken for the next batch's.
    """
    kmsg = KmsgTail() if links else None
    nl = sock.open()
    sock.drain()
    if kmsg is not None:
        kmsg.open()
    send, recv_into, buf, view = nl.send, nl.recv_into, sock.buf, sock.view
    results: list[list[Reply]] = []
    stopped: dict[str, object] | None = None
    try:
        before = read_stats(stats_dir)
        start = time.perf_counter()
        for index, frame in enumerate(frames):
            fence = _fence_for(sock, frame)
            replies: list[Reply] = []
            results.append(replies)
            try:
                send(frame)
                send(fence)
            except OSError as exc:
                sock.close()
                raise SocketError(f"socket: send: {exc}") from exc
            while True:
                try:
                    n = recv_into(buf)
                except OSError as exc:
                    if exc.errno == errno.ENOBUFS:
                        replies.append("overrun")
                        continue
                    stopped = {"index": index, "error": f"no ack for the fence: {exc}"}
                    break
                if decode_replies(view[:n], replies, fence):
                    break
            if stopped is not None:
                sock.close()
                break
        # The module prints in the sender's context, before it acks: the batch's lines are all in.
        lines = kmsg.lines() if kmsg is not None else []
        elapsed = time.perf_counter() - start
        after = read_stats(stats_dir)
    finally:
        if kmsg is not None:
            kmsg.close()
    return {"frames": results, "links": lines, "stats_before": before, "stats_after": after, "stopped": stopped,
            "elapsed_s": round(elapsed, 6)}  # fmt: skip
