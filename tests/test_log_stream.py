"""The kernel log copied from /dev/kmsg as it is written: records parsed once, in order, lost ones named;
values of small guest files read by the shell itself."""

from __future__ import annotations

import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest

from harness.errors import GuestCommandError, GuestReadError, KernelLogLost
from harness.guest.kernel_ops import TAINT_COMMAND, GuestKernel
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
    assert command.endswith(f"| cat > {tmp_path / 'kmsg'} 2>/dev/null &")


def test_find_takes_the_last_record_before_the_end(tmp_path: Path) -> None:
    stream = _stream(tmp_path)
    (tmp_path / "kmsg").write_text("6,1,1,-;m\n6,2,2,-;x\n6,3,3,-;m\n6,4,4,-;y\n")
    stream.poll()
    assert stream.find("m", 4) == 2 and stream.find("m", 2) == 0 and stream.find("z", 4) == -1


class _BashGuest:
    """Runs the guest commands GuestKernel sends in a local bash (the guest shell is bash)."""

    alive = True

    def run(self, command: str, check: bool = False, **_: object) -> SimpleNamespace:
        proc = subprocess.run(["bash", "-c", command], capture_output=True, text=True, check=False)
        if check and proc.returncode:
            raise GuestCommandError(command, proc.returncode, proc.stdout + proc.stderr)
        return SimpleNamespace(status=proc.returncode, output=proc.stdout)


@pytest.mark.parametrize("content", ["21\n", "  two words \n", "last\nline"])
def test_read_value_is_the_files_last_line_read_by_the_shell(tmp_path: Path, content: str) -> None:
    (tmp_path / "param").write_text(content)
    ops = GuestKernel(_BashGuest(), tmp_path)  # type: ignore[arg-type]
    assert ops.read_value(str(tmp_path / "param")) == content.strip().splitlines()[-1]


def test_read_value_of_a_missing_or_empty_file_is_a_command_error(tmp_path: Path) -> None:
    (tmp_path / "empty").write_text("")
    ops = GuestKernel(_BashGuest(), tmp_path)  # type: ignore[arg-type]
    for name in ("missing", "empty"):
        with pytest.raises(GuestCommandError):
            ops.read_value(str(tmp_path / name))


def test_taint_is_read_by_the_shell(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ops = GuestKernel(_BashGuest(), tmp_path)  # type: ignore[arg-type]
    assert ops.taint() == int(Path("/proc/sys/kernel/tainted").read_text())
    assert "cat" not in TAINT_COMMAND.split()


def test_insmod_and_rmmod_are_busybox_applets_when_the_root_has_busybox(monkeypatch: pytest.MonkeyPatch) -> None:
    from harness.guest import kernel_ops

    for found, want in (("/usr/bin/busybox", ("/usr/bin/busybox", "insmod")), (None, ("insmod",))):
        kernel_ops.module_tool.cache_clear()
        monkeypatch.setattr(kernel_ops.shutil, "which", lambda name, found=found: found)
        assert kernel_ops.module_tool("insmod") == want
    kernel_ops.module_tool.cache_clear()
