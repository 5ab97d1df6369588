#!/usr/bin/env python3
"""Send messages to the knetlink module from inside a guest.

    nl_send.py [--proto N] send MSG...
        one JSON line per message: {"seq": n, "error": e, "len": payload_len}
        exit 0 if every error is 0, 1 otherwise, 2 if the socket cannot be
        opened.

    nl_send.py [--proto N] persistent
        prints "NLSEND READY", then answers JSON requests read from stdin,
        one per line, with exactly one JSON line each (see docs/module.md).
        {"op": "frames", "hex": [frame, ...]} sends ready-made frames, each
        followed by a fence, for the host's fuzzer (see fuzz_frames.py).

"error" values in acks are errno numbers made non-negative (0 = success,
1 = EPERM, 22 = EINVAL, 110 = no ack before the timeout).  Standard output
carries only ASCII JSON (plus the READY line); diagnostics go to stderr.

Standard library only: it starts in a few hundred milliseconds even where the
guest reads the interpreter's files slowly.
"""

from __future__ import annotations

import argparse
import errno
import itertools
import json
import os
import struct
import sys
import time

import nlframes
from nlframes import NLM_F_ACK, NLM_F_CAPPED, NLM_F_REQUEST, NLMSG_ERROR
from nlsocket import RECV_TIMEOUT_S, NetlinkSocket, SocketError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from nlframes import Ack

    Request = dict[str, object]
    Response = dict[str, object]

DEFAULT_FLAGS = NLM_F_REQUEST | NLM_F_ACK
DEFAULT_WAIT_MS = int(RECV_TIMEOUT_S * 1000)


class RequestError(Exception):
    """A request field has the wrong type or is out of range."""


def emit(obj: Mapping[str, object]) -> None:
    sys.stdout.write(json.dumps(obj, ensure_ascii=True, separators=(",", ":")) + "\n")
    sys.stdout.flush()


# ---- request handlers ---------------------------------------------------


def _int_field(req: Mapping[str, object], name: str, default: int, maximum: int) -> int:
    value = req.get(name, default)
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= maximum:
        raise RequestError(f'"{name}" must be an integer 0..{maximum}')
    return value


def _short(ack: Ack) -> Ack:
    short: Ack = {}
    if "seq" in ack:
        short["seq"] = ack["seq"]
    if "error" in ack:
        short["error"] = ack["error"]
    if "type" in ack:
        short["type"] = ack["type"]
    return short


def _acks(req: Request, acks: list[Ack]) -> list[Ack]:
    """The acks as returned: only seq, error and type unless the request says "full"."""
    return acks if req.get("full") else [_short(ack) for ack in acks]


def _receive(sock: NetlinkSocket, req: Request, expect: int, wait_ms: int) -> list[Ack]:
    return sock.receive(_int_field(req, "expect", expect, 1 << 20), _int_field(req, "wait_ms", wait_ms, 600000) / 1000)


def send_one(sock: NetlinkSocket, req: Request) -> tuple[int, int, list[Ack]]:
    """Send one message built from a payload spec: (seq, payload length, acks)."""
    payload = nlframes.build_payload(req)
    seq = sock.take_seq() if req.get("seq") is None else _int_field(req, "seq", 0, 0xFFFFFFFF)
    frame = nlframes.encode_message(
        payload,
        type=_int_field(req, "type", 0, 0xFFFF),
        flags=_int_field(req, "flags", DEFAULT_FLAGS, 0xFFFF),
        seq=seq,
        nul=bool(req.get("nul", False)),
        seed_len=bool(req.get("seed_len", False)),
    )
    sock.send(frame)
    return seq, len(payload), _receive(sock, req, 1, DEFAULT_WAIT_MS)


def op_send(sock: NetlinkSocket, req: Request) -> Response:
    seq, length, acks = send_one(sock, req)
    resp: Response = {"acks": _acks(req, acks), "seq": seq, "len": length}
    if not acks:
        resp["timeout"] = True
    return resp


def op_batch(sock: NetlinkSocket, req: Request) -> Response:
    messages = req.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError('"messages" must be a non-empty list')
    datagram, seqs = nlframes.encode_batch(messages, first_seq=sock.take_seq(len(messages)))
    sock.send(datagram)
    acks = _receive(sock, req, len(messages), DEFAULT_WAIT_MS)
    return {"acks": _acks(req, acks), "seqs": seqs, "bytes": len(datagram)}


