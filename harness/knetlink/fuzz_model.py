"""The fuzzer's frames and the module's rules for them, on the host.

Hypothesis draws every frame on the host's CPU: a kind (well-formed messages,
a malformed tail, a short tail, a short datagram, random bytes), then for each
message two byte strings: its fields at fixed places (type, flags, seq, pid,
the payload's style) and the payload's bytes. Few draws per frame keep
Hypothesis fast (each costs tens of microseconds, a byte string a few more per
byte), and shrinking still works on structure: dropping a message drops its
draws, and smaller values decode to simpler fields (type 0, flags 0, seq 0,
an empty payload).

:func:`model` says what the module must do with a datagram (docs/module.md):

  * every well-formed message of type 0 or >= 16 gets exactly one ack 0 and
    one link line;
  * a control message (type 1..15) gets an ack 0 only with NLM_F_ACK;
  * a datagram of 1..15 bytes, or a message whose nlmsg_len is below 16 or
    beyond the bytes left, gets one -EINVAL ack echoing a 16-byte header, and
    nothing after it is handled;
  * acks come in message order.
"""

from __future__ import annotations

import errno
import re
import struct
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING

from hypothesis import strategies as st

from harness.config import GUEST_SCRIPTS

# The guest scripts' frame helpers, also for the host's tests (re-exported). The guest scripts import
# one another as top-level modules (nlframes imports payload), so their directory goes on sys.path.
if TYPE_CHECKING:
    import nlframes as nlframes  # mypy_path: the guest scripts' own module names
else:
    if str(GUEST_SCRIPTS) not in sys.path:
        sys.path.append(str(GUEST_SCRIPTS))
    import nlframes

HDR = struct.Struct("=IHHII")
HDRLEN = nlframes.NLMSG_HDRLEN
EINVAL = errno.EINVAL

KINDS = ("valid", "valid", "malformed_tail", "short_tail", "short", "random")  # by the kind selector modulo 6
CONTROL_TYPES = (nlframes.NLMSG_NOOP, nlframes.NLMSG_ERROR, nlframes.NLMSG_DONE, nlframes.NLMSG_OVERRUN, 15)
TYPES = (0, 0, 0, *CONTROL_TYPES, 16, 0xFFFF)
FLAGS = (0, nlframes.NLM_F_REQUEST, nlframes.NLM_F_ACK, nlframes.NLM_F_REQUEST | nlframes.NLM_F_ACK)
PIDS = (0, 0, 1, 0xFFFFFFFF)
SPECIAL_PAYLOADS = (b"", b"hello world!", b"%s%n%x%p", b"\n\r\x1b[31m", b"\\", b"a\0b")
MAX_MESSAGES = 5
MESSAGE_FIELDS = 14  # bytes of a message's fields
TAIL_FIELDS = 16  # of a lying header's


def _pick(sel: int, table: tuple[int, ...], raw: int) -> int:
    """Mostly a value of ``table`` (its first for a zero selector), sometimes ``raw``."""
    return table[sel % len(table)] if sel < 0xC0 else raw


def _u16(b: bytes, at: int) -> int:
    return b[at] | b[at + 1] << 8


def _u32(b: bytes, at: int) -> int:
    return int.from_bytes(b[at : at + 4], "little")


