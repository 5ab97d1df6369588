"""Hostile input: hand-made, often malformed datagrams and parameter values against the module.

One row per datagram: the acks it must get (sequence number and errno, in
order, and never more: each row is followed by a fence, a NOOP with
NLM_F_ACK on the same socket, and every reply before the fence's ack is the
row's), the exact `link:` lines it must produce (the escaped
text, which must decode back to the payload bytes) and the module's counters
afterwards. After every row a well-formed message is still acked with 0 and
printed. That no row splats or taints the kernel is checked for every guest
test by the plugin.

Then print_max (the payload bytes printed per message) at its limits, at
insmod and through sysfs at run time, and parameter values the module must
refuse, each with its own message.
"""

from __future__ import annotations

import errno
import sys
from dataclasses import dataclass, field

import pytest
from knetlink_stats import module_stats, param_path, read_param  # tests/kernel/knetlink_stats.py

from harness.build.module_build import BuiltModule
from harness.config import GUEST_SCRIPTS
from harness.errors import ModuleLoadError
from harness.guest.kernel_ops import GuestKernel
from harness.guest.vm import Guest
from harness.knetlink.fixtures import KnetlinkModule, LinkLogWindow
from harness.knetlink.links import parse_link_lines
from harness.knetlink.senders import FENCE_STATS, PySender, Reply, SenderError

sys.path.insert(0, str(GUEST_SCRIPTS))
import nlframes  # guest_scripts is not a package
from nlframes import (
    DEFAULT_PRINT_MAX,
    NLM_F_ACK,
    NLM_F_REQUEST,
    NLMSG_DONE,
    NLMSG_ERROR,
    NLMSG_NOOP,
    NLMSG_OVERRUN,
    PRINT_MAX_LIMIT,
    encode_header,
    encode_message,
    expected_link_line,
    nlmsg_length,
    nlmsg_space,
)

EINVAL = errno.EINVAL
REQ_ACK = NLM_F_REQUEST | NLM_F_ACK


def msg(payload: bytes, seq: int, type: int = 0, flags: int = REQ_ACK) -> bytes:
    return bytes(encode_message(payload, type=type, flags=flags, seq=seq))


# Fewer bytes than a header: the module ignores them as trailing bytes of the datagram.
GARBAGE = b"<OVER-READ!>"


def unterminated(payload: bytes, seq: int) -> bytes:
    """A message whose payload has no NUL and whose padding and trailing bytes are not zero either.

    nlmsg_len covers exactly the payload, the alignment padding is "~" and GARBAGE follows it
    inside the same datagram. A module that looks for a NUL (strlen, a bare %s) instead of
    stopping at nlmsg_len reads on into them and prints them.
    """
    pad = b"~" * (nlmsg_space(len(payload)) - nlmsg_length(len(payload)))
    return encode_header(nlmsg_length(len(payload)), 0, REQ_ACK, seq) + payload + pad + GARBAGE


@dataclass(frozen=True)
class Row:
    datagram: bytes
    acks: list[tuple[int, int]]  # (seq, errno) in order
    links: list[bytes] = field(default_factory=list)  # message bodies whose link: line must appear, in order
    received: int = 0  # well-formed messages the module must count


LONG = b"A" * (60 * 1024)
CONTROLS = bytes(range(1, 0x20)) + b"\x7f"
HIGH = bytes(range(0x80, 0x100))  # exactly print_max (128) bytes: no truncation
ANSI = b"\x1b[31mRED\x1b[0m \x1b]0;title\x07 \x1b[2J\x1b[H\r\x08\x08done"
PRINTF = b"%s%s%s%n%n%x%p%pK%.*s%c%%%d%lu%-99999s"
NEWLINES = b"first\nlink:forged line\n<0>knetlink: fake\r\n"
BACKSLASHES = b"a\\b\\\\c\\x41\\"

