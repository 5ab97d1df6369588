"""Pure builders: the virtme-ng command line, the one QEMU command line, the guest kernel command line.

Everything comes in through a frozen spec: nothing here reads the environment, the settings or a
file (the memory-debug arguments, for one, are worked out by the engine, harness.guest.engines)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from harness.arches import X86_64
from harness.build.kernel import Kernel

# Kernel arguments every harness guest gets:
#  panic=-1         a panic reboots at once, and with QEMU's -no-reboot that ends QEMU,
#                   so a dead guest is noticed in milliseconds instead of hanging;
#  loglevel=5       warnings and worse (oopses, WARNINGs, panics: everything a splat
#                   prints) reach the kernel console, which is written to a per-guest
#                   file (not the interactive console), so they are recorded even when
#                   the guest dies. A module's info lines stay out of it: under TCG
#                   every console line costs ~0.4 ms of the sender's round trip. The
#                   kernel log (dmesg) has every line either way;
#  log_buf_len=8M   thousands of module log lines per test fit in the ring buffer;
#  rcupdate.rcu_expedited=1
#                   RCU grace periods end as soon as every CPU has passed a quiescent state
#                   instead of on the next ticks: the same guarantee, sooner. Under TCG an
#                   insmod+rmmod pair (module unload waits for grace periods) took 70 ms
#                   without it and 33 ms with it, a qemu-engine boot 3.5 s and 3.2 s.
BASE_KERNEL_ARGS = ("panic=-1", "loglevel=5", "log_buf_len=8M", "rcupdate.rcu_expedited=1")

# Drivers udev loads in virtme-ng's guest that no test here needs (emulated SATA/CD,
# watchdogs, SMBus, PC speaker, a nested KVM the guest cannot use...). Loading
# them is a large part of virtme-ng's udev coldplug time under TCG. The coldplug
# is skipped where VngSpec.boot_path works; the list covers boots where it runs.
GUEST_NOISE_MODULES = (
    "kvm_amd", "kvm_intel", "kvm", "irqbypass", "ccp", "sr_mod", "cdrom", "sg", "iTCO_wdt", "intel_pmc_bxt",
    "iTCO_vendor_support", "ahci", "libahci", "libata", "psmouse", "evdev", "serio_raw", "pcspkr",
    "i2c_i801", "i2c_smbus", "lpc_ich", "button", "qemu_fw_cfg", "virtiofs", "fuse",
)  # fmt: skip


# The rest of the PATH that vng_argv gives virtme-ng's init after `boot_path`: the
# initramfs's busybox lives in /bin, the host's tools in the others. guest-shell takes
# `<boot_path>:` and this tail off the front again.
INIT_PATH_TAIL = "/usr/sbin:/usr/bin:/sbin:/bin"

# The 9p tag of the host's /usr shared a second time, cached, with virtme-ng (VngSpec.cached_usr). virtme-ng's
# root mount has no page cache, so under emulation the first start of a large program reads its libraries page by
# page over 9p (in a vng guest under TCG: bpftrace 5-7 s, python3 about 2 s). guest_scripts/guest-shell mounts
# this share with cache=loose under a tmpfs overlay over /usr (knh.usr=TAG on the kernel command line tells it
# which), as virtme-ng's own /usr is: a snapshot of the host's /usr for the guest's life, as the qemu engine's
# whole root is.
CACHED_USR_TAG = "knhusr"
# The same for other read-only host directories at their own paths (VngSpec.cached_dirs: the harness's Python
# when it is not under /usr, a pyenv or uv interpreter and the virtual environment): 9p tags knhcache0, knhcache1,
# ..., in the order of knh.cache=DIR,DIR on the kernel command line.
CACHED_DIR_TAG = "knhcache"


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
    channel: Path | None = None  # unix socket of the virtio-serial data channel (a PCI port)
    mapped_dirs: tuple[tuple[Path, Path], ...] = ()  # (guest path, host path), read-only
    extra_args: tuple[str, ...] = ()  # appended verbatim (experiments, user overrides)
    image: Path | None = None  # boot this image instead of kernel.image (e.g. the uncompressed vmlinux)
    blacklist: tuple[str, ...] = GUEST_NOISE_MODULES
    # Put first on the PATH of virtme-ng's init (PATH= on the kernel command line): its udevadm
    # and systemd-tmpfiles skip the udev coldplug and tmpfiles steps (guest_scripts/vng_boot)
    boot_path: Path | None = None
    # Kernel arguments that turn on memory-debug helpers the kernel has built in and switched off
    # (harness.build.memdebug.memory_debug_args of its configuration and the memory_debug setting)
    memory_debug_args: tuple[str, ...] = ()
    cached_usr: bool = False  # share the host's /usr again, cached (CACHED_USR_TAG)
    cached_dirs: tuple[Path, ...] = ()  # more host directories shared again, cached (CACHED_DIR_TAG)


def path_entry_on_cmdline(path: Path) -> bool:
    """True when `path` can be one entry of a PATH= kernel argument (no blanks, quotes, colons, control chars)."""
    text = str(path)
    return text.startswith("/") and all(c.isprintable() and not c.isspace() and c not in "\"':" for c in text)


def vng_argv(spec: VngSpec) -> list[str]:
    """The argv that boots `spec` with an interactive shell on the console.

    --force-9p: on hosts without a usable virtiofsd (Debian 12 ships only
    QEMU's legacy one, which rejects vng's arguments), vng loses ~3 s trying
    virtiofs before falling back to 9p anyway. An uncompressed vmlinux (PVH
    entry) skips the in-guest decompressor, ~1 s under TCG. `boot_path` first
    on init's PATH: virtme-ng's init finds its udevadm and systemd-tmpfiles
    there, which leave out the coldplug and the tmpfiles run (docs/performance.md,
    "Boot path"); a path the kernel command line cannot carry is left out, and
    init then runs both as before.
    """
    kernel_args = [*spec.kernel_args, *spec.memory_debug_args]
    if spec.blacklist:
        kernel_args.append("module_blacklist=" + ",".join(spec.blacklist))
    if spec.boot_path is not None and path_entry_on_cmdline(spec.boot_path):
        kernel_args.append(f"PATH={spec.boot_path}:{INIT_PATH_TAIL}")
    if spec.cached_usr:
        kernel_args.append(f"knh.usr={CACHED_USR_TAG}")
    # knh.cache= is a comma-separated list that guest-shell splits: no commas, nor pattern characters in a path
    cached_dirs = [d for d in spec.cached_dirs if path_entry_on_cmdline(d) and not set(str(d)) & set(",*?[")]
    if cached_dirs:
        kernel_args.append("knh.cache=" + ",".join(map(str, cached_dirs)))
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
    if spec.channel is not None:
        argv += [f"--qemu-opts={a}" for a in channel_qemu_args(spec.channel)]
    argv += [f"--rodir={guest}={host}" for guest, host in spec.mapped_dirs]
    if spec.cached_usr:
        argv += [f"--qemu-opts={a}" for a in _ninep(CACHED_USR_TAG, Path("/usr"), readonly=True, transport="pci")]
    for i, d in enumerate(cached_dirs):
        argv += [f"--qemu-opts={a}" for a in _ninep(f"{CACHED_DIR_TAG}{i}", d, readonly=True, transport="pci")]
    return argv + list(spec.extra_args)


@dataclass(frozen=True, kw_only=True)
class QemuSpec:
    """One direct QEMU boot: the qemu engine's guest, the KVM probe and the benchmark's raw boot.

    What a boot leaves out is a default: no `shell` means no host root over 9p and no
    knh.* arguments, no `channel` no data channel, no `initrd` no initramfs (and no
    rdinit=), no `kernel_log` the kernel console on ttyS0 with everything else.
    """

    image: Path  # uncompressed vmlinux (PVH entry) when available, else the bzImage
    accel: str  # "kvm" or "tcg"
    initrd: Path | None = None
    qemu: str = "qemu-system-x86_64"
    name: str | None = "knh"
    machine: str | None = X86_64.qemu_machine  # None: QEMU's default PC machine
    tcg_cpu: str = X86_64.tcg_cpu  # -cpu under TCG (KVM: host)
    # The guest's interactive console and the kernel console's device (harness.arches.Arch). On a machine
    # with one UART the kernel console has it and the shell a virtio console (hvc0).
    console: str = X86_64.console
    kernel_console: str = X86_64.kernel_console
    root: Path = Path("/")  # the guest's root: the host's, or a foreign architecture's (harness.build.foreign)
    memory: str = "1G"
    cpus: int = 2
    kernel_log: Path | None = None  # file the kernel console (ttyS1) is written to
    kernel_args: tuple[str, ...] = BASE_KERNEL_ARGS
    tsc_khz: int | None = None  # host TSC frequency: tsc_early_khz= under TCG (see qemu_argv)
    memory_debug_args: tuple[str, ...] = ()  # as in VngSpec
    # The guest shell fast-init starts, and what it mounts
    shell: Path | None = None
    cwd: Path = Path("/")
    rw_dirs: tuple[Path, ...] = ()  # host directories the guest may write
    fresh_dirs: tuple[Path, ...] = ()  # read-only, uncached: the host writes there during the run
    mapped_dirs: tuple[tuple[Path, Path], ...] = ()  # (guest path, host path), read-only, uncached
    channel: Path | None = None  # unix socket of the virtio-serial data channel

    def __post_init__(self) -> None:
        if self.shell is None and (self.rw_dirs or self.fresh_dirs or self.mapped_dirs):
            raise ValueError("shared directories need a guest shell to mount them")


def qemu_opt(value: object) -> str:
    """A value inside a QEMU `key=value,...` option: commas are doubled."""
    return str(value).replace(",", ",,")


def _ninep(tag: str, host: Path, *, readonly: bool, transport: str = "mmio") -> list[str]:
    """A 9p share of `host` with the mount tag `tag`; `transport` as in channel_qemu_args."""
    ro = ",readonly=on" if readonly else ""
    device = {"pci": "virtio-9p-pci", "mmio": "virtio-9p-device"}[transport]
    return ["-fsdev", f"local,id={tag},path={qemu_opt(host)},security_model=none{ro},multidevs=remap",
            "-device", f"{device},fsdev={tag},mount_tag={tag}"]  # fmt: skip


def qemu_argv(spec: QemuSpec) -> list[str]:
    """The one QEMU command line. ttyS0 is stdio (the interactive console), ttyS1 the kernel console (a file).

    microvm with virtio-mmio devices (found through its ACPI tables; virtio_mmio is
    in the initramfs): ~0.3 s faster than q35 under TCG, no PCI bus to enumerate.
    Under TCG microvm has no early clock to calibrate against and hangs in
    calibrate_delay() in a few percent of boots, so the host's TSC frequency is
    passed as tsc_early_khz= (the TCG guest's TSC is the host's).
    """
    accel = ["-accel", "kvm", "-cpu", "host"] if spec.accel == "kvm" else ["-accel", "tcg", "-cpu", spec.tcg_cpu]
    argv = [
        spec.qemu, *(["-name", spec.name] if spec.name else []), *(["-M", spec.machine] if spec.machine else []),
        *accel, "-m", spec.memory, "-smp", str(spec.cpus),
        "-nodefaults", "-no-reboot", "-display", "none", *(["-vga", "none"] if spec.qemu.endswith("x86_64") else []),
        "-net", "none", "-chardev", "stdio,id=con,signal=off",
    ]  # fmt: skip
    if spec.kernel_log is None:
        argv += ["-serial", "chardev:con"]
    elif spec.console.startswith("hvc"):
        # one UART (the kernel console, a file); the shell on a virtio console
        argv += ["-chardev", f"file,id=klog,path={qemu_opt(spec.kernel_log)}", "-serial", "chardev:klog",
                 "-device", "virtio-serial-device,id=knhcon",
                 "-device", "virtconsole,bus=knhcon.0,chardev=con"]  # fmt: skip
    else:
        # microvm creates only ttyS0 from -serial; ttyS1 (the kernel console) is added as a device
        argv += ["-serial", "chardev:con", "-chardev", f"file,id=klog,path={qemu_opt(spec.kernel_log)}",
                 "-device", "isa-serial,chardev=klog,index=1"]  # fmt: skip
    if spec.shell is not None:
        argv += _ninep("hostroot", spec.root, readonly=True)
        for i, d in enumerate(spec.rw_dirs):
            argv += _ninep(f"knhrw{i}", d, readonly=False)
        for i, d in enumerate(spec.fresh_dirs):
            argv += _ninep(f"knhro{i}", d, readonly=True)
        for i, (_, host) in enumerate(spec.mapped_dirs):
            argv += _ninep(f"knhmap{i}", host, readonly=True)
    if spec.channel is not None:
        argv += channel_qemu_args(spec.channel, transport="pci" if spec.machine is None else "mmio")
    # without a kernel log file, the kernel console is the one serial port (stdio)
    console = f"console={spec.kernel_console if spec.kernel_log is not None else _first_serial(spec)}"
    # tsc=reliable: without an HPET the kernel's watchdog marks the TCG TSC unstable and falls back to a
    # tick-based clocksource, which times nothing shorter than a tick (bpftrace's nsecs, for one).
    clock = [f"tsc_early_khz={spec.tsc_khz}", "tsc=reliable"] if spec.accel == "tcg" and spec.tsc_khz else []
    args = [console, *(["rdinit=/init"] if spec.initrd else []), *spec.kernel_args, *clock, *spec.memory_debug_args]
    if spec.shell is not None:
        args += [
            f"knh.shell={spec.shell}", f"knh.cwd={spec.cwd}", f"knh.tty={spec.console}",
            "knh.rw=" + ",".join(str(d) for d in spec.rw_dirs),
            "knh.fresh=" + ",".join(str(d) for d in spec.fresh_dirs),
            "knh.map=" + ",".join(str(guest) for guest, _ in spec.mapped_dirs),
        ]  # fmt: skip
    initrd = ["-initrd", str(spec.initrd)] if spec.initrd else []
    return [*argv, "-kernel", str(spec.image), *initrd, "-append", " ".join(args)]


def _first_serial(spec: QemuSpec) -> str:
    """The device of -serial's first port: the UART that is not a virtio console."""
    return spec.kernel_console if spec.console.startswith("hvc") else spec.console


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
