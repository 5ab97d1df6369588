"""Choose the QEMU accelerator: KVM only after a guest has been seen to run on it.

On nested setups ``/dev/kvm`` can open fine while guests cannot run: with a PVM
host QEMU's ``-cpu host`` dies with ``failed to set MSR 0x10a``, and other CPU
models run at emulation speed or hang silently. So "auto" boots the real kernel
once under KVM with no root filesystem and waits for the kernel to reach its
"VFS: Unable to mount root fs" panic, which a working KVM guest does in about a
second. Anything else means TCG, with the reason in one line.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from harness.config import ACCEL_CHOICES
from harness.errors import ConfigError
from harness.guest.cmdline import QemuSpec, qemu_argv

Accel = Literal["kvm", "tcg"]
PROBE_DEADLINE_S = 15.0
# The kernel reaches this line after init/do_mounts.c gave up on the root fs.
PROBE_SUCCESS = ("VFS: Unable to mount root", "Kernel panic - not syncing")


@dataclass(frozen=True)
class ProbeResult:
    works: bool
    reason: str  # one line, shown to the user
    elapsed_s: float


@dataclass(frozen=True)
class AccelDecision:
    accel: Accel
    reason: str

    def notice(self) -> str:
        return f"knetlink-harness: accelerator {self.accel.upper()}: {self.reason}"


def kvm_device_usable(dev: Path = Path("/dev/kvm")) -> str | None:
    """None when /dev/kvm can be opened read-write, else why not."""
    if not dev.exists():
        return f"{dev} does not exist"
    try:
        fd = os.open(dev, os.O_RDWR | os.O_CLOEXEC)
    except OSError as e:
        return f"{dev} cannot be opened: {e.strerror}"
    os.close(fd)
    return None


# No root device: the kernel gives up on the root fs and panics, the sign that it ran.
PROBE_KERNEL_ARGS = ("panic=-1", "root=/dev/knh-no-root", "loglevel=4")


def probe_spec(qemu: str, image: Path) -> QemuSpec:
    """The KVM probe boot: QEMU's default PC machine and the CPU model vng uses under KVM, no initramfs,
    no shared directories, no channel, the kernel console on stdio."""
    return QemuSpec(image=image, accel="kvm", qemu=qemu, name=None, machine=None, memory="256M", cpus=1,
                    kernel_args=PROBE_KERNEL_ARGS)  # fmt: skip


def probe_argv(qemu: str, image: Path) -> list[str]:
    """QEMU command line of the KVM probe boot."""
    return qemu_argv(probe_spec(qemu, image))


def probe_kvm(image: Path, qemu: str = "qemu-system-x86_64", deadline_s: float = PROBE_DEADLINE_S) -> ProbeResult:
    """Boot ``image`` under KVM with no root and see whether it panics on time."""
    start = time.monotonic()
    try:
        proc = subprocess.run(
            probe_argv(qemu, image),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=deadline_s,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return ProbeResult(
            False,
            f"/dev/kvm opens but a probe guest did not boot within {deadline_s:.0f} s under KVM"
            " (nested or emulated KVM?)",
            time.monotonic() - start,
        )
    except FileNotFoundError:
        return ProbeResult(False, f"{qemu} not found", time.monotonic() - start)
    elapsed = time.monotonic() - start
    out = (proc.stdout + proc.stderr).decode(errors="replace")
    return interpret_probe(out, elapsed)


def interpret_probe(output: str, elapsed_s: float) -> ProbeResult:
    """Decide from the probe's console output whether KVM ran the guest."""
    if any(marker in output for marker in PROBE_SUCCESS):
        return ProbeResult(True, f"a probe guest booted under KVM in {elapsed_s:.1f} s", elapsed_s)
    lines = [ln.strip() for ln in output.splitlines() if ln.strip()]
    err = next((ln for ln in lines if "qemu" in ln.lower() or "kvm" in ln.lower() or "error" in ln.lower()), "")
    detail = f": {err[:160]}" if err else " (no kernel output)"
    return ProbeResult(False, f"/dev/kvm opens but QEMU could not run a guest under KVM{detail}", elapsed_s)


def choose_accel(
    requested: str,
    image: Path,
    *,
    device_check: Callable[[], str | None] = kvm_device_usable,
    probe: Callable[[Path], ProbeResult] = probe_kvm,
    foreign: bool = False,
) -> AccelDecision:
    """Apply the user's request ("auto", "kvm" or "tcg") to what the machine can do. A `foreign` kernel (of
    another architecture than the host's, harness.arches) runs under TCG: KVM runs the host's only."""
    if requested not in ACCEL_CHOICES:
        raise ConfigError(f"accelerator must be one of {', '.join(ACCEL_CHOICES)}, not {requested!r}")
    if requested == "tcg":
        return AccelDecision("tcg", "requested")
    if foreign:
        if requested == "kvm":
            raise ConfigError("KVM was requested for a kernel of another architecture than the host's: KVM runs "
                              "guests of the host's architecture only; fix: --accel auto or tcg")  # fmt: skip
        return AccelDecision("tcg", "a guest of another architecture than the host's runs under TCG")
    problem = device_check()
    if problem is None:
        result = probe(image)
        if result.works:
            return AccelDecision("kvm", result.reason)
        problem = result.reason
    if requested == "kvm":
        raise ConfigError(f"KVM was requested but is not usable: {problem}")
    return AccelDecision("tcg", f"{problem}; using TCG (software emulation, slower)")


def qemu_binary() -> str | None:
    return shutil.which("qemu-system-x86_64")


def host_tsc_khz(cpuinfo: Path = Path("/proc/cpuinfo")) -> int | None:
    """The host's TSC frequency estimate ("cpu MHz"), for a TCG guest's tsc_early_khz=.

    A TCG guest reads the host's TSC; microvm offers no other early clock to
    calibrate against. None when /proc/cpuinfo has no figure.
    """
    try:
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("cpu MHz"):
                return int(float(line.split(":")[1]) * 1000)
    except (OSError, ValueError, IndexError):
        pass
    return None
