"""Fakes of a guest as the kernel watch (harness.kernel_watch) and the plugin's fixtures use it: FakeGuest for
harness.guest.vm.Guest, FakeKernel for harness.guest.kernel_ops.GuestKernel, FakeSession for
harness.session.KernelSession. A test checks a window on a FakeKernel directly; the conftest.py of an inner
pytest run (pytester) gets a FakeSession from `knh_kernel_session = session_fixture(...)`.

An inner run in this process finds this module where the tests find it (tests/ is on sys.path); one in a
subprocess needs tests/ on its PYTHONPATH."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from harness.guest.kernel_ops import LogMark
from harness.kernel_log.dmesg import KernelLine, parse_lines
from harness.kernel_log.kmemleak import LeakReading

BOOTED = "[    1.000000] booted\n"
PANIC = (
    "[   12.000000] Kernel panic - not syncing: deliberate\n"
    "[   12.000001] CPU: 0 PID: 1 Comm: x Not tainted 6.1.0 #1\n"
    "[   12.000002] Kernel Offset: disabled\n"
)


class FakeGuest:
    """A guest that answers every command with status 0 and no output. With `root`, its kernel console file is
    there (a boot line in it); without, its files do not exist. crash() ends the console with a panic and the
    guest with it; close() stops it as the harness does (not a death)."""

    def __init__(self, root: Path | None = None, name: str = "guest-1") -> None:
        self.alive = True
        self.dead_reason: str | None = None
        self.launch = SimpleNamespace(name=name)
        where = root if root is not None else Path("/nonexistent")
        self.paths = SimpleNamespace(kernel_log=where / f"kernel-{name}.log", transcript=where / f"console-{name}.log")
        if root is not None:
            self.paths.kernel_log.write_text(BOOTED)

    def run(self, argv: object, timeout: float | None = None, check: bool = False) -> SimpleNamespace:
        return SimpleNamespace(status=0, output="")

    def close(self) -> None:
        self.alive = False

    def crash(self) -> None:
        with self.paths.kernel_log.open("a") as f:
            f.write(PANIC)
        self.alive, self.dead_reason = False, "QEMU exited"


class FakeKernel:
    """GuestKernel stand-in on `guest` (a FakeGuest without files by default).

    `log`: what the kernel logged since the test's mark; a read takes it (the next read gets only what was
    logged since). `taint`: the taint value. `loaded`: the guest's module list. `kmemleak`: has_kmemleak's
    answer; after an rmmod the next scan (find_leaks) finds `leaks`. `mark_error`, `taint_error`,
    `rmmod_error`: raised by mark, taint and rmmod. `calls` lists the log reads, module lists, unloads and
    scans in order; `journal`, a file, gets the unloads and scans, one a line (an inner pytest run's test
    cannot reach its fakes). load() and unloaded() are what a test does to the kernel itself."""

    def __init__(self, guest: FakeGuest | None = None, *, log: str = "", taint: int = 0, loaded: Sequence[str] = (),
                 kmemleak: bool = False, leaks: LeakReading | None = None, mark_error: Exception | None = None,
                 taint_error: Exception | None = None, rmmod_error: Exception | None = None,
                 journal: Path | None = None) -> None:  # fmt: skip
        self.guest = guest if guest is not None else FakeGuest()
        self.unloads = 0
        self.log: list[KernelLine] = parse_lines(log)
        self.taint_value = taint
        self.loaded = list(loaded)
        self.kmemleak = kmemleak
        self.leaks = leaks
        self.found: LeakReading | None = None  # what the next scan finds
        self.mark_error, self.taint_error, self.rmmod_error = mark_error, taint_error, rmmod_error
        self.journal = journal
        self.calls: list[str] = []
        self._marks = itertools.count(1)

    def _did(self, call: str, *, journal: bool = False) -> None:
        self.calls.append(call)
        if journal and self.journal is not None:
            with self.journal.open("a") as f:
                f.write(call + "\n")

    def mark(self) -> LogMark:
        if self.mark_error is not None:
            raise self.mark_error
        return LogMark(f"knh-mark:{next(self._marks)}")

    def taint(self) -> int:
        if self.taint_error is not None:
            raise self.taint_error
        return self.taint_value

    def mark_and_taint(self) -> tuple[LogMark, int]:
        return self.mark(), self.taint()

    def lines_between(self, start: LogMark | None, end: LogMark) -> list[KernelLine]:
        return self.lines_since(start)

    def lines_since(self, mark: LogMark | None) -> list[KernelLine]:
        self._did("lines_since")
        lines, self.log = self.log, []
        return lines

    def has_kmemleak(self) -> bool:
        return self.kmemleak

    def module_list(self) -> tuple[str, ...]:
        self._did("module_list")
        return tuple(self.loaded)

    def rmmod(self, name: str) -> None:
        self._did(f"rmmod {name}", journal=True)
        if self.rmmod_error is not None:
            raise self.rmmod_error
        self.loaded.remove(name)
        self.unloaded(self.leaks)

    def find_leaks(self) -> LeakReading | None:
        self._did("find_leaks", journal=True)
        found, self.found = self.found, None
        return found

    def load(self, name: str, log: str = "") -> None:
        """The test loaded module `name`; the kernel logged `log` meanwhile."""
        self.loaded.append(name)
        self.log += parse_lines(log)

    def unloaded(self, found: LeakReading | None, log: str = "") -> FakeKernel:
        """A module was unloaded: the next check scans first, and the scan finds `found`; the kernel logged `log`
        meanwhile. Returns the kernel."""
        self.unloads += 1
        self.found = found
        self.log += parse_lines(log)
        return self


class FakeSession:
    """KernelSession stand-in: the kernel `release`, one guest at a time in `root`, booted on first use and again
    after it died or was discarded (recycle; the `journal` file gets a line), each guest with a FakeKernel of
    `kernel_options` (and the journal). `built`: the names of the modules the session built, for decode_inputs."""

    def __init__(self, root: Path, *, release: str = "fake", built: Iterable[str] = (), journal: Path | None = None,
                 **kernel_options: Any) -> None:  # fmt: skip
        self.root = root
        self.kernel = SimpleNamespace(release=release, label=release)
        self.spec_for_reproduction = release
        self.built = tuple(built)
        self.journal = journal
        self.kernel_options = kernel_options
        self.current_guest: FakeGuest | None = None
        self._guest_kernel: FakeKernel | None = None
        self._names = itertools.count(1)
        self.guest_requests = 0

    @property
    def current_guest_kernel(self) -> FakeKernel | None:
        return self._guest_kernel if self.current_guest is not None else None

    def guest(self) -> FakeGuest:
        self.guest_requests += 1
        if self.current_guest is None or not self.current_guest.alive:
            self.current_guest = FakeGuest(self.root, f"guest-{next(self._names)}")
            self._guest_kernel = FakeKernel(self.current_guest, journal=self.journal, **self.kernel_options)
        return self.current_guest

    def guest_kernel(self) -> FakeKernel:
        self.guest()
        assert self._guest_kernel is not None
        return self._guest_kernel

    def decode_inputs(self) -> tuple[dict[str, Path], dict[str, Path], None]:
        return {name: self.root / f"{name}.ko" for name in self.built}, {}, None

    def recycle(self, reason: str) -> None:
        guest = self.current_guest
        if guest is None:
            return
        if self.journal is not None:
            with self.journal.open("a") as f:
                f.write(f"discard {guest.launch.name}: {reason}\n")
        guest.close()
        self.current_guest = None

    def close(self) -> None:
        pass


def session_fixture(**options: Any) -> Any:
    """The knh_kernel_session fixture of an inner run's conftest.py: a FakeSession with `options`, in a directory
    of its own."""

    @pytest.fixture(scope="session")
    def knh_kernel_session(tmp_path_factory: pytest.TempPathFactory) -> FakeSession:
        return FakeSession(tmp_path_factory.mktemp("guests"), **options)

    return knh_kernel_session