ROWS: dict[str, Row] = {
    # framing errors
    "5-byte datagram": Row(b"\x01\x02\x03\x04\x05", [(0, EINVAL)]),
    "15-byte datagram (seq present)": Row(encode_header(16, 0, REQ_ACK, seq=77)[:15], [(77, EINVAL)]),
    "nlmsg_len 0": Row(encode_header(0, seq=11) + b"abcd", [(11, EINVAL)]),
    "nlmsg_len 8 below header": Row(encode_header(8, seq=12) + b"abcdefgh", [(12, EINVAL)]),
    "nlmsg_len 15 below header": Row(encode_header(15, seq=13) + b"abcd", [(13, EINVAL)]),
    "nlmsg_len beyond datagram": Row(encode_header(100, seq=14) + b"hello\0\0\0", [(14, EINVAL)]),
    "nlmsg_len 0xffffffff": Row(encode_header(0xFFFFFFFF, seq=15) + b"x" * 16, [(15, EINVAL)]),
    # payload contents
    "empty payload": Row(msg(b"", 20), [(20, 0)], [b""], 1),
    "payload without NUL, zero padding": Row(msg(b"hello", 21), [(21, 0)], [b"hello"], 1),
    # no NUL and non-zero bytes after the payload: padding (for lengths 1..3 and 5..7 mod 4) and
    # trailing bytes. Lengths 4 and 8 fill the message exactly: GARBAGE follows the payload directly.
    **{
        f"{n}-byte payload without NUL, non-zero bytes after": Row(
            unterminated(b"abcdefgh"[:n], 100 + n), [(100 + n, 0)], [b"abcdefgh"[:n]], 1)
        for n in range(1, 9)
    },
    "payload without NUL, next message right after": Row(
        unterminated(b"abcd", 109)[:-len(GARBAGE)] + msg(b"next", 110), [(109, 0), (110, 0)], [b"abcd", b"next"], 2),
    "NUL in the middle cuts": Row(msg(b"abc\0def", 22), [(22, 0)], [b"abc\0def"], 1),
    "newlines cannot forge lines": Row(msg(NEWLINES, 23), [(23, 0)], [NEWLINES], 1),
    "control characters": Row(msg(CONTROLS, 24), [(24, 0)], [CONTROLS], 1),
    "high bytes": Row(msg(HIGH, 25), [(25, 0)], [HIGH], 1),
    "ANSI escapes": Row(msg(ANSI, 26), [(26, 0)], [ANSI], 1),
    "printf conversions": Row(msg(PRINTF, 27), [(27, 0)], [PRINTF], 1),
    "backslashes": Row(msg(BACKSLASHES, 28), [(28, 0)], [BACKSLASHES], 1),
    "60 KiB payload": Row(msg(LONG, 29), [(29, 0)], [LONG], 1),
    # several messages per datagram
    "three messages": Row(
        msg(b"one", 31) + msg(b"two", 32, type=16, flags=0) + msg(b"three", 33, type=0xFFFF, flags=NLM_F_ACK),
        [(31, 0), (32, 0), (33, 0)], [b"one", b"two", b"three"], 3),
    "truncated second message": Row(
        msg(b"first", 41) + encode_header(64, seq=42) + b"partial", [(41, 0), (42, EINVAL)], [b"first"], 1),
    "bad middle message drops the rest": Row(
        msg(b"first", 43) + encode_header(8, seq=44) + msg(b"never", 45), [(43, 0), (44, EINVAL)], [b"first"], 1),
    "trailing bytes after a message ignored": Row(msg(b"tail", 46) + b"\x01" * 12, [(46, 0)], [b"tail"], 1),
    # control types: no line, an ack only with NLM_F_ACK
    "NOOP with ACK": Row(msg(b"x", 51, type=NLMSG_NOOP), [(51, 0)], [], 1),
    "NOOP without ACK": Row(msg(b"x", 52, type=NLMSG_NOOP, flags=NLM_F_REQUEST), [], [], 1),
    "DONE with ACK": Row(msg(b"x", 53, type=NLMSG_DONE), [(53, 0)], [], 1),
    "DONE without ACK": Row(msg(b"x", 54, type=NLMSG_DONE, flags=0), [], [], 1),
    "ERROR with ACK": Row(msg(b"\xea\xff\xff\xff", 55, type=NLMSG_ERROR), [(55, 0)], [], 1),
    "ERROR without ACK": Row(msg(b"\xea\xff\xff\xff", 56, type=NLMSG_ERROR, flags=0), [], [], 1),
    "OVERRUN with ACK": Row(msg(b"x", 57, type=NLMSG_OVERRUN), [(57, 0)], [], 1),
    "reserved type 15 without ACK": Row(msg(b"x", 58, type=15, flags=NLM_F_REQUEST), [], [], 1),
    "control then data": Row(
        msg(b"c", 59, type=NLMSG_NOOP, flags=0) + msg(b"d", 60), [(60, 0)], [b"d"], 2),
    # flags
    "no flags at all": Row(msg(b"noflags", 61, flags=0), [(61, 0)], [b"noflags"], 1),
    "ACK without REQUEST": Row(msg(b"ackonly", 62, flags=NLM_F_ACK), [(62, 0)], [b"ackonly"], 1),
    "all flags": Row(msg(b"allflags", 63, flags=0xFFFF), [(63, 0)], [b"allflags"], 1),
}


