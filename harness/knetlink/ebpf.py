"""What the knetlink bpftrace programs (guest_scripts/bpf/knetlink*.bt) saw, typed: the receive
path's calls and acks, and the in-kernel handling latency per datagram."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from harness.guest.ebpf import BpfRunner
from harness.guest.vm import Guest
from harness.kernel_log.bpftrace import BpfResults, Histogram, Stats


@dataclass(frozen=True)
class KnetlinkCounts:
    """What knetlink.bt saw: calls of the receive path and acks by errno (0 = success, 22 = EINVAL)."""

    datagrams: int  # knetlink_rcv calls
    messages: int  # knetlink_handle_msg calls
    acks: dict[int, int]  # netlink_ack calls from inside knetlink_rcv, by -err

    @property
    def acks_total(self) -> int:
        return sum(self.acks.values())

    @classmethod
    def from_results(cls, results: BpfResults) -> KnetlinkCounts:
        return cls(results.count("rcv"), results.count("handle_msg"), results.int_keyed("ack"))


@dataclass(frozen=True)
class LatencyReport:
    """knetlink_rcv entry-to-return time from knetlink_latency.bt (one sample per datagram)."""

    log2_ns: Histogram
    fine_us: Histogram  # 1 us buckets up to 99 us
    coarse_us: Histogram  # 10 us buckets up to 9999 us
    stats_ns: Stats | None

    @classmethod
    def from_results(cls, results: BpfResults) -> LatencyReport:
        return cls(results.hist("lat_ns"), results.hist("lat_us_fine"), results.hist("lat_us"),
                   results.stat("lat_stats_ns"))  # fmt: skip

    @property
    def count(self) -> int:
        return self.log2_ns.total

    @property
    def mean_us(self) -> float | None:
        return self.stats_ns.average / 1000 if self.stats_ns and self.stats_ns.count else None

    def quantile_us(self, q: float) -> float | None:
        """q-quantile in µs from the finest histogram that bounds it (None when there are no samples)."""
        for hist, scale in ((self.fine_us, 1.0), (self.coarse_us, 1.0), (self.log2_ns, 1e-3)):
            value = hist.quantile(q)
            if value is not None:
                return value * scale
        return None

    @property
    def median_us(self) -> float | None:
        return self.quantile_us(0.5)

    def render(self) -> str:
        """A few text lines for a benchmark report."""
        if not self.count:
            return "in-kernel knetlink_rcv latency: no samples"

        def fmt(v: float | None) -> str:
            return "n/a" if v is None else f"{v:.1f} us"

        head = (
            f"in-kernel knetlink_rcv latency (eBPF, {self.count} calls): median {fmt(self.median_us)}, "
            f"p90 {fmt(self.quantile_us(0.9))}, p99 {fmt(self.quantile_us(0.99))}, mean {fmt(self.mean_us)}"
        )
        return head + "\n" + self.log2_ns.render("ns")


def measure_handler_latency(
    guest: Guest, scratch: Path, send: Callable[[], object], *, program: str | Path = "knetlink_latency",
    timeout: float | None = None, runner: BpfRunner | None = None,
) -> LatencyReport:  # fmt: skip
    """Run `send()` (e.g. `lambda: py_sender.bench(20000)`) under knetlink_latency.bt and return the latency.

    `scratch` is a guest-writable shared directory, e.g. `guest_kernel.scratch`. The module must be
    loaded. Raises EbpfUnavailable when the guest cannot run bpftrace or its clock advances in whole
    timer ticks (the numbers would be 0 or a tick). `report.median_us` is the in-kernel median per
    datagram; `report.render()` is the text for a report. `runner` reuses a runner for the same
    guest (the `ebpf` fixture's), whose availability is already known.
    """
    runner = runner or BpfRunner(guest, scratch)
    runner.check()
    runner.check_clock()
    with runner.trace(program, timeout=timeout) as t:
        send()
    assert t.results is not None
    return LatencyReport.from_results(t.results)
