"""Parse what `bpftrace -f json` printed: maps, histograms and stats, typed.

Pure: text in, BpfResults out (BpfOutputError on anything else). The in-guest runner
is harness.guest.ebpf; docs/ebpf.md shows the output format.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from harness.errors import BpfOutputError


@dataclass(frozen=True)
class Bucket:
    """One histogram bucket: values from `low` to `high`, both inclusive (None = unbounded)."""

    low: int | None
    high: int | None
    count: int

    def __str__(self) -> str:
        lo = "-inf" if self.low is None else str(self.low)
        hi = "inf" if self.high is None else str(self.high)
        return f"[{lo}, {hi}]"


@dataclass(frozen=True)
class Histogram:
    """A bpftrace hist() or lhist(): the buckets bpftrace printed, in order."""

    buckets: tuple[Bucket, ...]

    @property
    def total(self) -> int:
        return sum(b.count for b in self.buckets)

    def nonzero(self) -> tuple[Bucket, ...]:
        return tuple(b for b in self.buckets if b.count)

    def count_above(self, value: int) -> int:
        """Samples in buckets whose lower bound is above `value` (buckets straddling it not counted)."""
        return sum(b.count for b in self.buckets if b.low is not None and b.low > value)

    def max_bound(self) -> int | None:
        """Upper bound of the highest non-empty bucket (None when that bucket is unbounded or all are empty)."""
        filled = self.nonzero()
        return filled[-1].high if filled else None

    def quantile_bucket(self, q: float) -> Bucket | None:
        """The bucket holding the q-quantile (0 < q <= 1), None for an empty histogram."""
        if not 0 < q <= 1:
            raise ValueError("q must be in (0, 1]")
        total = self.total
        if total == 0:
            return None
        target = q * total
        seen = 0
        for b in self.buckets:
            seen += b.count
            if b.count and seen >= target:
                return b
        return self.nonzero()[-1]

    def quantile(self, q: float) -> float | None:
        """Estimate of the q-quantile, interpolated linearly inside its bucket.

        Bucket [low, high] of integer samples is taken as the interval
        [low, high + 1). None when the histogram is empty or the quantile falls
        into an unbounded bucket.
        """
        bucket = self.quantile_bucket(q)
        if bucket is None or bucket.low is None or bucket.high is None:
            return None
        target = q * self.total
        before = 0
        for b in self.buckets:
            if b is bucket:
                break
            before += b.count
        frac = (target - before) / bucket.count
        return bucket.low + max(0.0, min(1.0, frac)) * (bucket.high + 1 - bucket.low)

    def render(self, unit: str = "", width: int = 40) -> str:
        """Text rendering like bpftrace's, non-empty range only."""
        filled = [i for i, b in enumerate(self.buckets) if b.count]
        if not filled:
            return "(empty)"
        shown = self.buckets[filled[0] : filled[-1] + 1]
        peak = max(b.count for b in shown)
        lines = []
        for b in shown:
            bar = "@" * (round(width * b.count / peak) if peak else 0)
            lines.append(f"{b!s:>22} {unit:<3}{b.count:>9} |{bar:<{width}}|")
        return "\n".join(lines)


@dataclass(frozen=True)
class Stats:
    """A bpftrace stats(): count, average and total (integers, as bpftrace prints them)."""

    count: int
    average: int
    total: int


MapValue = int | dict[str, int]
HistValue = Histogram | dict[str, Histogram]
StatsValue = Stats | dict[str, Stats]


@dataclass(frozen=True)
class BpfResults:
    """Everything a bpftrace run printed, by kind. Map names are given without the '@'.

    maps:   count()/sum()/min()/max()/avg() maps; a scalar map is an int, a keyed
            map a dict from key text (bpftrace joins several keys with ',') to int.
            A count() map that never fired is printed as 0 (scalar) by bpftrace.
    hists:  hist()/lhist() maps (a Histogram, or a dict of them for keyed maps).
    stats:  stats() maps.
    """

    maps: Mapping[str, MapValue] = field(default_factory=dict)
    hists: Mapping[str, HistValue] = field(default_factory=dict)
    stats: Mapping[str, StatsValue] = field(default_factory=dict)
    printfs: tuple[str, ...] = ()
    attached_probes: int | None = None
    lost_events: int = 0
    other: tuple[Mapping[str, Any], ...] = ()
    stderr: str = ""

    # -- lookups with messages that say what was there ------------------------
    def _missing(self, kind: str, name: str) -> KeyError:
        have = ", ".join("@" + h for h in sorted({*self.maps, *self.hists, *self.stats})) or "none"
        return KeyError(f"no {kind} @{name} in the bpftrace output (maps printed: {have})")

    def count(self, name: str, key: str | int | None = None, *, default: int | None = 0) -> int:
        """Value of a count()-like map; a map that never fired is not printed and counts as `default`.

        Pass default=None to insist that the map was printed.
        """
        name = name.lstrip("@")
        if name not in self.maps:
            if default is None:
                raise self._missing("map", name)
            return default
        value = self.maps[name]
        if key is None:
            if isinstance(value, dict):
                return sum(value.values())
            return value
        if not isinstance(value, dict):
            raise TypeError(f"@{name} has no keys")
        return value.get(str(key), 0)

    def keyed(self, name: str) -> dict[str, int]:
        """A keyed map as a dict (empty when the map never fired)."""
        value = self.maps.get(name.lstrip("@"), {})
        if isinstance(value, int):
            raise TypeError(f"@{name.lstrip('@')} is a scalar map ({value}), not a keyed one")
        return dict(value)

    def int_keyed(self, name: str) -> dict[int, int]:
        """A map keyed by one integer, e.g. @ack[errno] -> {0: 20, 22: 1}."""
        return {int(k): v for k, v in sorted(self.keyed(name).items(), key=lambda kv: int(kv[0]))}

    def hist(self, name: str, key: str | int | None = None) -> Histogram:
        """A hist()/lhist() map; an empty Histogram when the map never fired."""
        value = self.hists.get(name.lstrip("@"))
        if value is None:
            return Histogram(())
        if isinstance(value, dict):
            if key is None:
                raise TypeError(f"@{name.lstrip('@')} is keyed ({', '.join(value)}): pass key=")
            return value.get(str(key), Histogram(()))
        return value

    def stat(self, name: str) -> Stats | None:
        value = self.stats.get(name.lstrip("@"))
        if isinstance(value, dict):
            raise TypeError(f"@{name.lstrip('@')} is keyed: use .stats[name][key]")
        return value

    def summary(self) -> str:
        """Short text of all maps, for assertion messages."""
        parts = [f"@{k}: {v}" for k, v in sorted(self.maps.items())]
        for k, h in sorted(self.hists.items()):
            if isinstance(h, Histogram):
                parts.append(f"@{k}: hist of {h.total}")
            else:
                parts.append(f"@{k}: " + ", ".join(f"[{kk}] hist of {hh.total}" for kk, hh in h.items()))
        for k, s in sorted(self.stats.items()):
            parts.append(f"@{k}: {s}")
        if self.lost_events:
            parts.append(f"lost events: {self.lost_events}")
        return "; ".join(parts) or "(no maps printed)"


