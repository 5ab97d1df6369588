"""Engines: the ways a guest boots, behind one interface.

An engine turns a `GuestSpec` (what to boot: kernel, accelerator, shell, shared
directories, channel, memory-debug helpers) into the argv that boots it, after the
preparation it needs (finding its executable, the uncompressed vmlinux, the initramfs,
the kernel's configuration, which decides the memory-debug arguments). The argv itself
comes from the pure builders in cmdline.py, from a frozen spec the engine fills in.
The engine names are harness.config.ENGINES; `REGISTRY` holds one engine per name.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import ClassVar, Protocol

from harness.arches import X86_64, arch_named
from harness.build.config_items import read_kernel_config
from harness.build.initramfs import build_initramfs, cached_vmlinux
from harness.build.kernel import Kernel
from harness.build.memdebug import memory_debug_args
from harness.config import ENGINES, GUEST_SCRIPTS, MEMORY_DEBUG_DEFAULT, vng_executable
from harness.errors import ConfigError, MissingDependencyError
from harness.guest.accel import host_tsc_khz
from harness.guest.cmdline import QemuSpec, VngSpec, qemu_argv, vng_argv
from harness.guest.vm import GuestPaths


@dataclass(frozen=True)
class GuestSpec:
    """One guest to boot, whatever the engine."""

    kernel: Kernel
    name: str  # unique per guest; QEMU's -name
    accel: str  # "kvm" or "tcg"
    run_dir: Path  # the guest's logs (the kernel console goes to its kernel.log)
    shell: Path  # script the guest runs as its shell on the console
    cache: Path  # harness cache: extracted vmlinux, initramfs
    rw_dirs: tuple[Path, ...] = ()  # host directories the guest may write
    channel: Path | None = None  # unix socket of the virtio-serial data channel
    memory: str = "1G"
    cpus: int = 2
    cwd: Path = Path("/")  # the guest shell's working directory, where the engine can set it
    tree_modules: Path | None = None  # modules of a kernel built from a tree (seen at /lib/modules/<release>)
    memory_debug: tuple[str, ...] = MEMORY_DEBUG_DEFAULT  # helpers to turn on (the memory_debug setting)
    # The guest's root: the host's, or a foreign architecture's (harness.build.foreign), in which the host
    # directories of `shared_dirs` (the project, the working directory) appear read-only at their own paths.
    root: Path = Path("/")
    shared_dirs: tuple[Path, ...] = ()

    @property
    def mapped_dirs(self) -> tuple[tuple[Path, Path], ...]:
        """(guest path, host path) pairs mounted read-only."""
        shared = tuple((d, d) for d in self.shared_dirs)
        if self.tree_modules is None:
            return shared
        return (*shared, (Path("/lib/modules") / self.kernel.release, self.tree_modules))


class Engine(Protocol):
    """A way to boot a guest."""

    name: ClassVar[str]

    def argv(self, launch: GuestSpec) -> list[str]:
        """Prepare what the engine needs and return the command that boots `launch`."""
        ...


VmlinuxFor = Callable[[Kernel, Path], Path | None]
KernelConfigOf = Callable[[Kernel], Mapping[str, str]]


def debug_args(launch: GuestSpec, kernel_config: KernelConfigOf) -> tuple[str, ...]:
    """The kernel arguments that turn on the launch's memory-debug helpers the kernel has switched off. The
    configuration is read even with no helper, so that an unreadable one stops the launch, not a later step."""
    return memory_debug_args(kernel_config(launch.kernel), launch.memory_debug)


def shared_guest_paths(launch: GuestSpec) -> tuple[Path, ...]:
    """Where virtme-ng mounts the launch's shared directories in the guest."""
    return (*launch.rw_dirs, *(guest for guest, _ in launch.mapped_dirs))


def python_prefixes() -> tuple[Path, ...]:
    """The harness's interpreter's installation and virtual environment (resolved; one when they are the same)."""
    return tuple(dict.fromkeys(Path(os.path.realpath(p)) for p in (sys.base_prefix, sys.prefix)))


def cacheable(directory: Path, launch: GuestSpec) -> bool:
    """Whether `directory` may be shared again, cached, over its own path in a vng guest: not "/", not /usr or
    below it (the cached /usr has it), not holding a directory the host writes while the guest runs (the shared
    directories, the harness cache with the module builds, the working directory: the guest would see a stale
    copy), and not inside a shared directory (the overlay would take the guest's writes there)."""
    if directory == Path("/") or under_usr(directory):
        return False
    resolved = [Path(os.path.realpath(p)) for p in shared_guest_paths(launch)]
    if any(other in directory.parents for other in resolved):
        return False
    written = [*resolved, Path(os.path.realpath(launch.cache)), Path(os.path.realpath(launch.cwd))]
    return not any(other == directory or directory in other.parents for other in written)


