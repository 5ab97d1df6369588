"""A module whose bug only one architecture sees is red there and green on the other.

tests/modules/unaligned_atomic keeps an atomic_t at an odd offset of a buffer. x86 takes a
locked add at any address inside a cache line; arm64's atomics need natural alignment and
take an alignment fault in the module's init (under QEMU's TCG, and on CPUs without
FEAT_LSE2). On arm64 `python -m harness exec` on the run's kernel must say so: exit 253 with
the Oops decoded to the module's source. On x86 the module loads in the suite's guest and
prints its line; the kernel watch fails the test on any splat it causes there.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from inner_runs import same_kernel_options  # tests/kernel/inner_runs.py

from harness.cli.base import EXIT_KERNEL_SPLAT
from harness.config import GUEST_SCRIPTS
from harness.guest.kernel_ops import GuestKernel
from harness.session import KernelSession, ModuleSource

pytestmark = pytest.mark.kernel

REPO = GUEST_SCRIPTS.parent
UNALIGNED = Path(__file__).resolve().parent.parent / "modules" / "unaligned_atomic"


def exec_unaligned(session: KernelSession, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "harness", "exec", "-q", *same_kernel_options(session), "--results-dir",
            str(tmp_path / "results"), "--module-dir", str(UNALIGNED), "--dmesg", "--", "true"]  # fmt: skip
    return subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=600, check=False)


def test_an_unaligned_atomic_faults_on_arm64_only(knh_kernel_session: KernelSession, guest_kernel: GuestKernel,
                                                  tmp_path: Path) -> None:  # fmt: skip
    if knh_kernel_session.kernel.arch == "arm64":
        proc = exec_unaligned(knh_kernel_session, tmp_path)
        shown = f"exit {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
        assert proc.returncode == EXIT_KERNEL_SPLAT, shown
        assert "alignment fault" in proc.stderr and "unaligned_atomic_init" in proc.stderr, shown
        assert "tests/modules/unaligned_atomic/unaligned_atomic.c:" in proc.stderr, shown  # decoded (cross addr2line)
        return
    # the suite's guest, under the kernel watch (a fresh guest of its own, as `exec` boots, costs a boot)
    mark = guest_kernel.mark()
    loaded = knh_kernel_session.load({}, ModuleSource(UNALIGNED))
    try:
        texts = [line.text for line in guest_kernel.lines_since(mark)]
        assert "unaligned_atomic: users 1" in texts, texts
    finally:
        knh_kernel_session.unload(loaded)
