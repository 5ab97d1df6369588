"""Pure builders for the virtme-ng command line and the guest kernel command line."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .kernel import Kernel

# Kernel arguments every harness guest gets:
#  panic=-1         a panic reboots at once, and with QEMU's -no-reboot that ends QEMU,
#                   so a dead guest is noticed in milliseconds instead of hanging;
#  loglevel=7       every kernel message reaches the kernel console, which is written
#                   to a per-guest file (not the interactive console), so an oops is
#                   recorded even when the guest dies;
#  log_buf_len=8M   thousands of link: lines per test fit in the ring buffer.
BASE_KERNEL_ARGS = ("panic=-1", "loglevel=7", "log_buf_len=8M")


@dataclass(frozen=True)
class VngSpec:
    """Everything needed to start one guest with virtme-ng."""

    kernel: Kernel
    accel: str  # "kvm" or "tcg"
    shell: Path  # script virtme-ng runs as the guest's login shell
    rw_dirs: tuple[Path, ...]  # host directories the guest may write
    memory: str = "1G"
    cpus: int = 2
    name: str = "knh"
    kernel_args: tuple[str, ...] = field(default=BASE_KERNEL_ARGS)
    vng: str = "vng"


def vng_argv(spec: VngSpec) -> list[str]:
    """The argv that boots `spec` with an interactive shell on the console.

    --force-9p: on hosts without a usable virtiofsd (Debian 12 ships only
    QEMU's legacy one, which rejects vng's arguments), vng loses ~3 s trying
    virtiofs before falling back to 9p anyway.
    """
    argv = [
        spec.vng,
        "--run", str(spec.kernel.image),
        "--name", spec.name,
        "--memory", spec.memory,
        "--cpus", str(spec.cpus),
        "--shell", str(spec.shell),
        "--force-9p",
        "--append", " ".join(spec.kernel_args),
        "--qemu-opts=-no-reboot",
    ]  # fmt: skip
    if spec.accel == "tcg":
        argv.append("--disable-kvm")
    for d in spec.rw_dirs:
        argv += ["--rwdir", str(d)]
    return argv


def shell_join(argv: Sequence[str]) -> str:
    """Quote an argv for the guest's bash (the only place a string is built)."""
    import shlex

    return shlex.join(list(argv))