def fenced(sender: PySender, datagram: bytes) -> list[Reply]:
    """Send one datagram, then a fence; every reply the datagram caused. Netlink keeps a socket's
    replies in order, so once the fence's ack is in, no reply to the datagram is still to come."""
    batch = sender.frames([datagram], links=False)
    if batch.stopped:
        raise SenderError(f"no ack for the fence: {batch.stopped}")
    [replies] = batch.replies
    return replies


def acks_of(replies: list[Reply]) -> list[tuple[int | None, int | None, int | None]]:
    """(seq, errno, echoed nlmsg_len) of each reply; every reply must be an NLMSG_ERROR ack."""
    acks = [r for r in replies if not isinstance(r, str) and r[0] == NLMSG_ERROR]
    assert len(acks) == len(replies), replies
    return [(seq, err, orig_len) for _, seq, err, orig_len in acks]


def link_texts(kernel_log: LinkLogWindow) -> list[str]:
    return [t for t in kernel_log.texts() if t.startswith("link:")]


@pytest.mark.parametrize("case", list(ROWS), ids=list(ROWS))
def test_hostile_row(case: str, kmod: KnetlinkModule, kernel_log: LinkLogWindow, py_sender: PySender,
                     guest: Guest) -> None:  # fmt: skip
    row = ROWS[case]
    # every reply before the fence's ack: an extra ack would show up, a missing one too
    replies = fenced(py_sender, row.datagram)
    acks = acks_of(replies)
    assert [(seq, err) for seq, err, _ in acks] == row.acks, f"{case}: replies {replies}"
    for seq, err, orig_len in acks:
        if err == EINVAL:
            # sanitised header: the ack echoes 16 bytes, whatever nlmsg_len claimed
            assert orig_len == 16, (seq, err, orig_len)

    # the still-alive message after the row
    alive = f"still alive after {case}"
    assert [(a.seq, a.error) for a in py_sender.send(alive, seq=1000)] == [(1000, 0)]

    want = [*row.links, alive.encode()]
    texts = link_texts(kernel_log)
    assert texts == [expected_link_line(b) for b in want], "\n".join(kernel_log.texts()[-20:])
    decoded = parse_link_lines(kernel_log.lines())
    assert [d.payload for d in decoded] == [nlframes.visible_payload(b)[:128] for b in want]
    assert [d.truncated_bytes for d in decoded] == [max(0, len(nlframes.visible_payload(b)) - 128) for b in want]

    stats = module_stats(guest)
    errors = sum(1 for _, err, _ in acks if err)
    assert stats == {"received": row.received + 1 + FENCE_STATS["received"], "printed": len(want),
                     "acked": len(acks) + 1 + FENCE_STATS["acked"], "errors": errors}, stats  # fmt: skip
    if errors:
        assert any("knetlink: malformed message at offset" in t for t in kernel_log.texts())


def test_sixty_kib_is_one_truncated_line(kernel_log: LinkLogWindow, py_sender: PySender) -> None:
    assert [(seq, err) for seq, err, _ in acks_of(fenced(py_sender, msg(LONG, 7)))] == [(7, 0)]
    [line] = link_texts(kernel_log)
    assert line == "link:" + "A" * 128 + f"...[+{len(LONG) - 128} bytes]"
    assert not any("WARNING" in t for t in kernel_log.texts())


def test_zero_length_datagram_is_refused_by_the_kernel(kmod: KnetlinkModule, kernel_log: LinkLogWindow,
                                                        py_sender: PySender, guest: Guest) -> None:  # fmt: skip
    """sendto() of 0 bytes fails with ENODATA on these kernels: it never reaches the module."""
    with pytest.raises(SenderError, match=r"\[Errno 61\] No data available"):
        py_sender.raw(b"", expect=1)
    assert [(a.seq, a.error) for a in py_sender.send("after zero length", seq=5)] == [(5, 0)]
    assert link_texts(kernel_log) == ["link:after zero length"]
    assert module_stats(guest) == {"received": 1, "printed": 1, "acked": 1, "errors": 0}


# ---- print_max and out-of-range parameters ------------------------------------------------------

