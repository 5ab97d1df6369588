"""A bpftrace program that cannot be stopped at the end of a test leaves a record: the stop's error
does not replace the test's own outcome, and it is not lost either (a warning in pytest's summary)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from harness.errors import CommandTimeout
from harness.guest import ebpf
from harness.guest.console import CommandResult
from harness.guest.ebpf import BpfRunner, BpfTrace


class StuckGuest:
    """A live guest whose `kill` commands time out: nothing can stop the program."""

    alive = True

    def __init__(self) -> None:
        self.commands: list[str] = []

    def run(self, command: Any, *, timeout: float | None = None, check: bool = False) -> CommandResult:
        self.commands.append(str(command))
        if str(command).startswith("kill "):
            raise CommandTimeout(f"timed out after 60.0 s running {command!r}")
        return CommandResult(str(command), 0, "", 0.0)


def _running_trace(tmp_path: Path) -> tuple[BpfRunner, BpfTrace, StuckGuest]:
    guest = StuckGuest()
    runner = BpfRunner(guest, tmp_path)  # type: ignore[arg-type]
    trace = BpfTrace(runner, ebpf.PROGRAMS_DIR / "knetlink.bt", tmp_path / "bpf-1-knetlink")
    trace.pid = 4242
    runner._running.append(trace)
    return runner, trace, guest


def _assert_not_stopped_warning(record: pytest.WarningsRecorder) -> None:
    cls = getattr(ebpf, "BpfNotStoppedWarning", None)
    assert isinstance(cls, type), "ebpf.BpfNotStoppedWarning is missing"
    [w] = [w for w in record if issubclass(w.category, ebpf.BpfStopWarning)]
    assert issubclass(w.category, cls) and issubclass(w.category, ebpf.BpfStopWarning)
    assert "knetlink.bt" in str(w.message) and "timed out after 60.0 s" in str(w.message)


def test_a_trace_that_cannot_be_stopped_after_a_failing_test_leaves_a_warning(tmp_path: Path) -> None:
    _, trace, guest = _running_trace(tmp_path)
    with pytest.warns(ebpf.BpfStopWarning, match=r"knetlink\.bt could not be stopped") as record:
        with pytest.raises(ValueError, match="the test's own failure"), trace:
            raise ValueError("the test's own failure")
    assert guest.commands == ["kill -INT 4242 2>/dev/null"]
    _assert_not_stopped_warning(record)


def test_a_trace_the_test_left_running_that_cannot_be_stopped_leaves_a_warning(tmp_path: Path) -> None:
    runner, _, guest = _running_trace(tmp_path)
    with pytest.warns(ebpf.BpfStopWarning, match=r"knetlink\.bt could not be stopped") as record:
        runner.stop_all()
    assert runner._running == [] and guest.commands == ["kill -INT 4242 2>/dev/null"]
    _assert_not_stopped_warning(record)
