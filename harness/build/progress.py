"""Progress of a kernel build: objects compiled so far, read from make's log while it runs."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

Notify = Callable[[str], None]


class BuildProgress:
    """Counts the objects make reports compiling (`  CC ...` lines in the log) while a build runs and
    notifies every `interval` seconds: count, and a percentage of the largest build of the same entry
    recorded before (a full build; an incremental one ends well before 100%)."""

    def __init__(self, log: Path, notify: Notify, what: str, expected: int = 0, interval: float = 60.0) -> None:
        import threading

        self.log, self.notify, self.what, self.expected, self.interval = log, notify, what, expected, interval
        self.objects = 0
        self._offset = log.stat().st_size if log.exists() else 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="knh-build-progress", daemon=True)
        self._start = time.monotonic()

    def __enter__(self) -> BuildProgress:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        self.poll()

    def poll(self) -> int:
        """Read what the log gained since the last poll; the number of objects compiled so far."""
        try:
            with self.log.open("rb") as f:
                f.seek(self._offset)
                chunk = f.read()
        except OSError:
            return self.objects
        end = chunk.rfind(b"\n") + 1  # a partial last line is read next time
        self._offset += end
        self.objects += count_compiled(chunk[:end].decode(errors="replace"))
        return self.objects

    def message(self) -> str:
        done = self.poll()
        elapsed = time.monotonic() - self._start
        share = (
            f" (~{min(99, 100 * done // self.expected)}% of a full build's {self.expected})" if self.expected else ""
        )
        return f"{self.what}: building, {done} objects compiled{share}, {elapsed / 60:.0f} min"

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.notify(self.message())


def count_compiled(text: str) -> int:
    """Objects compiled, from make's short output: `  CC      kernel/fork.o`, `  CC [M]  fs/x.o`, `  AS ...`."""
    return sum(1 for line in text.splitlines() if line.startswith(("  CC ", "  AS ")))


def previous_objects(record_path: Path) -> int:
    try:
        record = json.loads(record_path.read_text())
        value = record.get("full_objects", record.get("objects", 0))
    except (OSError, ValueError, AttributeError):
        return 0
    return value if isinstance(value, int) else 0
