import socket
import threading
import time
from pathlib import Path

import pytest

from harness.errors import ChannelError
from harness.guest.channel import Channel


def serve(path: Path, replies: list[bytes]) -> threading.Thread:
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(str(path))
    srv.listen(1)

    def run() -> None:
        conn, _ = srv.accept()
        with conn:
            conn.recv(4096)  # the first request
            for r in replies:
                conn.sendall(r)
                time.sleep(0.05)  # separate chunks
        srv.close()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def test_lines_split_across_chunks(tmp_path: Path) -> None:
    path = tmp_path / "s"
    serve(path, [b'{"a":', b'1}\n{"b":2}\n'])
    ch = Channel(path)
    ch.connect(timeout=5)
    ch.send_line("q1")
    ch.send_line("q2")
    assert ch.read_line(5) == '{"a":1}'
    assert ch.read_line(5) == '{"b":2}'
    ch.close()


def test_timeout_and_closed_peer(tmp_path: Path) -> None:
    path = tmp_path / "s"
    serve(path, [b"partial"])
    ch = Channel(path)
    ch.connect(timeout=5)
    ch.send_line("q")
    with pytest.raises(ChannelError, match=r"closed|within"):
        ch.read_line(1)


def test_connect_gives_up(tmp_path: Path) -> None:
    with pytest.raises(ChannelError, match="cannot connect"):
        Channel(tmp_path / "missing").connect(timeout=0.2)
