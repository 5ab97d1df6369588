"""eBPF observation of the receive path: what the kernel executed, not only what it printed.

Each test attaches one bpftrace program (guest_scripts/bpf/) before it sends
anything and reads the program's maps after. The eBPF assertions come first:
a module that prints every link: line but skips acks fails on them even
though its log looks right.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import pytest

from harness.config import GUEST_SCRIPTS, HarnessConfig
from harness.guest.ebpf import BpfRunner
from harness.guest.kernel_ops import GuestKernel
from harness.guest.vm import Guest
from harness.knetlink.ebpf import KnetlinkCounts, LatencyReport, measure_handler_latency
from harness.knetlink.fixtures import LinkLogWindow
from harness.knetlink.senders import Ack, PySender
from harness.pytest_plugin.ebpf_fixtures import skip_or_fail

sys.path.insert(0, str(GUEST_SCRIPTS))
from nlframes import (  # guest_scripts is not a package
    NLM_F_ACK,
    NLM_F_REQUEST,
    encode_header,
    nlmsg_length,
    nlmsg_space,
)

EINVAL = 22

SINGLES = 20
BATCH = 8


def frame(payload: bytes, *, seq: int, length: int | None = None, type_: int = 0, flags: int = NLM_F_REQUEST) -> bytes:
    """One netlink message; `length` overrides nlmsg_len (to make it lie)."""
    real = nlmsg_length(len(payload))
    header = encode_header(real if length is None else length, type_, flags, seq)
    return header + payload + b"\0" * (nlmsg_space(len(payload)) - real)


def test_handler_and_acks_counted_per_message(
    ebpf: BpfRunner, py_sender: PySender, kernel_log: LinkLogWindow
) -> None:
    """SINGLES one-message datagrams and one datagram with BATCH messages."""
    with ebpf.trace("knetlink") as t:
        single_acks = [py_sender.send(f"single {i}", wait_ms=1000) for i in range(SINGLES)]
        batch_acks = py_sender.batch([{"text": f"batched {i}"} for i in range(BATCH)])
    assert t.results is not None
    seen = KnetlinkCounts.from_results(t.results)

    # What the kernel executed (eBPF) ...
    assert seen.datagrams == SINGLES + 1, t.results.summary()
    assert seen.messages == SINGLES + BATCH, t.results.summary()
    assert seen.acks == {0: SINGLES + BATCH}, "netlink_ack calls by errno; " + t.results.summary()
    # ... agrees with what userspace received and what the module printed.
    assert [[a.error for a in acks] for acks in single_acks] == [[0]] * SINGLES
    assert [a.error for a in batch_acks] == [0] * BATCH
    assert len(kernel_log.links()) == SINGLES + BATCH


@pytest.mark.full  # the quick tier keeps one probe test (bpftrace starts in seconds under TCG)
def test_ack_errno_breakdown_for_valid_and_malformed_frames(
    ebpf: BpfRunner, py_sender: PySender, kernel_log: LinkLogWindow
) -> None:
    with ebpf.trace("knetlink") as t:
        valid = [py_sender.send(f"valid {i}") for i in range(3)]
        # nlmsg_len claims 100 bytes, the datagram has 20: -EINVAL, nothing handled
        too_long = py_sender.raw(frame(b"abcd", seq=71, length=100))
        # a good message, then one whose length runs past the end: ack 0, then -EINVAL
        mixed = py_sender.raw(frame(b"good", seq=72) + frame(b"bad!", seq=73, length=200), expect=2)
        # 8 bytes, shorter than a header: -EINVAL (sequence number 0)
        short = py_sender.raw(b"\x08\0\0\0\0\0\0\0")
        # control-range type with NLM_F_ACK: handled and acked 0, not printed
        control = py_sender.raw(frame(b"", seq=74, type_=3, flags=NLM_F_REQUEST | NLM_F_ACK))
    assert t.results is not None
    seen = KnetlinkCounts.from_results(t.results)

    assert seen.acks == {0: 3 + 1 + 1, EINVAL: 3}, t.results.summary()
    assert seen.datagrams == 3 + 4, t.results.summary()
    assert seen.messages == 3 + 1 + 1, t.results.summary()  # malformed frames never reach the handler
    assert [[a.error for a in acks] for acks in valid] == [[0]] * 3
    assert too_long == [Ack(71, EINVAL)]
    assert mixed == [Ack(72, 0), Ack(73, EINVAL)]
    assert short == [Ack(0, EINVAL)]
    assert control == [Ack(74, 0)]
    kernel_log.assert_links(["valid 0", "valid 1", "valid 2", "good"])


# Latency bounds (docs/ebpf.md, "Latency bounds"). LATENCY_MESSAGES makes the p99 the 20th slowest
# call, so a handful of calls stretched by the host (a descheduled vCPU, a guest tick) cannot move it;
# a slow path taken by more than 1% of the messages does.
LATENCY_MESSAGES = 2000
TAIL_FACTOR = 50  # p99 below this many times the median of the same run
P99_LIMIT_US = 5_000  # absolute bound for TCG (measured p99 13-23 µs, median 7.5-8.7 µs); KVM is faster


def latency_problem(report: LatencyReport) -> str | None:
    """Why `report` breaks a latency bound, or None."""
    median, p99 = report.median_us, report.quantile_us(0.99)
    assert median is not None and p99 is not None, report.render()
    if p99 >= TAIL_FACTOR * median:
        return (f"p99 {p99:.1f} us is {p99 / median:.0f}x the median {median:.1f} us of the same run (bound "
                f"{TAIL_FACTOR}x): more than 1% of the messages took a slow path")  # fmt: skip
    if p99 >= P99_LIMIT_US:
        return (f"p99 {p99:.1f} us is above the absolute bound {P99_LIMIT_US} us for TCG guests (median "
                f"{median:.1f} us): the handler itself got slower")  # fmt: skip
    return None


@pytest.mark.full  # the quick tier keeps one probe test (bpftrace starts in seconds under TCG)
def test_handler_latency_p99_within_bounds(
    ebpf: BpfRunner, guest: Guest, guest_kernel: GuestKernel, py_sender: PySender, knh_config: HarnessConfig,
    record_property: Callable[[str, object], None],
) -> None:  # fmt: skip
    """The bounds hold in a run, or in a second run right after it. A slow path in the handler is systematic:
    it shows in both. A busy host stretches calls at random (a TCG vCPU descheduled: in .ci/run beside the debug
    kernel's build one run had 75 of 2,000 calls above 131 us, p99 64x the median); a second run is not
    stretched the same way. Both runs' histograms are in the failure."""
    clock = ebpf.clock_reason()
    if clock is not None:
        skip_or_fail(clock, knh_config)
    problems: list[str] = []
    for attempt in (1, 2):
        bench: dict[str, object] = {}

        def send(into: dict[str, object] = bench) -> None:
            into.update(py_sender.bench(LATENCY_MESSAGES))

        report = measure_handler_latency(guest, guest_kernel.scratch, send, runner=ebpf)
        print(f"\nrun {attempt}:\n" + report.render())
        record_property(f"knetlink_rcv_median_us_run{attempt}", report.median_us)
        record_property(f"knetlink_rcv_p99_us_run{attempt}", report.quantile_us(0.99))
        assert bench.get("errors") == 0, bench
        assert report.count == LATENCY_MESSAGES, report.render()  # one knetlink_rcv call per message sent
        problem = latency_problem(report)
        if problem is None:
            return
        problems.append(f"run {attempt}: {problem}\n{report.render()}")
    pytest.fail("the latency bounds failed in two runs in a row:\n" + "\n".join(problems))