def under_usr(path: Path) -> bool:
    """Whether `path` is /usr or below it once resolved (/lib/modules is /usr/lib/modules on a merged-/usr host):
    the cached /usr (VngSpec.cached_usr) is mounted over /usr after virtme-ng's mounts and would hide such one."""
    resolved = Path(os.path.realpath(path))
    return resolved == Path("/usr") or Path("/usr") in resolved.parents


@dataclass(frozen=True)
class VngEngine:
    """virtme-ng: its own init (udevd without the coldplug) on a PC machine, the host root over 9p."""

    name: ClassVar[str] = "vng"
    executable: Callable[[], str] = vng_executable
    vmlinux: VmlinuxFor = cached_vmlinux
    boot_path: Path | None = field(default=GUEST_SCRIPTS / "vng_boot")  # see VngSpec.boot_path
    cached_usr: bool = True  # see VngSpec.cached_usr; left out when a shared directory is under /usr
    # VngSpec.cached_dirs: the harness's Python where it is not under /usr (programs a test starts in the guest
    # with sys.executable: the example's pyroute2 sender), each one that `cacheable` lets through
    cached_prefixes: Callable[[], tuple[Path, ...]] = python_prefixes
    kernel_config: KernelConfigOf = read_kernel_config

    def spec(self, launch: GuestSpec) -> VngSpec:
        return VngSpec(
            kernel=launch.kernel, accel=launch.accel, shell=launch.shell, rw_dirs=launch.rw_dirs,
            image=self.vmlinux(launch.kernel, launch.cache), memory=launch.memory, cpus=launch.cpus,
            name=launch.name, vng=self.executable(), channel=launch.channel, mapped_dirs=launch.mapped_dirs,
            boot_path=self.boot_path, memory_debug_args=debug_args(launch, self.kernel_config),
            cached_usr=self.cached_usr and not any(map(under_usr, shared_guest_paths(launch))),
            cached_dirs=tuple(d for d in self.cached_prefixes() if cacheable(d, launch)),
        )  # fmt: skip

    def argv(self, launch: GuestSpec) -> list[str]:
        return vng_argv(self.spec(launch))


@dataclass(frozen=True)
class QemuEngine:
    """QEMU started directly: microvm, the uncompressed kernel and a busybox initramfs running fast-init."""

    name: ClassVar[str] = "qemu"
    which: Callable[[str], str | None] = shutil.which
    vmlinux: VmlinuxFor = cached_vmlinux
    initramfs: Callable[[Kernel, Path, Path], Path] = build_initramfs
    tsc_khz: Callable[[], int | None] = host_tsc_khz
    init_script: Path = field(default=GUEST_SCRIPTS / "fast-init")
    kernel_config: KernelConfigOf = read_kernel_config

    def spec(self, launch: GuestSpec) -> QemuSpec:
        arch = arch_named(launch.kernel.arch)
        qemu = self.which(arch.qemu)
        if qemu is None:
            raise MissingDependencyError(arch.qemu, f"apt-get install {arch.qemu_package}")
        x86 = arch.name == X86_64.name  # the PVH entry of an uncompressed vmlinux, the TSC clock: x86 only
        image = (self.vmlinux(launch.kernel, launch.cache) if x86 else None) or launch.kernel.image
        initrd = self.initramfs(launch.kernel, self.init_script, launch.cache)
        launch.run_dir.mkdir(parents=True, exist_ok=True)  # QEMU creates the kernel log, not its directory
        return QemuSpec(
            image=image, initrd=initrd, accel=launch.accel, shell=launch.shell,
            rw_dirs=launch.rw_dirs, fresh_dirs=(launch.cache,), kernel_log=GuestPaths(launch.run_dir).kernel_log,
            channel=launch.channel, memory=launch.memory, cpus=launch.cpus, name=launch.name, cwd=launch.cwd,
            qemu=qemu, tsc_khz=self.tsc_khz() if x86 else None, mapped_dirs=launch.mapped_dirs,
            memory_debug_args=debug_args(launch, self.kernel_config), machine=arch.qemu_machine,
            tcg_cpu=arch.tcg_cpu, console=arch.console, kernel_console=arch.kernel_console, root=launch.root,
        )  # fmt: skip

    def argv(self, launch: GuestSpec) -> list[str]:
        return qemu_argv(self.spec(launch))


REGISTRY: Mapping[str, Engine] = MappingProxyType({e.name: e for e in (VngEngine(), QemuEngine())})


def engine_for(name: str) -> Engine:
    """The engine called `name` (one of harness.config.ENGINES)."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise ConfigError(f"unknown engine {name!r}: use one of {', '.join(ENGINES)}") from None
