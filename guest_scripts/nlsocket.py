"""The guest scripts' netlink socket to the kernel (nl_send.py, fuzz_frames.py).

Standard library only, plus nlframes for decoding what comes back. The module
under test handles a message in the sender's context, so its acks are queued
before send() returns; :meth:`NetlinkSocket.receive` reads what is queued and
waits only for what is still missing.
"""

from __future__ import annotations

import errno
import select
import socket
import struct
import time

from nlframes import decode_acks

TYPE_CHECKING = False
if TYPE_CHECKING:
    from nlframes import Ack

RECV_TIMEOUT_S = 2.0  # a blocking recv() (the bench loop) gives up after this
RECV_BUF = 256 * 1024  # error acks echo the request (up to ~64 KiB)
SO_RCVBUF_WANT = 1 << 20


class SocketError(Exception):
    """The socket could not be opened, or a send or receive on it failed."""


class NetlinkSocket:
    """One netlink socket of protocol ``proto`` to the kernel, opened on first
    use and reopened on the next use after :meth:`close` or a failed send."""

    def __init__(self, proto: int) -> None:
        self.proto = proto
        self.sock: socket.socket | None = None
        self.buf = bytearray(RECV_BUF)
        self.view = memoryview(self.buf)
        self.next_seq = 1
        self._poller: select.poll | None = None

    def open(self) -> socket.socket:
        if self.sock is not None:
            return self.sock
        try:
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, self.proto)
        except OSError as exc:
            raise SocketError(f"socket: {exc}") from exc
        try:
            sock.bind((0, 0))  # the kernel picks the port id
            sock.connect((0, 0))  # peer: the kernel, so send() works
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SO_RCVBUF_WANT)
            except OSError:
                pass  # the default size still works, overruns are reported
            tv = struct.pack("@ll", int(RECV_TIMEOUT_S), 0)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, tv)
        except OSError as exc:
            sock.close()
            raise SocketError(f"socket: {exc}") from exc
        self.sock = sock
        self._poller = select.poll()
        self._poller.register(sock, select.POLLIN)
        return sock

    def close(self) -> None:
        """Close the socket; the next use opens a new one.

        An open socket of the module's protocol holds a reference on the
        module, so a long-lived sender closes it before the module is unloaded.
        """
        if self.sock is not None:
            self.sock.close()
            self.sock = None
            self._poller = None

    def take_seq(self, count: int = 1) -> int:
        """The next sequence number, reserving ``count`` of them (0 is skipped on wrap)."""
        seq = self.next_seq
        self.next_seq = (self.next_seq + count) & 0xFFFFFFFF or 1
        return seq

    def drain(self) -> None:
        """Drop datagrams left over from an earlier request."""
        sock = self.open()
        while True:
            try:
                sock.recv_into(self.buf, 0, socket.MSG_DONTWAIT)
            except OSError:  # BlockingIOError: nothing left
                return

    def send(self, datagram: bytes, *, drain: bool = True) -> None:
        """Send one datagram, after dropping stale replies unless ``drain`` is False."""
        sock = self.open()
        if drain:
            self.drain()
        try:
            sock.send(datagram)
        except OSError as exc:
            # e.g. ECONNREFUSED once the module is gone: start afresh next time
            self.close()
            raise SocketError(f"socket: send: {exc}") from exc

    def receive(self, expect: int, wait_s: float) -> list[Ack]:
        """Decoded replies: everything queued, waiting up to ``wait_s`` while
        fewer than ``expect`` arrived (``expect`` <= 0: the whole ``wait_s``).

        A receive-queue overrun (ENOBUFS: the kernel dropped replies) shows
        up in the list as ``{"type": None, "overrun": True}``.
        """
        sock = self.open()
        poller = self._poller
        assert poller is not None
        recv_into, buf, view = sock.recv_into, self.buf, self.view
        acks: list[Ack] = []
        deadline = time.monotonic() + wait_s
        while True:
            try:
                n = recv_into(buf, 0, socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                if 0 < expect <= len(acks):
                    return acks
                left = deadline - time.monotonic()
                if left <= 0:
                    return acks
                poller.poll(max(1, int(left * 1000)))
                continue
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:
                    acks.append({"type": None, "overrun": True})
                    continue
                raise SocketError(f"socket: recv: {exc}") from exc
            acks.extend(decode_acks(view[:n]))
