"""Pure builders for the virtme-ng command line and the guest kernel command line."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .kernel import Kernel
from .memdebug import helpers_from_env, kernel_config, memory_debug_args

# Kernel arguments every harness guest gets:
#  panic=-1         a panic reboots at once, and with QEMU's -no-reboot that ends QEMU,
#                   so a dead guest is noticed in milliseconds instead of hanging;
#  loglevel=5       warnings and worse (oopses, WARNINGs, panics: everything a splat
#                   prints) reach the kernel console, which is written to a per-guest
#                   file (not the interactive console), so they are recorded even when
#                   the guest dies. A module's info lines stay out of it: under TCG
#                   every console line costs ~0.4 ms of the sender's round trip. The
#                   kernel log (dmesg) has every line either way;
#  log_buf_len=8M   thousands of module log lines per test fit in the ring buffer.
BASE_KERNEL_ARGS = ("panic=-1", "loglevel=5", "log_buf_len=8M")

# Drivers udev loads in virtme-ng's guest that no test here needs (emulated SATA/CD,
# watchdogs, SMBus, PC speaker, a nested KVM the guest cannot use...). Loading
# them is a large part of virtme-ng's udev coldplug time under TCG.
GUEST_NOISE_MODULES = (
    "kvm_amd", "kvm_intel", "kvm", "irqbypass", "ccp", "sr_mod", "cdrom", "sg", "iTCO_wdt", "intel_pmc_bxt",
    "iTCO_vendor_support", "ahci", "libahci", "libata", "psmouse", "evdev", "serio_raw", "pcspkr",
    "i2c_i801", "i2c_smbus", "lpc_ich", "button", "qemu_fw_cfg", "virtiofs", "fuse",
)  # fmt: skip


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
    extra_args: tuple[str, ...] = ()  # appended verbatim (experiments, user overrides)
    image: Path | None = None  # boot this image instead of kernel.image (e.g. the uncompressed vmlinux)
    blacklist: tuple[str, ...] = GUEST_NOISE_MODULES
    # Memory-debug helpers the kernel has built in and switched off (harness.memdebug), turned on by an argument
    memory_debug: tuple[str, ...] = field(default_factory=helpers_from_env)


def vng_executable() -> str:
    """virtme-ng from the running interpreter's environment, else from PATH."""
    import shutil
    import sys

    local = Path(sys.executable).parent / "vng"
    return str(local) if local.exists() else (shutil.which("vng") or "vng")


def vng_argv(spec: VngSpec) -> list[str]:
    """The argv that boots `spec` with an interactive shell on the console.

    --force-9p: on hosts without a usable virtiofsd (Debian 12 ships only
    QEMU's legacy one, which rejects vng's arguments), vng loses ~3 s trying
    virtiofs before falling back to 9p anyway. An uncompressed vmlinux (PVH
    entry) skips the in-guest decompressor, ~1 s under TCG.
    """
    kernel_args = [*spec.kernel_args, *memory_debug_args(kernel_config(spec.kernel), spec.memory_debug)]
    if spec.blacklist:
        kernel_args.append("module_blacklist=" + ",".join(spec.blacklist))
    argv = [
        spec.vng,
        "--run", str(spec.image or spec.kernel.image),
        "--name", spec.name,
        "--memory", spec.memory,
        "--cpus", str(spec.cpus),
        "--shell", str(spec.shell),
        "--force-9p",
        "--append", " ".join(kernel_args),
        "--qemu-opts=-no-reboot",
    ]  # fmt: skip
    if spec.accel == "tcg":
        argv.append("--disable-kvm")
    for d in spec.rw_dirs:
        argv += ["--rwdir", str(d)]
    return argv + list(spec.extra_args)


@dataclass(frozen=True)
class QemuSpec:
    """The fast engine: QEMU started directly on an uncompressed kernel and a busybox initramfs."""

    kernel: Kernel
    image: Path  # uncompressed vmlinux (PVH entry) when available, else the bzImage
    initrd: Path
    accel: str
    shell: Path
    rw_dirs: tuple[Path, ...]
    fresh_dirs: tuple[Path, ...]  # read-only, uncached: the host writes there during the run
    kernel_log: Path
    channel: Path | None = None  # unix socket of the virtio-serial data channel
    mapped_dirs: tuple[tuple[Path, Path], ...] = ()  # (guest path, host path), read-only, uncached
    memory: str = "1G"
    cpus: int = 2
    name: str = "knh"
    cwd: Path = Path("/")
    kernel_args: tuple[str, ...] = field(default=BASE_KERNEL_ARGS)
    qemu: str = "qemu-system-x86_64"
    tsc_khz: int | None = None  # host TSC frequency: tsc_early_khz= under TCG (see qemu_argv)
    memory_debug: tuple[str, ...] = field(default_factory=helpers_from_env)  # as in VngSpec


