"""A line-oriented data channel between host and guest over virtio-serial.

QEMU listens on a unix socket (the host end); in the guest the port shows up
as /dev/vportNpM with the name "knh.0". A guest program started with its
stdin and stdout on that port (see Guest.start_on_channel) talks JSON lines
with the host without touching the serial console: no tty line limit, no
echo, and the shell stays free for other commands.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

from harness.errors import ChannelError

# Finds the port's device node by name (no udev in the guest, so no /dev/virtio-ports links). Other ports
# may follow it (an arm64 guest's console is a virtio port too): the status is the search's, not the last test's.
FIND_PORT = (
    'for p in /sys/class/virtio-ports/*; do [ "$(cat "$p/name" 2>/dev/null)" = {name} ] && echo "/dev/${{p##*/}}"; '
    'done; true'
)


class Channel:
    """Host end of the virtio-serial channel."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._sock: socket.socket | None = None
        self._buf = b""

    def connect(self, timeout: float = 10.0) -> None:
        if self._sock is not None:
            return
        deadline = time.monotonic() + timeout
        while True:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                s.connect(str(self.path))
            except OSError as e:
                s.close()
                if time.monotonic() > deadline:
                    raise ChannelError(f"cannot connect to the guest channel {self.path}: {e}") from None
                time.sleep(0.05)
                continue
            self._sock = s
            return

    @property
    def connected(self) -> bool:
        return self._sock is not None

    def send_line(self, line: str) -> None:
        if self._sock is None:
            raise ChannelError("channel is not connected")
        try:
            self._sock.sendall(line.encode() + b"\n")
        except OSError as e:
            raise ChannelError(f"writing to the guest channel failed: {e}") from None

    def read_line(self, timeout: float) -> str:
        if self._sock is None:
            raise ChannelError("channel is not connected")
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise ChannelError(
                    f"no line from the guest channel within {timeout:.1f} s (partial: {self._buf[-200:]!r})"
                )
            self._sock.settimeout(left)
            try:
                chunk = self._sock.recv(65536)
            except TimeoutError:
                continue
            except OSError as e:
                raise ChannelError(f"reading the guest channel failed: {e}") from None
            if not chunk:
                raise ChannelError("the guest channel was closed (guest gone?)")
            self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        return line.decode(errors="replace").rstrip("\r")

    def drain(self) -> None:
        """Forget buffered input (after a guest program restarted)."""
        self._buf = b""

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
