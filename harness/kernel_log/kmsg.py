"""Records read from /dev/kmsg, parsed as they arrive.

A reader in the guest copies /dev/kmsg into a file the host reads (harness.guest.log_stream).
The file grows by whole records: ``prio,seq,usec,flags[,caller=T1];text`` and, after a
record, its dictionary lines (`` KEY=value``). The kernel escapes control characters in the
text as ``\\xHH``, so a message printed over several lines is one record; it becomes the
lines ``dmesg -r`` prints for it (harness.kernel_log.dmesg parses both forms).

Pure: text in, records out. Sequence numbers say when records were lost: the kernel's ring
buffer overwrote them before the reader copied them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from harness.kernel_log.dmesg import KernelLine, parse_line


@dataclass(frozen=True)
class KmsgRecord:
    """One /dev/kmsg record: its sequence number and its kernel log line(s)."""

    seq: int
    lines: tuple[KernelLine, ...]

    def holds(self, text: str) -> bool:
        """True when the record's message is `text` (a mark the harness wrote)."""
        return self.lines[0].text.strip() == text


@dataclass(frozen=True)
class KmsgChunk:
    """What one read of the growing file held: the complete records, how many characters they
    took (the rest is a record still being written), and the sequence numbers never seen."""

    records: tuple[KmsgRecord, ...]
    consumed: int
    lost: tuple[tuple[int, int], ...] = ()  # (first, last) sequence numbers of each gap


def _record(header_line: str) -> KmsgRecord | None:
    prefix, sep, _ = header_line.partition(";")
    fields = prefix.split(",")
    if not sep or len(fields) < 4 or not fields[1].isdigit():
        return None
    line = parse_line(header_line)
    first, *rest = line.text.split("\n")
    lines = [KernelLine(line.level, line.timestamp, first, line.raw, line.caller)]
    lines += [KernelLine(None, None, text, text) for text in rest]  # as dmesg -r prints a multi-line record
    return KmsgRecord(int(fields[1]), tuple(lines))


def parse_chunk(text: str, last_seq: int | None) -> KmsgChunk:
    """The complete records in `text` (read from the file's current offset on), after `last_seq`.
    A record whose sequence number skips ahead of the previous one means records were lost."""
    end = text.rfind("\n") + 1
    records: list[KmsgRecord] = []
    lost: list[tuple[int, int]] = []
    previous = last_seq
    for raw in text[:end].split("\n"):
        if not raw or raw.startswith(" "):  # a dictionary line of the previous record
            continue
        record = _record(raw)
        if record is None or (previous is not None and record.seq <= previous):
            continue
        if previous is not None and record.seq > previous + 1:
            lost.append((previous + 1, record.seq - 1))
        records.append(record)
        previous = record.seq
    return KmsgChunk(tuple(records), end, tuple(lost))


def lines_of(records: Sequence[KmsgRecord]) -> list[KernelLine]:
    return [line for record in records for line in record.lines]
