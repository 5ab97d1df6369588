"""The bench's floor: plain QEMU with the kernel's vmlinux and an init that prints a marker,
the qemu engine's machine without its shared directories, channel and guest shell."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from harness.build.initramfs import cpio_newc
from harness.errors import BenchError, MissingDependencyError
from harness.guest.cmdline import QemuSpec, qemu_argv

RAW_MARKER = "KNH-RAW-BOOT-DONE"
RAW_INIT = f"""#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc
/bin/busybox echo {RAW_MARKER}
/bin/busybox echo o > /proc/sysrq-trigger
""".encode()


def raw_initramfs(cache: Path) -> Path:
    busybox = shutil.which("busybox")
    if busybox is None:
        raise MissingDependencyError("busybox", "apt-get install busybox-static")
    out = cache / "initramfs" / "raw-boot.cpio"
    out.parent.mkdir(parents=True, exist_ok=True)
    data = cpio_newc([("bin", 0o040755, b""), ("proc", 0o040755, b""), ("dev", 0o040755, b""),
                      ("bin/busybox", 0o100755, Path(busybox).read_bytes()), ("init", 0o100755, RAW_INIT)])  # fmt: skip
    out.write_bytes(data)
    return out


RAW_KERNEL_ARGS = ("panic=-1", "loglevel=1")


def raw_boot_argv(qemu: str, image: Path, initrd: Path, accel: str, memory: str, cpus: int,
                  tsc_khz: int | None = None) -> list[str]:  # fmt: skip
    """The floor: the qemu engine's machine and direct kernel entry with an init that prints and powers off
    (no shared directories, no channel, the kernel console on stdio)."""
    return qemu_argv(QemuSpec(image=image, initrd=initrd, accel=accel, qemu=qemu, name=None, memory=memory,
                              cpus=cpus, kernel_args=RAW_KERNEL_ARGS, tsc_khz=tsc_khz))  # fmt: skip


def time_raw_boot(argv: Sequence[str], timeout: float = 120.0) -> float:
    start = time.monotonic()
    proc = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert proc.stdout is not None
    seen = b""
    try:
        while True:
            if time.monotonic() - start > timeout:
                raise BenchError(f"raw boot did not print its marker within {timeout:.0f} s")
            chunk = os.read(proc.stdout.fileno(), 4096)
            if not chunk:
                raise BenchError(f"raw boot exited without its marker: {seen[-500:]!r}")
            seen += chunk
            if RAW_MARKER.encode() in seen:
                return time.monotonic() - start
    finally:
        proc.kill()
        proc.wait()
