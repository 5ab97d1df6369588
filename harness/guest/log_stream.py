"""The guest's kernel log, copied as the kernel writes it, read on the host without a guest process.

One reader per guest, started once in the background of the guest shell, copies /dev/kmsg
into a file of the shared results directory: ``dd`` reads record by record (a /dev/kmsg read
returns one record; ``conv=noerror`` reads on after the kernel overwrote records it had not
read yet, which the sequence numbers then show), and ``cat`` writes what the pipe holds in
large writes to the 9p file. Reading the log is then a mark written to /dev/kmsg (a shell
builtin) and a wait on the host until the mark's record is in the file: no ``dmesg`` process
per read, and the host parses only what is new.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from harness.errors import GuestReadError, KernelLogLost
from harness.kernel_log.dmesg import KernelLine
from harness.kernel_log.kmsg import KmsgRecord, lines_of, parse_chunk

# /dev/kmsg refuses a read into a buffer smaller than the record (EINVAL): records are at most
# about 1 KiB of text plus the dictionary.
READ_BLOCK = 16384
WAIT_S = 20.0  # for a mark to reach the file; the reader runs behind only while the kernel logs a flood


def reader_command(path: Path) -> str:
    """The guest shell command that starts the reader in the background."""
    return f"dd if=/dev/kmsg bs={READ_BLOCK} conv=noerror 2>/dev/null | cat > {path} 2>/dev/null &"


class KernelLogStream:
    """The records of one guest's /dev/kmsg copy at `path`, parsed once each, in order."""

    def __init__(self, path: Path, *, sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic) -> None:  # fmt: skip
        self.path = path
        self.records: list[KmsgRecord] = []
        self._offset = 0  # bytes of the file parsed so far
        self._last_seq: int | None = None
        self._sleep = sleep
        self._clock = clock

    def poll(self) -> None:
        """Parse what the reader appended since the last poll. Lost records are a KernelLogLost."""
        try:
            with self.path.open("rb") as f:
                f.seek(self._offset)
                data = f.read()
        except FileNotFoundError:
            return
        except OSError as e:
            raise GuestReadError(f"the guest's kernel log copy {self.path} is unreadable on the host: {e}; the "
                                 "guest writes it to the shared results directory, which must be readable "
                                 "here") from None  # fmt: skip
        end = data.rfind(b"\n") + 1
        chunk = parse_chunk(data[:end].decode("utf-8", "replace"), self._last_seq)
        self._offset += end
        if chunk.records:
            self.records.extend(chunk.records)
            self._last_seq = chunk.records[-1].seq
        if chunk.lost:
            first, last = chunk.lost[0][0], chunk.lost[-1][1]
            raise KernelLogLost(f"kernel log records {first}..{last} were overwritten before the guest's reader "
                                "copied them, so the lines in between cannot be checked; log less between two "
                                "checks (rate-limit the module's messages) or boot with a bigger log_buf_len "
                                "(harness/guest/cmdline.py BASE_KERNEL_ARGS)")  # fmt: skip

    def wait_for(self, text: str, *, alive: Callable[[], bool]) -> int:
        """Index in `records` of the record whose text is `text` (a mark just written), once it
        is in the file. A guest that dies meanwhile ends the wait (the caller finds it dead)."""
        deadline = self._clock() + WAIT_S
        start = len(self.records)
        delay = 0.001
        while True:
            self.poll()
            for index in range(start, len(self.records)):
                if self.records[index].holds(text):
                    return index
            start = len(self.records)
            if not alive() or self._clock() > deadline:
                raise GuestReadError(f"the guest's kernel log reader did not copy the line {text!r} into "
                                     f"{self.path} within {WAIT_S:.0f} s; the reader (`{reader_command(self.path)}`) "
                                     "stopped or the guest is too busy to run it")  # fmt: skip
            self._sleep(delay)
            delay = min(delay * 2, 0.02)

    def find(self, text: str, end: int) -> int:
        """Index of the last record before `end` whose text is `text`; -1 when there is none."""
        for index in range(end - 1, -1, -1):
            if self.records[index].holds(text):
                return index
        return -1

    def lines(self, start: int, end: int) -> list[KernelLine]:
        """The lines of records start..end-1."""
        return lines_of(self.records[start:end])
