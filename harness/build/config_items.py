"""What a kernel built by the harness must have: its configuration, as data and as checks.

:data:`REQUIRED_CONFIG` (the harness and the module), :data:`PREFERRED_CONFIG`, :data:`BTF_CONFIG`,
the "tiny" base (:data:`TINY_BASE`), and the debug profile (:data:`DEBUG_PROFILE`, one place: symbol
-> (value, reason); docs/kernels.md lists it). :class:`BuildOptions` is one build request; the
helpers say what a configuration lacks. The one reader of a kernel's configuration is here too:
:func:`config_items` parses the text, :func:`read_config` reads a ``.config`` (gzip-compressed or
not), :func:`read_kernel_config` finds and reads any kernel's (``/boot/config-<release>`` or its build
directory's). Pure but for reading a ``.config``.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import json
import os
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from harness.arches import Arch, arch_named, host_arch, is_foreign
from harness.build.kernel import BOOT_DIR, Kernel
from harness.config import HarnessConfig, resolve
from harness.errors import ConfigError, KernelBuildError, UnreadableKernelConfig

# Symbol -> value the built kernel must have (checked in .config after configuration).
# Built in (=y) rather than modules, so neither engine has to load anything to boot.
REQUIRED_CONFIG: dict[str, str] = {
    "MODULES": "y",  # the module under test is loadable
    "MODULE_UNLOAD": "y",  # ... and unloadable (rmmod between tests)
    "NET": "y",  # netlink is part of the core network stack
    "UNIX": "y",
    "NET_9P": "y",  # host root and shared directories over 9p (both engines)
    "NET_9P_VIRTIO": "y",
    "9P_FS": "y",
    "VIRTIO_PCI": "y",  # virtme-ng's PC machine
    "VIRTIO_MMIO": "y",  # the qemu engine's microvm (devices found through ACPI)
    "VIRTIO_CONSOLE": "y",  # virtio-serial data channel (/dev/vport*)
    "OVERLAY_FS": "y",  # tmpfs overlay over the read-only host root
    "TMPFS": "y",
    "DEVTMPFS": "y",
    "BLK_DEV_INITRD": "y",  # the fast engine's busybox initramfs
    "SERIAL_8250_CONSOLE": "y",  # console on ttyS0, kernel log on ttyS1
    "MAGIC_SYSRQ": "y",  # fast-init powers off with sysrq 'o'
    "PVH": "y",  # QEMU boots the uncompressed vmlinux directly (fast engine)
    "CRYPTO": "y",  # virtme-ng's defaults disable crypto; crypto_user needs it
    "CRYPTO_USER": "m",  # NETLINK_CRYPTO as a module: a protocol a module under test may find taken
    "BPF_SYSCALL": "y",  # eBPF observation tests
    "KPROBES": "y",
}

# Settings that are wanted but not worth failing a build over.
PREFERRED_CONFIG: dict[str, str] = {
    "KERNEL_ZSTD": "y",  # the harness extracts vmlinux from xz/zstd bzImages
    "KPROBE_EVENTS": "y",
    "BPF_EVENTS": "y",
}

BTF_CONFIG: dict[str, str] = {
    "DEBUG_INFO_DWARF_TOOLCHAIN_DEFAULT": "y",
    "DEBUG_INFO_BTF": "y",
    "DEBUG_INFO_BTF_MODULES": "y",
}

# The debug profile (`--kernel debug`, `--kernel debug:TREE`): symbol -> (value, reason). The one
# list of what a debug kernel turns on; docs/kernels.md renders it. Every symbol must end up in the
# final .config with its value, or the build is a KernelBuildError naming it (value "n": absent is fine).
DEBUG_PROFILE: dict[str, tuple[str, str]] = {
    "DEBUG_KERNEL": ("y", "the debugging options below depend on it"),
    "KASAN": ("y", "out-of-bounds and use-after-free accesses to slab, stack and globals: a KASAN report"),
    "KASAN_GENERIC": ("y", "the software mode: every access checked, the mode x86 has"),
    "KASAN_INLINE": ("y", "checks inlined instead of called: a larger kernel, a faster guest"),
    "DEBUG_KMEMLEAK": ("y", "unreferenced allocations (leaks) listed in /sys/kernel/debug/kmemleak"),
    "DEBUG_KMEMLEAK_DEFAULT_OFF": ("n", "kmemleak runs from boot, no kmemleak=on needed"),
    "DEBUG_KMEMLEAK_AUTO_SCAN": (
        "n",
        "no scan thread: the harness scans after a module's rmmod, so a "
        "leak is never reported in the middle of a later test",
    ),
    "PROVE_LOCKING": ("y", "lockdep: lock-order inversions and other deadlock patterns, before they hang"),
    "DEBUG_ATOMIC_SLEEP": (
        "y",
        "'BUG: sleeping function called from invalid context' (sleeping under a "
        "spinlock, in a timer or with interrupts off)",
    ),
    "DEBUG_OBJECTS": ("y", "ODEBUG: object life-cycle checks (freed while active, re-initialized)"),
    "DEBUG_OBJECTS_TIMERS": (
        "y",
        "ODEBUG for timers: an armed timer freed (a module's exit forgetting del_timer_sync)",
    ),
    "DEBUG_OBJECTS_FREE": (
        "y",
        "ODEBUG checks every kfree/vfree for active objects in the freed memory (without "
        "it, freeing an armed timer is not noticed)",
    ),
    "DEBUG_OBJECTS_WORK": ("y", "ODEBUG for work items: a queued work freed"),
    "UBSAN": ("y", "undefined behaviour: a UBSAN report"),
    "UBSAN_BOUNDS": ("y", "array index out of bounds of arrays with a known size"),
    "UBSAN_SANITIZE_ALL": (
        "y",
        "instrument the whole kernel and modules (6.1; later kernels always do and have no such symbol)",
    ),
    "SLUB_DEBUG": ("y", "slab consistency checks, needed by SLUB_DEBUG_ON"),
    "SLUB_DEBUG_ON": (
        "y",
        "red zones, poisoning and owner tracking on every cache from boot (slub_debug=FZPU without a kernel argument)",
    ),
    "KFENCE": ("n", "KASAN checks every access; KFENCE's sampled ones would only add noise"),
    "GCOV_KERNEL": ("y", "coverage of modules built with GCOV_PROFILE := y, read from debugfs"),
    "DEBUG_FS": ("y", "kmemleak's and gcov's interface"),
    "DEBUG_BUGVERBOSE": ("y", "file:line in BUG and WARNING reports"),
    "STACKTRACE": ("y", "backtraces in kmemleak and KASAN reports"),
    # KASAN instruments the PVH entry code (xen_prepare_pvh runs before KASAN's shadow memory exists):
    # booted directly as a vmlinux, the kernel triple-faults before its first line. A gzip payload is one
    # the harness does not unpack, so both engines boot the bzImage (through its decompressor) instead.
    "KERNEL_GZIP": ("y", "boot the bzImage, not the vmlinux (KASAN breaks the PVH entry)"),
    "KERNEL_ZSTD": ("n", "the harness would unpack a zstd payload and boot the vmlinux: see KERNEL_GZIP"),
}

# Profile symbols that only make sense on x86 (make's ARCH=x86), left out of the profile on other architectures:
# arm64 has no compressed-image choice (no HAVE_KERNEL_* symbols, so the choice is not in its Kconfig) and no PVH
# entry; QEMU boots its arch/arm64/boot/Image directly.
X86_ONLY_PROFILE = frozenset({"KERNEL_GZIP", "KERNEL_ZSTD"})

# Profile symbols that newer trees dropped (the behaviour became unconditional): absent is not an error.
DEBUG_PROFILE_OPTIONAL = frozenset({"UBSAN_SANITIZE_ALL"})

PROFILES: dict[str, dict[str, tuple[str, str]]] = {"debug": DEBUG_PROFILE}

# The "tiny" base (default): `make allnoconfig` with these, virtme-ng's guest items (from
# `vng --kconfig --dry-run`, minus VIRTME_DROPPED) and the harness items. About a third of
# the objects of virtme-ng's defconfig base, which matters on a 2-core machine.
TINY_BASE: dict[str, str] = {
    "64BIT": "y", "SMP": "y", "PRINTK": "y", "PRINTK_TIME": "y", "BUG": "y", "EARLY_PRINTK": "y",
    "TTY": "y", "SERIAL_8250": "y", "SERIAL_8250_CONSOLE": "y", "UNIX98_PTYS": "y",
    "BINFMT_ELF": "y", "BINFMT_SCRIPT": "y", "PROC_FS": "y", "PROC_SYSCTL": "y", "SYSFS": "y",
    "DEVTMPFS": "y", "DEVTMPFS_MOUNT": "y", "TMPFS": "y", "TMPFS_POSIX_ACL": "y", "SHMEM": "y",
    "FUTEX": "y", "EPOLL": "y", "SIGNALFD": "y", "TIMERFD": "y", "EVENTFD": "y", "AIO": "y",
    "INOTIFY_USER": "y", "FILE_LOCKING": "y", "MULTIUSER": "y", "POSIX_TIMERS": "y", "SYSVIPC": "y",
    "NET": "y", "UNIX": "y", "INET": "y", "PACKET": "y",
    "PCI": "y", "PCI_MSI": "y", "ACPI": "y", "HYPERVISOR_GUEST": "y", "PARAVIRT": "y", "KVM_GUEST": "y",
    "VIRTIO_MENU": "y", "VIRTIO": "y", "NETWORK_FILESYSTEMS": "y", "9P_FS_POSIX_ACL": "y", "FS_POSIX_ACL": "y",
    "RD_GZIP": "y", "RD_ZSTD": "y", "HIGH_RES_TIMERS": "y", "NO_HZ_IDLE": "y", "HPET_TIMER": "y",
    "KALLSYMS": "y", "KALLSYMS_ALL": "y", "DEBUG_FS": "y", "PERF_EVENTS": "y", "FTRACE": "y",
    "FUNCTION_TRACER": "y", "DYNAMIC_FTRACE": "y", "BPF": "y", "BPF_JIT": "y", "CGROUPS": "y",
}  # fmt: skip

# The harness items of an arm64 guest: it boots only on the qemu engine, on -M virt (harness.arches.ARM64), so
# REQUIRED_CONFIG without what is x86's (the PVH entry, the 8250 UARTs) or vng's PC machine's (virtio over PCI),
# with the virt machine's UART built in: the PL011 carries the kernel console from the first line on.
ARM64_DROPPED = frozenset({"PVH", "SERIAL_8250_CONSOLE", "VIRTIO_PCI"})
ARM64_REQUIRED: dict[str, str] = {
    **{k: v for k, v in REQUIRED_CONFIG.items() if k not in ARM64_DROPPED},
    "SERIAL_AMBA_PL011": "y",  # -M virt's one UART: the kernel console (console=ttyAMA0)
    "SERIAL_AMBA_PL011_CONSOLE": "y",
}
# Wanted on arm64, not worth failing over: the virt machine's PL031 clock (the guest's time of day), no
# KERNEL_ZSTD (arm64 has no compressed-image choice: see X86_ONLY_PROFILE).
ARM64_PREFERRED: dict[str, str] = {
    **{k: v for k, v in PREFERRED_CONFIG.items() if k != "KERNEL_ZSTD"},
    "RTC_CLASS": "y", "RTC_HCTOSYS": "y", "RTC_DRV_PL031": "y",
}  # fmt: skip
# TINY_BASE's x86 items (8250 UARTs, ACPI, the PC's timers, x86's paravirt guest, early_printk) and PCI (every
# device of the arm64 guest is virtio-mmio, found through the device tree QEMU hands the kernel) are left out;
# arm64 selects what -M virt needs itself (GICv3, the architected timer, PSCI for power-off, AMBA, OF).
ARM64_BASE_DROPPED = frozenset({"SERIAL_8250", "SERIAL_8250_CONSOLE", "EARLY_PRINTK", "PCI", "PCI_MSI", "ACPI",
                                "HYPERVISOR_GUEST", "PARAVIRT", "KVM_GUEST", "HPET_TIMER"})  # fmt: skip
ARM64_BASE: dict[str, str] = {k: v for k, v in TINY_BASE.items() if k not in ARM64_BASE_DROPPED}

# virtme-ng guest items the harness does not use (graphics, sound, KVM host, snaps, virtio-fs:
# the harness always boots with --force-9p): left out of the tiny base to save build time.
VIRTME_DROPPED_PREFIXES = ("DRM", "SND", "SOUND", "FB", "FRAMEBUFFER", "VGA_CONSOLE", "KVM", "SQUASHFS", "FUSE_FS",
                           "VIRTIO_FS", "DAX", "FS_DAX", "MEMORY_HOT", "ZONE_DEVICE", "DEBUG_INFO")  # fmt: skip

BASES = ("tiny", "defconfig")


# runner(argv, cwd, log) -> exit status; appends the command's output to log.
Runner = Callable[[Sequence[str], Path, Path], int]


@dataclass(frozen=True)
class BuildOptions:
    """What to build: BTF on or off, extra config items (``FOO=y``), make parallelism."""

    btf: bool = False
    extra_config: tuple[str, ...] = ()
    base: str = "tiny"  # "tiny": allnoconfig + what is needed; "defconfig": `vng --kconfig` as is
    jobs: int | None = None
    vng: str = ""  # virtme-ng executable; "" = the one next to the running interpreter
    profile: str = ""  # "" or a key of PROFILES ("debug"): built out of the tree, a cache entry of its own
    # "" (the host's) or a foreign architecture's name (harness.arches: "arm64"): cross-built out of the tree
    # (make ARCH= CROSS_COMPILE= O=), a cache entry of its own
    arch: str = ""

    @property
    def target(self) -> Arch:
        """The architecture the kernel is built for."""
        return arch_named(self.arch) if self.arch else host_arch()

    @property
    def foreign(self) -> bool:
        """True when the kernel is cross-built for another architecture than the host's."""
        return bool(self.arch) and is_foreign(self.arch)

    def make_vars(self) -> tuple[str, ...]:
        """make's ARCH= and CROSS_COMPILE= of a cross build; nothing for the host's architecture."""
        if not self.foreign:
            return ()
        return (f"ARCH={self.target.kbuild}", f"CROSS_COMPILE={self.target.cross_compile}")

    def required(self) -> dict[str, str]:
        """The items the harness and the module need on this build's architecture (REQUIRED_CONFIG on x86)."""
        return ARM64_REQUIRED if self.target.kbuild == "arm64" else REQUIRED_CONFIG

    def preferred(self) -> dict[str, str]:
        return ARM64_PREFERRED if self.target.kbuild == "arm64" else PREFERRED_CONFIG

    def tiny_base(self) -> dict[str, str]:
        return ARM64_BASE if self.target.kbuild == "arm64" else TINY_BASE

    @classmethod
    def from_config(cls, cfg: HarnessConfig) -> BuildOptions:
        """The build settings of the settings table (harness.config: kernel_base, kernel_btf,
        kernel_config, kernel_jobs, vng)."""
        return cls(btf=cfg.kernel_btf, extra_config=cfg.kernel_config, base=cfg.kernel_base,
                   jobs=cfg.kernel_jobs or None, vng=cfg.vng)  # fmt: skip

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> BuildOptions:
        """The build settings from the environment alone (KNH_KERNEL_BASE, KNH_KERNEL_BTF,
        KNH_KERNEL_CONFIG, KNH_KERNEL_JOBS, KNH_VNG), parsed by the settings table."""
        try:
            return cls.from_config(resolve({}, environ=os.environ if environ is None else environ, ini={}))
        except ConfigError as e:
            raise KernelBuildError(str(e)) from None

    def config(self) -> dict[str, str]:
        """Every symbol this build sets, later entries winning."""
        out = dict(self.required())
        out.update(self.preferred())
        if self.btf:
            out.update(BTF_CONFIG)
        out.update({name: value for name, (value, _) in self.profile_config().items()})
        for item in self.extra_config:
            name, sep, value = item.partition("=")
            if not sep:
                raise KernelBuildError(f"config item {item!r} is not NAME=value")
            out[name.removeprefix("CONFIG_")] = value
        return out

    def profile_config(self) -> dict[str, tuple[str, str]]:
        """The profile's items (symbol -> (value, reason)) on this build's architecture; {} without a profile."""
        if not self.profile:
            return {}
        if self.profile not in PROFILES:
            raise KernelBuildError(f"unknown kernel profile {self.profile!r}: known are {', '.join(PROFILES)}")
        profile = PROFILES[self.profile]
        if self.target.kbuild != "x86":
            return {k: v for k, v in profile.items() if k not in X86_ONLY_PROFILE}
        return profile

    def fingerprint(self) -> str:
        """Hash of the configuration request (and the virtme-ng version that expands it)."""
        from importlib import metadata

        try:
            vng_version = metadata.version("virtme-ng")
        except metadata.PackageNotFoundError:  # pragma: no cover - virtme-ng is a dependency
            vng_version = "?"
        parts: list[object] = [sorted(self.config().items()), self.btf, self.base, str(vng_version)]
        if self.profile:
            parts.append(self.profile)
        if self.foreign:  # the host's builds keep the fingerprint they always had (their cache entries stay valid)
            parts.append(self.target.name)
        text = json.dumps(parts)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def config_items(text: str) -> dict[str, str]:
    """`CONFIG_X=v` lines of a .config (or of `vng --kconfig --dry-run` output; later ones win)
    as {X: v}, values as written; "n" for `# CONFIG_X is not set`."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("CONFIG_") and "=" in line:
            name, _, value = line.partition("=")
            out[name.removeprefix("CONFIG_")] = value.strip()
        elif line.startswith("# CONFIG_") and line.endswith(" is not set"):
            out[line[len("# CONFIG_") : -len(" is not set")]] = "n"
    return out


def read_config(path: Path) -> dict[str, str]:
    """A .config (gzip-compressed too, as /proc/config.gz) as {symbol without CONFIG_: value}, string values
    unquoted; {} when there is none. A file that is there but cannot be read or decompressed is an
    UnreadableKernelConfig naming it and the fix."""
    try:
        data = path.read_bytes()
        if data[:2] == b"\x1f\x8b":
            data = gzip.decompress(data)
    except FileNotFoundError:
        return {}
    except (OSError, EOFError, zlib.error) as e:
        cause = e.strerror if isinstance(e, OSError) and e.strerror else str(e) or type(e).__name__
        raise UnreadableKernelConfig(
            f"cannot read the kernel configuration {path} ({cause}); the harness chooses the guest's memory-debug "
            f"arguments, the kmemleak scan and module coverage from it. fix: make it readable (sudo chmod a+r "
            f"{path}) or restore it from the kernel's package or build"
        ) from None
    return {k: v.strip('"') for k, v in config_items(data.decode(errors="replace")).items()}


def config_path(kernel: Kernel, boot: Path = BOOT_DIR) -> Path | None:
    """Where a kernel's configuration is: /boot/config-<release> (installed kernels), the .config of its
    build directory (kernels built from a tree, headers packages); None when it has neither."""
    for candidate in (boot / f"config-{kernel.release}", kernel.build_dir / ".config"):
        if candidate.is_file():
            return candidate
    return None


@functools.lru_cache(maxsize=32)
def _read_cached(path: Path, mtime_ns: int, size: int) -> dict[str, str]:
    return read_config(path)


def read_kernel_config(kernel: Kernel, boot: Path = BOOT_DIR) -> dict[str, str]:
    """The kernel's configuration (see config_path), read once per file version; {} when it has none (a stock
    kernel without /boot/config-<release>: no memory-debug argument, no kmemleak scan, no coverage).
    Raises UnreadableKernelConfig when the file is there but cannot be read."""
    path = config_path(kernel, boot)
    if path is None:
        return {}
    try:
        stat = path.stat()
    except OSError:
        return read_config(path)  # gone since config_path looked ({}), or unreadable (the error)
    return dict(_read_cached(path, stat.st_mtime_ns, stat.st_size))


def missing_config(config: dict[str, str], wanted: dict[str, str]) -> list[str]:
    return [f"CONFIG_{k}={v} (have {config.get(k, 'unset')})" for k, v in wanted.items() if config.get(k, "n") != v]


def missing_profile(config: dict[str, str], profile: dict[str, tuple[str, str]]) -> list[str]:
    """Profile symbols the final .config does not have with the wanted value (absent counts as "n";
    symbols of DEBUG_PROFILE_OPTIONAL may be absent)."""
    out = []
    for name, (value, reason) in profile.items():
        have = config.get(name)
        if have is None and name in DEBUG_PROFILE_OPTIONAL:
            continue
        if (have or "n") != value:
            out.append(f"CONFIG_{name}={value} (have {have or 'unset'}; wanted for: {reason})")
    return out


def config_line(name: str, value: str) -> str:
    return f"# CONFIG_{name} is not set\n" if value == "n" else f"CONFIG_{name}={value}\n"


def tiny_fragment(virtme: dict[str, str], options: BuildOptions) -> dict[str, str]:
    """The KCONFIG_ALLCONFIG for `make allnoconfig`: base, virtme-ng's kept items, ours."""
    out = dict(options.tiny_base())
    out.update({k: v for k, v in virtme.items() if v != "n" and not k.startswith(VIRTME_DROPPED_PREFIXES)})
    out.update(options.config())
    return out


def extra_items(options: BuildOptions) -> dict[str, str]:
    """Items beyond the required and preferred ones that must hold; the profile's are checked by
    missing_profile (with reasons and optional symbols)."""
    skip = {*options.required(), *options.preferred(), *options.profile_config()}
    return {k: v for k, v in options.config().items() if k not in skip}