def op_raw(sock: NetlinkSocket, req: Request) -> Response:
    hex_text = req.get("hex", "")
    if not isinstance(hex_text, str):
        raise RequestError('"hex" must be a string')
    try:
        datagram = bytes.fromhex(hex_text)
    except ValueError as exc:
        raise RequestError(f"bad hex: {exc}") from exc
    sock.send(datagram)
    acks = _receive(sock, req, 1, 200)
    return {"acks": acks, "bytes": len(datagram)}


# The success ack of one message: header, error 0, the request's header echoed (NLM_F_CAPPED: no payload).
_ACK_HEAD = struct.Struct("=IHHIIi")
ACK_LEN = _ACK_HEAD.size + nlframes.NLMSG_HDRLEN


def op_bench(sock: NetlinkSocket, req: Request) -> Response:
    """``count`` round trips of one message, each: send it, receive its ack, check the ack.

    What knl_send -n does, in the same syscalls (one write, one read per
    message). A reply is first compared byte for byte with the success ack
    the kernel builds for this message (length, NLMSG_ERROR, NLM_F_CAPPED,
    the sequence number, our port id, error 0, the request's header); anything
    else is decoded by _bench_ack, which waits for the message's own ack and
    counts it as an error unless its errno is 0. The frame and the expected
    ack share one buffer (the ack echoes the request's header), so a message
    costs two stores of its sequence number and no allocation.
    """
    count = _int_field(req, "count", 1000, 100000000)
    frame = nlframes.encode_message(
        nlframes.build_payload(req),
        type=_int_field(req, "type", 0, 0xFFFF),
        flags=_int_field(req, "flags", DEFAULT_FLAGS, 0xFFFF),
        seed_len=bool(req.get("seed_len", False)),
    )
    nl = sock.open()
    sock.drain()
    portid = nl.getsockname()[0]
    region = bytearray(_ACK_HEAD.pack(ACK_LEN, NLMSG_ERROR, NLM_F_CAPPED, 0, portid, 0) + frame)
    words = memoryview(region).cast("I")  # words[2]: the ack's seq, words[7]: the echoed (and sent) seq
    ack = memoryview(region)[:ACK_LEN]
    msg = memoryview(region)[_ACK_HEAD.size :]
    head = bytearray(ACK_LEN)
    bufs = [head, sock.buf]
    fd = nl.fileno()
    write, readv = os.write, os.readv
    first = sock.take_seq(count)
    end = first + count
    seqs = range(first, end) if end <= 1 << 32 else itertools.chain(range(first, 1 << 32), range(end - (1 << 32)))
    errors = 0
    start = time.perf_counter()
    for seq in seqs:
        words[2] = words[7] = seq
        try:
            write(fd, msg)
        except OSError as exc:
            sock.close()
            raise SocketError(f"socket: send: {exc}") from exc
        try:
            n = readv(fd, bufs)
        except OSError as exc:
            n = -(exc.errno or errno.EIO)
        if n != ACK_LEN or head != ack:
            errors += _bench_ack(fd, bufs, seq, n) != 0
    elapsed = time.perf_counter() - start
    return {
        "count": count,
        "errors": errors,
        "bytes": len(frame),
        "elapsed_s": round(elapsed, 6),
        "rate": round(count / elapsed, 1) if elapsed > 0 else None,
    }


def _bench_ack(fd: int, bufs: list[bytearray], seq: int, n: int) -> int:
    """The errno of message ``seq``'s ack (0 = success), given that a read into
    ``bufs`` returned ``n`` (-errno: it failed) and was not the expected ack.

    Decodes what came, then reads on until that ack: replies to other
    sequence numbers are skipped, an overrun (ENOBUFS) reads on, a read that
    times out (SO_RCVTIMEO) is ETIMEDOUT.
    """
    while True:
        if n == -errno.EAGAIN:
            return errno.ETIMEDOUT
        if n < 0 and n != -errno.ENOBUFS:
            return -n
        if n > 0:
            head, tail = bufs
            data = bytes(head[:n]) + bytes(tail[: max(0, n - len(head))])
            for reply in nlframes.decode_acks(data):
                if reply.get("type") == NLMSG_ERROR and reply.get("seq") == seq:
                    error = reply.get("error")
                    return errno.EBADMSG if error is None else int(error)
        try:
            n = os.readv(fd, bufs)
        except OSError as exc:
            n = -(exc.errno or errno.EIO)


