"""The `ebpf` fixture: a BpfRunner for the test's guest, after the module under test is loaded.

When the guest cannot run bpftrace (not installed, does not start, kernel without the
bpf() system call) the test is skipped with the reason, or fails with it when the
require_ebpf setting is on (KNH_REQUIRE_EBPF=1 or --require-ebpf, as in CI): see
skip_or_fail(). Loaded by harness.pytest_plugin.plugin through `pytest_plugins`.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import pytest

from harness.config import SETTINGS_BY_NAME, HarnessConfig
from harness.guest.ebpf import BpfRunner, runner_for
from harness.guest.kernel_ops import GuestKernel
from harness.guest.vm import Guest
from harness.session import LoadedModule


def skip_or_fail(reason: str, config: HarnessConfig) -> NoReturn:
    """End a test whose guest cannot do the eBPF observation it is about: skip, or fail when required.

    The require_ebpf setting (KNH_REQUIRE_EBPF=1, --require-ebpf, ini knh_require_ebpf) makes it a
    failure, so a CI run cannot go green by running fewer tests.
    """
    setting = SETTINGS_BY_NAME["require_ebpf"]
    if config.require_ebpf:
        where = config.sources.get("require_ebpf", "the configuration")
        pytest.fail(f"eBPF observation is required ({setting.env}=1 from {where}) but unavailable: {reason}",
                    pytrace=False)  # fmt: skip
    pytest.skip(f"eBPF observation unavailable: {reason} (with {setting.env}=1 this is a failure)")


def available_runner(guest: Guest, scratch: Path, config: HarnessConfig) -> BpfRunner:
    """The guest's BpfRunner; skips or fails the test (skip_or_fail) when the guest cannot run bpftrace."""
    runner = runner_for(guest, scratch)
    reason = runner.unavailable_reason()
    if reason is not None:
        skip_or_fail(reason, config)
    return runner




@pytest.fixture
def ebpf(guest: Guest, guest_kernel: GuestKernel, kmod: LoadedModule, knh_config: HarnessConfig) -> Iterator[BpfRunner]:
    """A BpfRunner for the test's guest, after the module under test is loaded.

    When the guest cannot run bpftrace the test is skipped with the reason, or fails with it
    when the require_ebpf setting is on (skip_or_fail). Programs still running at the end of
    the test are stopped before the module unloads.
    """
    runner = available_runner(guest, guest_kernel.scratch, knh_config)
    try:
        yield runner
    finally:
        runner.stop_all()
