"""Netlink frame helpers for talking to the knetlink module.

Pure functions only: nothing here opens sockets or touches the system, so
the module imports cleanly on the host (unit tests) and in the guest
(nl_send.py, fuzz_frames.py). Messages are plain ``struct`` layouts of
<linux/netlink.h>: :func:`encode_message` builds well-formed ones,
:func:`encode_header` deliberately malformed ones, :func:`decode_acks` reads
what the kernel sends back.

It also carries a Python model of what the module prints for a payload
(:func:`expected_link_line`), so tests can predict the kernel log.
"""

from __future__ import annotations

import struct

from payload import escape_payload

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs an import in a slow guest: annotations only
    from collections.abc import Mapping, Sequence
    from typing import TypedDict

    class Ack(TypedDict, total=False):
        """One decoded message of a received datagram (see :func:`decode_acks`)."""

        type: int | None
        seq: int
        flags: int
        pid: int
        len: int
        error: int | None
        orig_len: int
        orig_type: int
        orig_flags: int
        orig_seq: int
        orig_pid: int
        truncated: bool
        offset: int
        overrun: bool


__all__ = [
    "DEFAULT_PRINT_MAX",
    "DEFAULT_PROTO",
    "NLMSG_ALIGNTO",
    "NLMSG_DONE",
    "NLMSG_ERROR",
    "NLMSG_HDRLEN",
    "NLMSG_MIN_TYPE",
    "NLMSG_NOOP",
    "NLMSG_OVERRUN",
    "NLM_F_ACK",
    "NLM_F_ACK_TLVS",
    "NLM_F_CAPPED",
    "NLM_F_ECHO",
    "NLM_F_MULTI",
    "NLM_F_REQUEST",
    "PRINT_MAX_LIMIT",
    "FrameError",
    "build_payload",
    "decode_acks",
    "encode_batch",
    "encode_header",
    "encode_message",
    "escape_payload",
    "expected_link_line",
    "nlmsg_align",
    "nlmsg_length",
    "nlmsg_space",
    "split_messages",
    "visible_payload",
]

# <linux/netlink.h>
NLMSG_ALIGNTO = 4
NLMSG_HDRLEN = 16
NLMSG_NOOP = 0x1
NLMSG_ERROR = 0x2
NLMSG_DONE = 0x3
NLMSG_OVERRUN = 0x4
NLMSG_MIN_TYPE = 0x10

NLM_F_REQUEST = 0x01
NLM_F_MULTI = 0x02
NLM_F_ACK = 0x04
NLM_F_ECHO = 0x08
NLM_F_CAPPED = 0x100  # on acks: original payload not echoed
NLM_F_ACK_TLVS = 0x200  # on acks: extended ack TLVs follow

# knetlink module defaults (module/knetlink.c)
DEFAULT_PROTO = 21
DEFAULT_PRINT_MAX = 128
PRINT_MAX_LIMIT = 200

_HDR = struct.Struct("=IHHII")  # struct nlmsghdr: len, type, flags, seq, pid (native byte order)
_ERR = struct.Struct("=i")  # struct nlmsgerr.error
_ERR_ORIG = struct.Struct("=iIHHII")  # struct nlmsgerr: error + the request's nlmsghdr
_U32_MAX = 0xFFFFFFFF
_U16_MAX = 0xFFFF


class FrameError(ValueError):
    """Raised for arguments that cannot be encoded."""


def nlmsg_align(n: int) -> int:
    """NLMSG_ALIGN(): round up to a multiple of 4."""
    return (n + NLMSG_ALIGNTO - 1) & ~(NLMSG_ALIGNTO - 1)


def nlmsg_length(n: int) -> int:
    """NLMSG_LENGTH(): header plus n payload bytes, unpadded."""
    return n + NLMSG_HDRLEN


def nlmsg_space(n: int) -> int:
    """NLMSG_SPACE(): header plus n payload bytes, padded."""
    return nlmsg_align(nlmsg_length(n))