# Every byte printed as \xHH (4 characters): neither printable ASCII nor NUL (which would end the payload).
ESCAPED = bytes(b for b in range(1, 256) if not 0x20 <= b <= 0x7E)
WIDE = (ESCAPED * (len(LONG) // len(ESCAPED) + 1))[: len(LONG)]
SHORT = b"hi"


def assert_print_max_lines(kernel_log: LinkLogWindow, py_sender: PySender, print_max: int, seq: int) -> None:
    """Send SHORT and WIDE; their link: lines must be exactly what print_max allows."""
    kernel_log.restart()
    for i, payload in enumerate((SHORT, WIDE)):
        assert [(a.seq, a.error) for a in py_sender.send(data=payload, seq=seq + i)] == [(seq + i, 0)]
    texts = link_texts(kernel_log)
    assert texts == [expected_link_line(SHORT, print_max), expected_link_line(WIDE, print_max)], (
        f"print_max={print_max}:\n" + "\n".join(t[:300] for t in texts)
    )
    # every shown byte as \xHH: at print_max 200 the longest line the module can write, in one record
    marker = f"...[+{len(WIDE) - print_max} bytes]"
    assert texts[1] == "link:" + "".join(f"\\x{b:02x}" for b in WIDE[:print_max]) + marker
    assert len(texts[1]) == len("link:") + 4 * print_max + len(marker)
    decoded = parse_link_lines(kernel_log.lines())
    assert [(d.payload, d.truncated_bytes) for d in decoded] == [
        (SHORT[:print_max], max(0, len(SHORT) - print_max)), (WIDE[:print_max], len(WIDE) - print_max),
    ]  # fmt: skip


@pytest.mark.parametrize(
    "print_max",
    [pytest.param(n, marks=pytest.mark.module_params(print_max=n), id=f"print_max={n}") for n in (0, 1, 200)],
)
def test_print_max_at_insmod(print_max: int, kmod: KnetlinkModule, kernel_log: LinkLogWindow, py_sender: PySender,
                             guest: Guest) -> None:  # fmt: skip
    assert read_param(guest, "print_max") == str(print_max)
    init = f"knetlink: Init OK! (proto {kmod.proto}, print_max {print_max}, require_cap 0)"
    assert init in kernel_log.texts(), "\n".join(kernel_log.texts())
    assert_print_max_lines(kernel_log, py_sender, print_max, seq=300)


def test_print_max_through_sysfs_at_run_time(kmod: KnetlinkModule, kernel_log: LinkLogWindow, py_sender: PySender,
                                             guest: Guest) -> None:  # fmt: skip
    path = param_path("print_max")
    assert read_param(guest, "print_max") == str(DEFAULT_PRINT_MAX)
    for i, value in enumerate((0, 1, PRINT_MAX_LIMIT)):
        guest.run(f"echo {value} > {path}", check=True)
        assert read_param(guest, "print_max") == str(value)
        assert_print_max_lines(kernel_log, py_sender, value, seq=500 + 10 * i)

    for bad, message in ((PRINT_MAX_LIMIT + 1, f"knetlink: print_max={PRINT_MAX_LIMIT + 1} out of range (0..200)"),
                         ("abc", "knetlink: print_max: 'abc' is not a number")):  # fmt: skip
        kernel_log.restart()
        refused = guest.run(f"printf %s {bad} > {path}")  # no newline: the module quotes the value it got
        assert refused.status != 0 and "Invalid argument" in refused.output, refused
        assert message in kernel_log.texts(), "\n".join(kernel_log.texts())
        assert read_param(guest, "print_max") == str(PRINT_MAX_LIMIT), f"print_max changed by {bad!r}"
    assert_print_max_lines(kernel_log, py_sender, PRINT_MAX_LIMIT, seq=600)


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("print_max", "201", "knetlink: print_max=201 out of range (0..200)"),
        ("proto", "32", "knetlink: proto=32 out of range (0..31)"),
        ("proto", "-1", "knetlink: proto=-1 out of range (0..31)"),
    ],
    ids=["print_max=201", "proto=32", "proto=-1"],
)
def test_insmod_refuses_out_of_range_parameter(name: str, value: str, message: str, built_module: BuiltModule,
                                               guest_kernel: GuestKernel) -> None:  # fmt: skip
    module = built_module.module()
    assert not guest_kernel.loaded("knetlink"), "knetlink is loaded already: the refusal could not be seen"
    try:
        with pytest.raises(ModuleLoadError) as refused:
            guest_kernel.insmod(module, {name: value})
    finally:
        if guest_kernel.loaded("knetlink"):
            guest_kernel.rmmod("knetlink")
    assert message in refused.value.kernel_lines, str(refused.value)