def op_frames(sock: NetlinkSocket, req: Request) -> Response:
    """Frames made on the host, each followed by a fence (fuzz_frames.run_frames)."""
    import fuzz_frames  # only the fuzzer needs it: other senders start without it

    hex_frames = req.get("hex")
    if not isinstance(hex_frames, list) or not all(isinstance(h, str) and h for h in hex_frames):
        raise RequestError('"hex" must be a list of hex strings, one per frame (none empty)')
    stats_dir = req.get("stats")
    if stats_dir is not None and not isinstance(stats_dir, str):
        raise RequestError('"stats" must be a directory name')
    try:
        frames = [bytes.fromhex(h) for h in hex_frames]
    except ValueError as exc:
        raise RequestError(f"bad hex: {exc}") from exc
    return fuzz_frames.run_frames(sock, frames, links=bool(req.get("links", True)), stats_dir=stats_dir)


def op_close(sock: NetlinkSocket, req: Request) -> Response:
    """Close the netlink socket; the next request opens a new one (see NetlinkSocket.close)."""
    sock.close()
    return {"closed": True}


OPS: dict[str, Callable[[NetlinkSocket, Request], Response]] = {
    "send": op_send,
    "batch": op_batch,
    "raw": op_raw,
    "bench": op_bench,
    "frames": op_frames,
    "close": op_close,
}


def handle(sock: NetlinkSocket, line: str) -> Response | None:
    """The response to one request line; None for {"op": "quit"}."""
    try:
        req = json.loads(line)
    except ValueError as exc:
        return {"error": f"bad json: {exc}"}
    if not isinstance(req, dict):
        return {"error": "request must be a JSON object"}
    op = req.get("op")
    if op == "quit":
        return None
    func = OPS.get(op) if isinstance(op, str) else None
    if func is None:
        return {"error": f"unknown op: {op!r}"}
    try:
        return func(sock, req)
    except SocketError as exc:
        return {"error": str(exc)}
    except (RequestError, nlframes.FrameError) as exc:
        return {"error": f"bad request: {exc}"}
    except Exception as exc:  # keep serving; report instead of dying
        return {"error": f"internal: {type(exc).__name__}: {exc}"}


def run_persistent(sock: NetlinkSocket) -> int:
    sys.stdout.write("NLSEND READY\n")
    sys.stdout.flush()
    while True:
        line = sys.stdin.readline()
        if not line:
            return 0  # EOF
        line = line.strip()
        if not line:
            continue  # blank lines are not requests
        resp = handle(sock, line)
        if resp is None:
            return 0  # {"op": "quit"}
        emit(resp)


def run_send(sock: NetlinkSocket, messages: list[str]) -> int:
    try:
        sock.open()
    except SocketError as exc:
        sys.stderr.write(f"{exc}\n")
        return 2
    status = 0
    for text in messages:
        try:
            seq, length, acks = send_one(sock, {"text": text})
        except SocketError as exc:
            sys.stderr.write(f"{exc}\n")
            emit({"seq": None, "error": errno.EIO, "len": None})
            status = 1
            continue
        mine = [a for a in acks if a.get("type") == NLMSG_ERROR and a.get("seq") == seq]
        err = mine[0].get("error") if mine else errno.ETIMEDOUT
        if err:
            status = 1
        emit({"seq": seq, "error": err, "len": length})
    return status


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="knetlink test sender")
    parser.add_argument(
        "--proto", type=int, default=nlframes.DEFAULT_PROTO, help="netlink protocol (default %(default)s)"
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_send = sub.add_parser("send", help="send each MSG, print one JSON line per ack")
    p_send.add_argument("messages", nargs="+", metavar="MSG")
    sub.add_parser("persistent", help="serve JSON requests from stdin")
    args = parser.parse_args(argv)
    if not 0 <= args.proto <= 31:
        parser.error("--proto must be 0..31")

    sock = NetlinkSocket(args.proto)
    try:
        if args.cmd == "send":
            return run_send(sock, args.messages)
        return run_persistent(sock)
    except KeyboardInterrupt:
        return 130
    finally:
        sock.close()


if __name__ == "__main__":
    sys.exit(main())