def _check_range(name: str, value: object, maximum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise FrameError(f"{name} must be an integer, got {value!r}")
    if not 0 <= value <= maximum:
        raise FrameError(f"{name}={value} out of range 0..{maximum}")


def encode_header(length: int, type: int = 0, flags: int = 0, seq: int = 0, pid: int = 0) -> bytes:
    """Raw 16-byte nlmsghdr with arbitrary (possibly lying) length.

    For malformed test frames; well-formed messages use encode_message().
    """
    _check_range("length", length, _U32_MAX)
    _check_range("type", type, _U16_MAX)
    _check_range("flags", flags, _U16_MAX)
    _check_range("seq", seq, _U32_MAX)
    _check_range("pid", pid, _U32_MAX)
    return _HDR.pack(length, type, flags, seq, pid)


def encode_message(
    payload: bytes | str,
    type: int = 0,
    flags: int = NLM_F_REQUEST | NLM_F_ACK,
    seq: int = 0,
    pid: int = 0,
    nul: bool = False,
    seed_len: bool = False,
) -> bytes:
    """Encode one well-formed netlink message carrying ``payload``.

    ``nul`` appends a NUL byte to the payload (counted in nlmsg_len).
    nlmsg_len is NLMSG_LENGTH(len) like the kernel's own helpers, or
    NLMSG_SPACE(len) with ``seed_len`` (what the classic 2009 sender did).
    The result is always zero-padded to a multiple of 4 bytes.
    """
    body = payload.encode("utf-8") if isinstance(payload, str) else bytes(payload)
    if nul:
        body += b"\0"
    _check_range("type", type, _U16_MAX)
    _check_range("flags", flags, _U16_MAX)
    _check_range("seq", seq, _U32_MAX)
    _check_range("pid", pid, _U32_MAX)
    space = nlmsg_space(len(body))
    if space > _U32_MAX:
        raise FrameError("payload too long")
    length = space if seed_len else nlmsg_length(len(body))
    return _HDR.pack(length, type, flags, seq, pid) + body + bytes(space - NLMSG_HDRLEN - len(body))


def build_payload(spec: Mapping[str, object]) -> bytes:
    """Payload bytes from a request dict: "hex", "fill"+"len" or "text".

    Precedence: hex, then fill, then text.  ``fill`` is repeated and cut to
    exactly ``len`` bytes.  Missing everything -> empty payload.
    """
    hex_text = spec.get("hex")
    if hex_text is not None:
        if not isinstance(hex_text, str):
            raise FrameError(f"bad hex: expected a string, got {hex_text!r}")
        try:
            return bytes.fromhex(hex_text)
        except ValueError as exc:
            raise FrameError(f"bad hex: {exc}") from exc
    fill = spec.get("fill")
    if fill is not None:
        if isinstance(fill, str):
            fill = fill.encode("utf-8")
        if not isinstance(fill, bytes):
            raise FrameError('"fill" must be a string')
        length = spec.get("len")
        if not isinstance(length, int) or isinstance(length, bool) or length < 0:
            raise FrameError('"fill" needs a non-negative integer "len"')
        if not fill:
            if length:
                raise FrameError('"fill" must not be empty')
            return b""
        reps = length // len(fill) + 1
        return (fill * reps)[:length]
    text = spec.get("text", "")
    if not isinstance(text, str):
        raise FrameError('"text" must be a string')
    return text.encode("utf-8")


def _spec_int(spec: Mapping[str, object], name: str, default: int) -> int:
    value = spec.get(name, default)
    if not isinstance(value, int) or isinstance(value, bool):
        raise FrameError(f"{name} must be an integer, got {value!r}")
    return value


def encode_batch(messages: Sequence[object], first_seq: int = 1) -> tuple[bytes, list[int]]:
    """Several messages (request dicts) in one datagram.

    Each dict is a payload spec (see build_payload) with optional "type",
    "flags", "seq", "nul", "seed_len".  Messages without "seq" are numbered
    from ``first_seq`` upwards.  Returns (datagram, [seq, ...]).
    """
    out = bytearray()
    seqs = []
    next_seq = first_seq
    for spec in messages:
        if not isinstance(spec, dict):
            raise FrameError("batch entries must be objects")
        if spec.get("seq") is None:
            seq = next_seq
            next_seq += 1
        else:
            seq = _spec_int(spec, "seq", 0)
        out += encode_message(
            build_payload(spec),
            type=_spec_int(spec, "type", 0),
            flags=_spec_int(spec, "flags", NLM_F_REQUEST | NLM_F_ACK),
            seq=seq,
            pid=_spec_int(spec, "pid", 0),
            nul=bool(spec.get("nul", False)),
            seed_len=bool(spec.get("seed_len", False)),
        )
        seqs.append(seq)
    return bytes(out), seqs


def split_messages(datagram: bytes) -> tuple[list[tuple[int, int, int, int, int, int]], str | None]:
    """Walk a datagram like the kernel does.

    Returns (messages, rest) where messages is a list of
    (offset, length, type, flags, seq, pid) for every well-formed message and
    rest is None when the walk ended cleanly or a short string naming the
    problem ('empty' or 'short' datagram, 'bad_len').  Trailing bytes shorter
    than a header after at least one message are ignored, like the module does.
    """
    datagram = bytes(datagram)
    total = len(datagram)
    msgs: list[tuple[int, int, int, int, int, int]] = []
    if total == 0:
        return msgs, "empty"
    if total < NLMSG_HDRLEN:
        return msgs, "short"
    off = 0
    while total - off >= NLMSG_HDRLEN:
        length, mtype, flags, seq, pid = _HDR.unpack_from(datagram, off)
        left = total - off
        if length < NLMSG_HDRLEN or length > left:
            return msgs, "bad_len"
        msgs.append((off, length, mtype, flags, seq, pid))
        off += min(nlmsg_align(length), left)
    return msgs, None


def decode_acks(datagram: bytes | memoryview) -> list[Ack]:
    """Decode every message of a received datagram.

    NLMSG_ERROR messages become dicts with "type", "seq", "error" (the errno
    as a NON-NEGATIVE number, 0 = success), "flags", "pid", "len" and the
    echoed request header as "orig_len", "orig_type", "orig_flags",
    "orig_seq", "orig_pid".  Other message types only carry "type", "seq",
    "flags", "pid", "len".  A truncated trailing message is reported as
    {"type": None, "truncated": True, "offset": <where it starts>}.
    """
    out: list[Ack] = []
    off = 0
    total = len(datagram)
    while total - off >= NLMSG_HDRLEN:
        length, mtype, flags, seq, pid = _HDR.unpack_from(datagram, off)
        if length < NLMSG_HDRLEN or length > total - off:
            out.append({"type": None, "truncated": True, "offset": off})
            break
        item: Ack = {"type": mtype, "seq": seq, "flags": flags, "pid": pid, "len": length}
        if mtype == NLMSG_ERROR:
            if length >= NLMSG_HDRLEN + _ERR_ORIG.size:
                err, olen, otype, oflags, oseq, opid = _ERR_ORIG.unpack_from(datagram, off + NLMSG_HDRLEN)
                item["error"] = abs(err)
                item["orig_len"] = olen
                item["orig_type"] = otype
                item["orig_flags"] = oflags
                item["orig_seq"] = oseq
                item["orig_pid"] = opid
            elif length >= NLMSG_HDRLEN + _ERR.size:
                (err,) = _ERR.unpack_from(datagram, off + NLMSG_HDRLEN)
                item["error"] = abs(err)
            else:
                item["error"] = None
        out.append(item)
        off += nlmsg_align(length)
    return out


def visible_payload(body: bytes) -> bytes:
    """The part of a message body the module prints: up to the first NUL."""
    body = bytes(body)
    cut = body.find(b"\0")
    return body if cut < 0 else body[:cut]


def expected_link_line(body: bytes, print_max: int = DEFAULT_PRINT_MAX) -> str:
    """The exact log line knetlink writes for a message body (the bytes
    after the header up to nlmsg_len), e.g. 'link:hello world!'."""
    if not 0 <= print_max <= PRINT_MAX_LIMIT:
        raise FrameError(f"print_max out of range 0..{PRINT_MAX_LIMIT}")
    shown = visible_payload(body)
    line = "link:" + escape_payload(shown[:print_max])
    if len(shown) > print_max:
        line += f"...[+{len(shown) - print_max} bytes]"
    return line
