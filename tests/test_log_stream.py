"""The kernel log copied from /dev/kmsg as it is written: records parsed once, in order, lost ones named."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.errors import GuestReadError, KernelLogLost
from harness.guest.log_stream import KernelLogStream, reader_command
from harness.kernel_log.dmesg import parse_lines
from harness.kernel_log.kmsg import lines_of, parse_chunk

KMSG = (
    "6,100,5000000,-;first line\n"
    " SUBSYSTEM=net\n"
    " DEVICE=+net:lo\n"
    "4,101,5100000,-,caller=T42;WARNING: two\\x0aline record\n"
    "12,102,5200000,-;knh-mark:ab:1\n"
)
# What `dmesg -r` prints for the same records.
DMESG_R = (
    "<6>[    5.000000] first line\n"
    "<4>[    5.100000][    T42] WARNING: two\nline record\n"
    "<12>[    5.200000] knh-mark:ab:1\n"
)


def test_records_read_as_dmesg_r_prints_them() -> None:
    chunk = parse_chunk(KMSG, None)
    assert [r.seq for r in chunk.records] == [100, 101, 102]
    got = [(ln.level, ln.timestamp, ln.text, ln.caller) for ln in lines_of(chunk.records)]
    want = [(ln.level, ln.timestamp, ln.text, ln.caller) for ln in parse_lines(DMESG_R)]
    assert got == want
    assert chunk.consumed == len(KMSG) and chunk.lost == ()


def test_a_record_still_being_written_waits_for_its_newline() -> None:
    chunk = parse_chunk(KMSG + "6,103,5300000,-;half", None)
    assert [r.seq for r in chunk.records] == [100, 101, 102]
    assert chunk.consumed == len(KMSG)


def test_records_seen_are_skipped_and_gaps_are_lost_records() -> None:
    chunk = parse_chunk("6,99,1,-;old\n6,100,2,-;seen\n6,104,3,-;after a gap\n", 100)
    assert [r.seq for r in chunk.records] == [104]
    assert chunk.lost == ((101, 103),)


def _stream(tmp_path: Path) -> KernelLogStream:
    return KernelLogStream(tmp_path / "kmsg", sleep=lambda s: None)


def test_stream_parses_each_append_once(tmp_path: Path) -> None:
    stream = _stream(tmp_path)
    stream.poll()  # the reader has not created the file yet
    (tmp_path / "kmsg").write_text(KMSG[:40])
    stream.poll()
    assert [r.seq for r in stream.records] == [100]
    with (tmp_path / "kmsg").open("a") as f:
        f.write(KMSG[40:])
    stream.poll()
    stream.poll()
    assert [r.seq for r in stream.records] == [100, 101, 102]
    assert [ln.text for ln in stream.lines(1, 3)] == ["WARNING: two", "line record", "knh-mark:ab:1"]


def test_wait_for_finds_the_mark_once_it_is_copied(tmp_path: Path) -> None:
    stream = _stream(tmp_path)
    writes = iter([KMSG[:40], KMSG[40:]])

    def sleep(_: float) -> None:
        with (tmp_path / "kmsg").open("a") as f:
            f.write(next(writes))

    stream._sleep = sleep
    assert stream.wait_for("knh-mark:ab:1", alive=lambda: True) == 2


def test_wait_for_a_mark_that_never_comes_names_the_reader(tmp_path: Path) -> None:
    stream = _stream(tmp_path)
    with pytest.raises(GuestReadError, match="reader"):
        stream.wait_for("knh-mark:ab:9", alive=lambda: False)


def test_lost_records_are_kernel_log_lost(tmp_path: Path) -> None:
    stream = _stream(tmp_path)
    (tmp_path / "kmsg").write_text("6,1,1,-;a\n6,5,2,-;b\n")
    with pytest.raises(KernelLogLost, match=r"2\.\.4"):
        stream.poll()
    assert [r.seq for r in stream.records] == [1, 5]  # what arrived is kept


def test_reader_is_one_background_pipeline_into_the_file(tmp_path: Path) -> None:
    command = reader_command(tmp_path / "kmsg")
    assert command.startswith("dd if=/dev/kmsg ") and "conv=noerror" in command
    assert command.endswith(f"| cat > {tmp_path / 'kmsg'} &")
