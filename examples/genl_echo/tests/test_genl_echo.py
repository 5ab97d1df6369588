"""The genl_echo example module, driven over generic netlink inside a guest."""

from __future__ import annotations

import errno

import pytest
from genl_echo_client import EchoClient

from harness.build.module_build import BuiltModule
from harness.guest.kernel_ops import GuestKernel
from harness.pytest_plugin.fixtures import KernelLogWindow
from harness.session import LoadedModule


def test_builds_without_warnings(built_module: BuiltModule) -> None:
    assert built_module.warnings == ()
    assert [ko.name for ko in built_module.modules] == ["genl_echo.ko"]


def test_echo_replies_and_logs(kmod: LoadedModule, kernel_log: KernelLogWindow, echo: EchoClient) -> None:
    result = echo.send("hello world!", "second one")
    assert result.status == 0, result.output
    assert result.texts == ["hello world!", "second one"]
    texts = kernel_log.texts()
    assert any("family KNH_ECHO registered" in t for t in texts), texts
    echoed = [t for t in texts if t.startswith("genl_echo: echo ")]
    assert [t.split(" (")[0] for t in echoed] == ["genl_echo: echo hello world!", "genl_echo: echo second one"]


@pytest.mark.module_params(prefix="pong:")
def test_prefix_parameter(kmod: LoadedModule, echo: EchoClient) -> None:
    assert kmod.params == {"prefix": "pong:"}
    result = echo.send("ping")
    assert result.texts == ["pong:ping"], result.output


def test_request_without_attribute_is_einval(kmod: LoadedModule, echo: EchoClient) -> None:
    result = echo.send("ignored", no_attr=True)
    assert result.status == 1, result.output
    assert result.errors == [errno.EINVAL]


def test_control_characters_are_escaped_in_the_log(
    kmod: LoadedModule, kernel_log: KernelLogWindow, echo: EchoClient
) -> None:
    result = echo.send("a\tb")
    assert result.texts == ["a\tb"], result.output
    assert any(t.startswith("genl_echo: echo a\\tb ") for t in kernel_log.texts()), kernel_log.texts()


def test_family_comes_and_goes_with_the_module(
    built_module: BuiltModule, guest_kernel: GuestKernel, kernel_log: KernelLogWindow, echo: EchoClient
) -> None:
    assert echo.send("before").status == 2  # not registered yet
    name = guest_kernel.insmod(built_module.module())
    try:
        assert echo.send("loaded").texts == ["loaded"]
    finally:
        guest_kernel.rmmod(name)
    assert echo.send("after").status == 2
    assert any("family KNH_ECHO unregistered after 1 echoes" in t for t in kernel_log.texts()), kernel_log.texts()
