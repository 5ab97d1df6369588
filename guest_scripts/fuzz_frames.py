#!/usr/bin/env python3
"""Property-based fuzzing of the knetlink module from inside the guest.

Hypothesis generates datagrams (well-formed batches, lying headers, short
fragments, trailing garbage, random bytes); each one is sent on a netlink
socket of the module's protocol and the acks that come back are checked
against the rules of docs/module.md:

  * every well-formed message of type 0 or >= 16 gets exactly one ack 0;
  * a control message (type 1..15) gets an ack 0 only with NLM_F_ACK;
  * a datagram of 1..15 bytes, or a message whose nlmsg_len is below 16 or
    beyond the bytes left, gets one -EINVAL ack carrying a 16-byte header,
    and nothing after it is handled;
  * acks come in message order, and never more acks than messages.

Acks are queued synchronously while send() runs (the module's input callback
runs in the sender's context), so after each send the socket is drained.

Output: one JSON line on stdout (frames, messages, data messages, acks by
errno, violations with the first few examples, frames/s, seed). With
--expect-out, the exact `link:` line expected for every data message is
written there, one per line, for the host to compare with the kernel log.

    fuzz_frames.py --proto 21 --examples 10000 [--seed N] [--batch 25] [--expect-out FILE]
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import struct
import sys
import time

import nlframes
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st
from nlsocket import NetlinkSocket, SocketError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from nlframes import Ack

HDR = struct.Struct("=IHHII")
HDRLEN = nlframes.NLMSG_HDRLEN
EINVAL = errno.EINVAL
MAX_EXAMPLES_SHOWN = 5
STRAGGLER_S = 0.05  # extra wait for a missing ack
MAX_VIOLATIONS = 200  # a broken module: stop early instead of waiting for every missing ack

# ---- what to generate -----------------------------------------------------

CONTROL_TYPES = [nlframes.NLMSG_NOOP, nlframes.NLMSG_ERROR, nlframes.NLMSG_DONE, nlframes.NLMSG_OVERRUN]
TYPES = st.one_of(st.sampled_from([0, 0, 0, *CONTROL_TYPES, 15, 16, 0xFFFF]), st.integers(0, 0xFFFF))
FLAGS = st.one_of(
    st.sampled_from([0, nlframes.NLM_F_REQUEST, nlframes.NLM_F_ACK, nlframes.NLM_F_REQUEST | nlframes.NLM_F_ACK]),
    st.integers(0, 0xFFFF),
)
SEQ = st.integers(0, 0xFFFFFFFF)
PAYLOAD = st.one_of(
    st.binary(max_size=48),
    st.binary(max_size=400),
    st.text(max_size=60).map(lambda s: s.encode("utf-8")),
    st.sampled_from([b"", b"hello world!", b"%s%n%x%p", b"\n\r\x1b[31m", b"\\", b"a\0b"]),
)


@st.composite
def message(draw: st.DrawFn) -> bytes:
    """A well-formed message, sometimes with nlmsg_len = NLMSG_SPACE like the classic sender."""
    payload = draw(PAYLOAD)
    return nlframes.encode_message(
        payload,
        type=draw(TYPES),
        flags=draw(FLAGS),
        seq=draw(SEQ),
        pid=draw(st.sampled_from([0, 0, 1, 0xFFFFFFFF])),
        seed_len=draw(st.booleans()),
    )


@st.composite
def bad_header(draw: st.DrawFn) -> bytes:
    """A header whose nlmsg_len is below 16 or beyond what follows, plus some bytes."""
    rest = draw(st.binary(max_size=64))
    if draw(st.booleans()):
        length = draw(st.integers(0, HDRLEN - 1))
    else:
        length = draw(
            st.one_of(
                st.integers(HDRLEN + len(rest) + 1, HDRLEN + len(rest) + 64),
                st.integers(HDRLEN + len(rest) + 1, 0xFFFFFFFF),
            )
        )
    return nlframes.encode_header(length, type=draw(TYPES), flags=draw(FLAGS), seq=draw(SEQ)) + rest


@st.composite
def datagram(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["valid", "valid", "malformed_tail", "short_tail", "short", "random"]))
    if kind == "short":
        return draw(st.binary(min_size=1, max_size=HDRLEN - 1))
    if kind == "random":
        return draw(st.binary(min_size=1, max_size=200))
    out = b"".join(draw(st.lists(message(), min_size=0 if kind == "malformed_tail" else 1, max_size=5)))
    if kind == "malformed_tail":
        out += draw(bad_header())
    elif kind == "short_tail":
        out += draw(st.binary(min_size=1, max_size=HDRLEN - 1))
    return out


# ---- the rules ----------------------------------------------------------------


def model(data: bytes) -> tuple[list[tuple[int, int]], list[str], int]:
    """What the module must do with one non-empty datagram.

    Returns (acks, links, messages): acks as [(seq, errno)], the expected link
    lines, and how many messages (well-formed plus a malformed one) it holds.
    """
    acks: list[tuple[int, int]] = []
    links: list[str] = []
    total = len(data)
    if total < HDRLEN:
        padded = data + b"\0" * (HDRLEN - total)
        return [(HDR.unpack(padded)[3], EINVAL)], links, 1
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
            links.append(nlframes.expected_link_line(data[off + HDRLEN : off + length]))
            acks.append((seq, 0))
        elif flags & nlframes.NLM_F_ACK:
            acks.append((seq, 0))
        off += min(nlframes.nlmsg_align(length), left)
    return acks, links, messages


# ---- the exchange ------------------------------------------------------------------


def exchange(sock: NetlinkSocket, data: bytes, want: int) -> tuple[list[Ack], bool]:
    """Send one datagram; return the replies queued for it and whether the kernel dropped some.

    Everything queued is read (more acks than messages is a violation), with a
    short wait only while fewer than ``want`` arrived.
    """
    sock.send(data, drain=False)  # every earlier reply was read: nothing to drain
    got = sock.receive(want, STRAGGLER_S if want else 0.0)
    replies = [a for a in got if not a.get("overrun")]
    return replies, len(replies) != len(got)


# ---- the run ----------------------------------------------------------------------


class Tally:
    def __init__(self) -> None:
        self.frames = 0
        self.messages = 0
        self.data_messages = 0
        self.malformed = 0
        self.bytes = 0
        self.acks_by_errno: dict[str, int] = {}
        self.violations: dict[str, int] = {}
        self.examples: list[dict[str, object]] = []
        self.links: list[str] = []

    def violation(self, kind: str, data: bytes, expected: object, got: object) -> None:
        self.violations[kind] = self.violations.get(kind, 0) + 1
        if len(self.examples) < MAX_EXAMPLES_SHOWN:
            self.examples.append({"kind": kind, "hex": data.hex()[:400], "expected": expected, "got": got})


class TooManyViolations(Exception):
    pass


def check_one(sock: NetlinkSocket, tally: Tally, data: bytes) -> None:
    if sum(tally.violations.values()) >= MAX_VIOLATIONS:
        raise TooManyViolations()
    want_acks, want_links, messages = model(data)
    got, overrun = exchange(sock, data, len(want_acks))
    tally.frames += 1
    tally.bytes += len(data)
    tally.messages += messages
    tally.data_messages += len(want_links)
    tally.malformed += sum(1 for _, e in want_acks if e == EINVAL)
    tally.links.extend(want_links)
    pairs: list[tuple[int | None, int | None]] = []
    for a in got:
        if a.get("type") != nlframes.NLMSG_ERROR:
            tally.violation("not an ack", data, None, a)
            continue
        error = a.get("error")
        pairs.append((a.get("seq"), error))
        key = str(error)
        tally.acks_by_errno[key] = tally.acks_by_errno.get(key, 0) + 1
        if error == EINVAL and a.get("orig_len") != HDRLEN:
            tally.violation("EINVAL ack does not echo a 16-byte header", data, HDRLEN, a.get("orig_len"))
    if overrun:
        tally.violation("receive overrun", data, None, None)
    if len(got) > messages:
        tally.violation("more acks than messages", data, messages, len(got))
    if pairs != want_acks:
        tally.violation("acks differ from the rules", data, want_acks, pairs)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Property-based fuzzing of the knetlink module from inside the guest.")
    ap.add_argument("--proto", type=int, default=nlframes.DEFAULT_PROTO)
    ap.add_argument("--examples", type=int, default=10000, help="frames to generate (at least)")
    ap.add_argument(
        "--batch", type=int, default=25, help="frames per hypothesis example (amortises its per-example cost)"
    )
    ap.add_argument("--seed", type=int, default=None, help="hypothesis seed (default: random, printed)")
    ap.add_argument("--expect-out", help="write the expected link: lines here, one per line")
    args = ap.parse_args(argv)
    run_seed: int = args.seed if args.seed is not None else int.from_bytes(os.urandom(4), "little")
    batch = max(1, args.batch)
    target: int = args.examples
    sock = NetlinkSocket(args.proto)
    try:
        sock.open()
    except SocketError as exc:
        sys.stderr.write(f"{exc}\n")
        return 2
    tally = Tally()

    def check_frames(frames: list[bytes]) -> None:
        for data in frames:
            check_one(sock, tally, data)

    def generate(run_seed: int, examples: int) -> None:
        test = settings(
            max_examples=examples,
            database=None,
            deadline=None,
            phases=[Phase.generate],
            suppress_health_check=list(HealthCheck),
        )(given(st.lists(datagram(), min_size=batch, max_size=batch))(check_frames))
        seed(run_seed)(test)()

    start = time.monotonic()
    next_seed = run_seed
    # hypothesis may stop a little early (examples it has seen before): top up with the next seed
    aborted = False
    try:
        while tally.frames < target:
            generate(next_seed, (target - tally.frames + batch - 1) // batch)
            next_seed += 1
    except TooManyViolations:
        aborted = True
    finally:
        sock.close()
    elapsed = time.monotonic() - start

    if args.expect_out:
        with open(args.expect_out, "w", encoding="ascii") as f:
            f.writelines(line + "\n" for line in tally.links)
    summary = {
        "frames": tally.frames,
        "messages": tally.messages,
        "data_messages": tally.data_messages,
        "malformed": tally.malformed,
        "bytes": tally.bytes,
        "acks_by_errno": tally.acks_by_errno,
        "violations": tally.violations,
        "examples": tally.examples,
        "elapsed_s": round(elapsed, 3),
        "frames_per_s": round(tally.frames / elapsed, 1) if elapsed > 0 else None,
        "seed": run_seed,
        "batch": batch,
        "aborted_after_violations": aborted,
    }
    sys.stdout.write(json.dumps(summary, ensure_ascii=True, separators=(",", ":")) + "\n")
    return 0 if not tally.violations else 1


if __name__ == "__main__":
    sys.exit(main())