def qemu_opt(value: object) -> str:
    """A value inside a QEMU `key=value,...` option: commas are doubled."""
    return str(value).replace(",", ",,")


def qemu_argv(spec: QemuSpec) -> list[str]:
    """Direct QEMU boot. ttyS0 is the interactive console (stdio), ttyS1 the kernel console (a file).

    microvm with virtio-mmio devices (found through its ACPI tables; virtio_mmio is
    in the initramfs): ~0.3 s faster than q35 under TCG, no PCI bus to enumerate.
    Under TCG microvm has no early clock to calibrate against and hangs in
    calibrate_delay() in a few percent of boots, so the host's TSC frequency is
    passed as tsc_early_khz= (the TCG guest's TSC is the host's).
    """
    accel = ["-accel", "kvm", "-cpu", "host"] if spec.accel == "kvm" else ["-accel", "tcg", "-cpu", "max"]
    argv = [
        spec.qemu, "-name", spec.name, "-M", "microvm", *accel,
        "-m", spec.memory, "-smp", str(spec.cpus),
        "-nodefaults", "-no-reboot", "-display", "none", "-vga", "none", "-net", "none",
        "-chardev", "stdio,id=con,signal=off", "-serial", "chardev:con",
        # microvm creates only ttyS0 from -serial; ttyS1 (the kernel console) is added as a device
        "-chardev", f"file,id=klog,path={qemu_opt(spec.kernel_log)}", "-device", "isa-serial,chardev=klog,index=1",
        "-fsdev", "local,id=hostroot,path=/,security_model=none,readonly=on,multidevs=remap",
        "-device", "virtio-9p-device,fsdev=hostroot,mount_tag=hostroot",
    ]  # fmt: skip
    for i, d in enumerate(spec.rw_dirs):
        argv += ["-fsdev", f"local,id=knhrw{i},path={qemu_opt(d)},security_model=none,multidevs=remap",
                 "-device", f"virtio-9p-device,fsdev=knhrw{i},mount_tag=knhrw{i}"]  # fmt: skip
    for i, d in enumerate(spec.fresh_dirs):
        argv += ["-fsdev", f"local,id=knhro{i},path={qemu_opt(d)},security_model=none,readonly=on,multidevs=remap",
                 "-device", f"virtio-9p-device,fsdev=knhro{i},mount_tag=knhro{i}"]  # fmt: skip
    for i, (_, host) in enumerate(spec.mapped_dirs):
        argv += ["-fsdev", f"local,id=knhmap{i},path={qemu_opt(host)},security_model=none,readonly=on,multidevs=remap",
                 "-device", f"virtio-9p-device,fsdev=knhmap{i},mount_tag=knhmap{i}"]  # fmt: skip
    if spec.channel is not None:
        argv += channel_qemu_args(spec.channel, transport="mmio")
    clock = [f"tsc_early_khz={spec.tsc_khz}"] if spec.accel == "tcg" and spec.tsc_khz else []
    args = [
        "console=ttyS1", "rdinit=/init", *spec.kernel_args, *clock,
        *memory_debug_args(kernel_config(spec.kernel), spec.memory_debug),
        f"knh.shell={spec.shell}", f"knh.cwd={spec.cwd}",
        "knh.rw=" + ",".join(str(d) for d in spec.rw_dirs),
        "knh.fresh=" + ",".join(str(d) for d in spec.fresh_dirs),
        "knh.map=" + ",".join(str(guest) for guest, _ in spec.mapped_dirs),
    ]  # fmt: skip
    return [*argv, "-kernel", str(spec.image), "-initrd", str(spec.initrd), "-append", " ".join(args)]


CHANNEL_NAME = "knh.0"


def channel_qemu_args(socket_path: Path, transport: str = "pci") -> list[str]:
    """A virtio-serial port named knh.0 whose host end is a unix socket (QEMU listens).

    `transport`: "pci" for virtme-ng's PC machine, "mmio" for the qemu engine's microvm.
    """
    controller = {"pci": "virtio-serial-pci", "mmio": "virtio-serial-device"}[transport]
    return [
        "-device", f"{controller},id=knhser",
        "-chardev", f"socket,id=knhch,path={qemu_opt(socket_path)},server=on,wait=off",
        "-device", f"virtserialport,bus=knhser.0,chardev=knhch,name={CHANNEL_NAME}",
    ]  # fmt: skip


def shell_join(argv: Sequence[str]) -> str:
    """Quote an argv for the guest's bash (the only place a string is built)."""
    import shlex

    return shlex.join(list(argv))
