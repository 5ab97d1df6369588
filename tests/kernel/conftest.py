"""Fixtures shared by the kernel tests that run small pytest sessions of their own (pytester)."""

from __future__ import annotations

import pytest

from harness.config import default_cache_root
from harness.session import KernelSession


@pytest.fixture
def shared_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    """pytester points HOME at its own directory: keep the harness cache (vmlinux, initramfs, kernel and
    module builds) shared with the inner runs."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(default_cache_root().parent))


@pytest.fixture
def debug_spec(knh_kernel_session: KernelSession) -> str:
    """The outer run's debug kernel (built or taken from the cache when the run resolved it), for the
    tests marked debug_kernel, which run only on one."""
    named = knh_kernel_session.requested_kernel
    assert named is not None, "debug_kernel tests run only on a named debug-profile kernel"
    return named