def decode_payload(style: int, fill: int, length: int, rest: bytes) -> bytes:
    if style == 0:  # bytes as drawn
        return rest
    if style == 1:  # up to 400 bytes, for print_max to cut: the drawn bytes (or the fill byte) repeated
        chunk = rest or bytes([fill])
        return (chunk * (length // len(chunk) + 1))[:length]
    if style == 2:  # text: the drawn bytes as UTF-16 code units, written as UTF-8 (lone surrogates too)
        text = "".join(chr(_u16(rest, i)) for i in range(0, len(rest) - 1, 2))
        return text.encode("utf-8", "surrogatepass")
    return SPECIAL_PAYLOADS[fill % len(SPECIAL_PAYLOADS)]


def decode_message(b: bytes, rest: bytes) -> bytes:
    """A well-formed message from its fields' bytes and its payload's bytes.

    [0] type (selector, raw [1:3]), [3] flags (selector, raw [4:6]), [6:10] seq,
    [10] pid (bits 0-1), NLMSG_SPACE length (bit 2), payload style (bits 3-4),
    [11] fill byte / special payload, [12:14] length of a long payload.
    """
    payload = decode_payload(b[10] >> 3 & 3, b[11], _u16(b, 12) % 401, rest)
    return nlframes.encode_message(payload, type=_pick(b[0], TYPES, _u16(b, 1)), flags=_pick(b[3], FLAGS, _u16(b, 4)),
                                   seq=_u32(b, 6), pid=PIDS[b[10] & 3], seed_len=bool(b[10] & 4))  # fmt: skip


def decode_bad_header(b: bytes, rest: bytes) -> bytes:
    """A header whose nlmsg_len is below 16 or beyond what follows, then ``rest``.

    Fields as in :func:`decode_message`; [10] how the length lies (below 16, a little beyond, anywhere
    beyond), [11] the small lie, [12:16] the large one.
    """
    beyond = HDRLEN + len(rest)
    mode = b[10] % 3
    if mode == 0:
        length = b[11] % HDRLEN
    elif mode == 1:
        length = beyond + 1 + b[11] % 64
    else:
        length = beyond + 1 + _u32(b, 12) % (0xFFFFFFFF - beyond)
    return nlframes.encode_header(length, type=_pick(b[0], TYPES, _u16(b, 1)), flags=_pick(b[3], FLAGS, _u16(b, 4)),
                                  seq=_u32(b, 6)) + rest  # fmt: skip


# A message's (or a lying header's) fields are one draw of fixed-size bytes: Hypothesis draws bytes
# uniformly (a wide integer it would draw mostly small). The payload's bytes are another draw.
MESSAGE = st.tuples(st.binary(min_size=MESSAGE_FIELDS, max_size=MESSAGE_FIELDS), st.binary(max_size=48))
BAD_HEADER = st.tuples(st.binary(min_size=TAIL_FIELDS, max_size=TAIL_FIELDS), st.binary(max_size=64))
SHORT = st.binary(min_size=1, max_size=HDRLEN - 1)  # shorter than a header


@st.composite
def frame_or_none(draw: st.DrawFn) -> bytes | None:
    """A frame of a kind, or (rarely when drawn, always when shrunk to zero) no frame.

    The kind comes first: shrinking a frame that does not matter to zero
    removes it from its batch in one step, leaving Hypothesis's shrinking
    budget to the frames that do.
    """
    sel = draw(st.integers(0, 0xFFFF))
    if sel == 0:
        return None
    kind = KINDS[sel % len(KINDS)]
    if kind == "short":
        return draw(SHORT)
    if kind == "random":
        return draw(st.binary(min_size=1, max_size=200))
    messages = draw(st.lists(MESSAGE, min_size=0 if kind == "malformed_tail" else 1, max_size=MAX_MESSAGES))
    out = b"".join(decode_message(fields, rest) for fields, rest in messages)
    if kind == "malformed_tail":
        return out + decode_bad_header(*draw(BAD_HEADER))
    if kind == "short_tail":
        return out + draw(SHORT)
    return out


def _present(frames: list[bytes | None]) -> list[bytes]:
    return [f for f in frames if f is not None]


FRAME: st.SearchStrategy[bytes] = frame_or_none().filter(lambda f: f is not None)  # type: ignore[assignment]


def frame_batches(size: int) -> st.SearchStrategy[list[bytes]]:
    """Batches of up to ``size`` frames (a few fewer: see frame_or_none): one Hypothesis example,
    one request to the guest."""
    return st.lists(frame_or_none(), min_size=size, max_size=size).map(_present)


# ---- the rules ----------------------------------------------------------------


@dataclass(frozen=True)
class Expected:
    """What the module must do with one datagram."""

    acks: list[tuple[int, int]]  # (seq, errno) in order
    links: list[str]  # the exact link: lines, in order
    messages: int  # well-formed messages plus a malformed one

    @property
    def malformed(self) -> int:
        return sum(1 for _, e in self.acks if e == EINVAL)


def model(data: bytes, print_max: int = nlframes.DEFAULT_PRINT_MAX) -> Expected:
    """What the module must do with one non-empty datagram."""
    acks: list[tuple[int, int]] = []
    links: list[str] = []
    total = len(data)
    if total < HDRLEN:
        padded = data + b"\0" * (HDRLEN - total)
        return Expected([(HDR.unpack(padded)[3], EINVAL)], links, 1)
    off = 0
    messages = 0
    while total - off >= HDRLEN:
        length, mtype, flags, seq, _pid = HDR.unpack_from(data, off)
        left = total - off
        messages += 1
        if length < HDRLEN or length > left:
            acks.append((seq, EINVAL))
            break
        if mtype == 0 or mtype >= nlframes.NLMSG_MIN_TYPE:
            links.append(nlframes.expected_link_line(data[off + HDRLEN : off + length], print_max))
            acks.append((seq, 0))
        elif flags & nlframes.NLM_F_ACK:
            acks.append((seq, 0))
        off += min(nlframes.nlmsg_align(length), left)
    return Expected(acks, links, messages)


_KMSG_ESCAPE = re.compile(r"\\x([0-9a-f]{2})")


def kmsg_text(text: str) -> str:
    """A record's text as /dev/kmsg prints it, unescaped (it writes ``\\`` and control bytes as ``\\xHH``)."""
    return _KMSG_ESCAPE.sub(lambda m: chr(int(m.group(1), 16)), text) if "\\" in text else text