def _int(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise BpfOutputError(f"{where}: expected an integer, got {value!r}")
    return value


def _histogram(value: Any, where: str) -> Histogram:
    if not isinstance(value, list):
        raise BpfOutputError(f"{where}: expected a list of buckets, got {type(value).__name__}")
    buckets = []
    for item in value:
        if not isinstance(item, dict) or "count" not in item:
            raise BpfOutputError(f"{where}: bad bucket {item!r}")
        low = _int(item["min"], where) if "min" in item else None
        high = _int(item["max"], where) if "max" in item else None
        buckets.append(Bucket(low, high, _int(item["count"], where)))
    return Histogram(tuple(buckets))


def _stats(value: Any, where: str) -> Stats:
    if not isinstance(value, dict) or not {"count", "average", "total"} <= set(value):
        raise BpfOutputError(f"{where}: bad stats value {value!r}")
    return Stats(_int(value["count"], where), _int(value["average"], where), _int(value["total"], where))


def _map_value(value: Any, where: str) -> MapValue:
    if isinstance(value, dict):
        return {str(k): _int(v, where) for k, v in value.items()}
    return _int(value, where)


def _is_stats(value: Any) -> bool:
    return isinstance(value, dict) and set(value) == {"count", "average", "total"}


def parse_output(stdout: str, stderr: str = "") -> BpfResults:
    """Parse `bpftrace -f json` standard output (one JSON object per line; blank lines ignored)."""
    maps: dict[str, MapValue] = {}
    hists: dict[str, HistValue] = {}
    stats: dict[str, StatsValue] = {}
    printfs: list[str] = []
    other: list[Mapping[str, Any]] = []
    attached: int | None = None
    lost = 0
    for lineno, line in enumerate(stdout.splitlines(), 1):
        if not line.strip():
            continue
        where = f"bpftrace output line {lineno}"
        try:
            obj = json.loads(line)
        except ValueError as e:
            raise BpfOutputError(f"{where} is not JSON ({e}): {line[:300]!r}") from None
        if not isinstance(obj, dict) or "type" not in obj:
            raise BpfOutputError(f"{where} is not a bpftrace JSON record: {line[:300]!r}")
        kind, data = obj["type"], obj.get("data")
        if kind == "printf":
            printfs.append(str(data))
        elif kind == "attached_probes":
            attached = _int(data.get("probes") if isinstance(data, dict) else None, where)
        elif kind == "lost_events":
            lost += _int(data.get("events") if isinstance(data, dict) else None, where)
        elif kind in ("map", "hist", "stats"):
            if not isinstance(data, dict):
                raise BpfOutputError(f"{where}: {kind} record without a map: {line[:300]!r}")
            for raw_name, value in data.items():
                name = str(raw_name).lstrip("@")
                w = f"{where} (@{name})"
                if kind == "map":
                    maps[name] = _map_value(value, w)
                elif kind == "hist":
                    if isinstance(value, dict):
                        hists[name] = {str(k): _histogram(v, w) for k, v in value.items()}
                    else:
                        hists[name] = _histogram(value, w)
                elif _is_stats(value):
                    stats[name] = _stats(value, w)
                elif isinstance(value, dict) and value and all(_is_stats(v) for v in value.values()):
                    stats[name] = {str(k): _stats(v, w) for k, v in value.items()}
                else:  # avg() is printed as a "stats" record holding plain numbers
                    maps[name] = _map_value(value, w)
        else:
            other.append(obj)
    return BpfResults(maps, hists, stats, tuple(printfs), attached, lost, tuple(other), stderr)
