"""The seed scenario and the module's basic contract, inside a guest."""

import struct

import pytest

from harness.build.module_build import BuiltModule
from harness.guest.kernel_ops import GuestKernel
from harness.knetlink.fixtures import KnetlinkModule, LinkLogWindow
from harness.knetlink.senders import Ack, CSender, PySender

NLMSG_HDRLEN = 16


def seed_frame(text: bytes) -> bytes:
    """What the seed's unetlink sends: type 0, flags 0, seq 0, NLMSG_SPACE(len), zero padded."""
    length = NLMSG_HDRLEN + len(text)
    space = (length + 3) & ~3
    return struct.pack("=IHHII", space, 0, 0, 0, 0) + text + b"\0" * (space - length)


def test_module_builds_without_warnings(built_module: BuiltModule) -> None:
    assert built_module.warnings == ()
    assert [ko.name for ko in built_module.modules] == ["knetlink.ko"]


def test_init_then_hello_from_python_sender(kernel_log: LinkLogWindow, py_sender: PySender) -> None:
    assert [a.error for a in py_sender.send("hello world!")] == [0]
    texts = kernel_log.texts()
    assert any("Init OK!" in t for t in texts), texts
    kernel_log.assert_links(["hello world!"])
    init_at = next(i for i, t in enumerate(texts) if "Init OK!" in t)
    assert texts.index("link:hello world!") > init_at


def test_hello_from_c_sender(kernel_log: LinkLogWindow, c_sender: CSender) -> None:
    result = c_sender.send("hello world!")
    assert result.status == 0, result.output
    assert [a.error for a in result.acks] == [0]
    kernel_log.assert_links(["hello world!"])


def test_seed_frame_is_printed_and_acked(kernel_log: LinkLogWindow, py_sender: PySender) -> None:
    acks = py_sender.raw(seed_frame(b"hello world!"), expect=1)
    assert acks == [Ack(0, 0)]
    kernel_log.assert_links(["hello world!"])


def test_hundred_messages_in_order(kernel_log: LinkLogWindow, py_sender: PySender) -> None:
    messages = [f"message {i:03d}" for i in range(100)]
    for m in messages:
        assert [a.error for a in py_sender.send(m)] == [0]
    kernel_log.assert_links(messages)


def test_insmod_rmmod_insmod(built_module: BuiltModule, guest_kernel: GuestKernel) -> None:
    ko = built_module.module()
    for _ in range(2):
        guest_kernel.insmod(ko, {"proto": "30"})
        assert guest_kernel.loaded("knetlink")
        guest_kernel.rmmod("knetlink")
        assert not guest_kernel.loaded("knetlink")


@pytest.mark.module_params(proto=31)
def test_other_protocol(kmod: KnetlinkModule, kernel_log: LinkLogWindow, py_sender: PySender) -> None:
    assert kmod.proto == 31
    assert [a.error for a in py_sender.send("on 31")] == [0]
    kernel_log.assert_links(["on 31"])
