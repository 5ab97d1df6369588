"""Guest architectures: what differs between an x86_64 and an arm64 guest, as data.

One `Arch` per value of the `arch` setting. The host's own architecture boots the
host's kernels with the host root; any other is a *foreign* guest: its kernels come
from the distribution's packages for that architecture (harness.build.foreign), its
modules are cross-built, its userspace is a root filesystem made for it, and it runs
under TCG (KVM runs only guests of the host's architecture).
"""

from __future__ import annotations

import platform
from dataclasses import dataclass
from types import MappingProxyType

from harness.errors import ConfigError


@dataclass(frozen=True)
class Arch:
    """One guest architecture."""

    name: str  # the setting's value and the --kernel prefix ("arm64:6.1.0-57-arm64")
    machine: str  # uname -m in the guest (platform.machine() on such a host)
    kbuild: str  # make ARCH=
    debian: str  # dpkg's name: package architecture and the kernel flavour (linux-image-<version>-<debian>)
    cross_compile: str  # make CROSS_COMPILE= when the host is another architecture
    qemu: str  # the QEMU system emulator
    qemu_package: str  # the Debian package that has it
    qemu_machine: str  # -M: the smallest machine the distribution's kernel boots on
    tcg_cpu: str  # -cpu under TCG
    console: str  # the guest's interactive console (the harness's shell)
    kernel_console: str  # where the kernel's console goes (a file on the host)
    cross_packages: tuple[str, ...]  # Debian packages that cross-build modules and programs for it
    elf_machine: int  # e_machine of its ELF files (a .ko, a vmlinux)


X86_64 = Arch(
    name="x86_64", machine="x86_64", kbuild="x86", debian="amd64", cross_compile="x86_64-linux-gnu-",
    qemu="qemu-system-x86_64", qemu_package="qemu-system-x86", qemu_machine="microvm", tcg_cpu="max",
    console="ttyS0", kernel_console="ttyS1", cross_packages=("gcc-x86-64-linux-gnu", "libc6-dev-amd64-cross"),
    elf_machine=62,
)  # fmt: skip
# -M virt has one PL011 UART: it carries the kernel console (built in, so early messages and a panic
# before init reach the file); the shell runs on a virtio console, whose module the initramfs loads.
ARM64 = Arch(
    name="arm64", machine="aarch64", kbuild="arm64", debian="arm64", cross_compile="aarch64-linux-gnu-",
    qemu="qemu-system-aarch64", qemu_package="qemu-system-arm", qemu_machine="virt", tcg_cpu="max",
    console="hvc0", kernel_console="ttyAMA0", cross_packages=("gcc-aarch64-linux-gnu", "libc6-dev-arm64-cross"),
    elf_machine=183,
)  # fmt: skip

ARCHES = MappingProxyType({a.name: a for a in (X86_64, ARM64)})
ARCH_NAMES = tuple(ARCHES)
_BY_MACHINE = {a.machine: a for a in ARCHES.values()}


def host_arch() -> Arch:
    """The host's architecture (an unknown one is taken as x86_64's peer: nothing foreign about it)."""
    machine = platform.machine()
    return _BY_MACHINE.get(machine) or Arch(**{**X86_64.__dict__, "name": machine, "machine": machine})


def arch_named(name: str) -> Arch:
    """The Arch called `name` (a value of the arch setting or a --kernel prefix)."""
    try:
        return ARCHES[name]
    except KeyError:
        raise ConfigError(f"unknown guest architecture {name!r}: use one of {', '.join(ARCH_NAMES)}") from None


def is_foreign(arch: Arch | str) -> bool:
    """True when `arch` (or the architecture of that name) is not the host's: cross builds, a root of its own,
    TCG. The host's own name is never foreign, also on a host the table does not know."""
    return (arch if isinstance(arch, str) else arch.name) != host_arch().name


def binutil(name: str, elf_machine: int | None) -> str:
    """The binutils program `name` (addr2line, nm) for ELF files of `elf_machine`: the host's own, or the
    cross one (aarch64-linux-gnu-addr2line) for a foreign architecture's files."""
    arch = next((a for a in ARCHES.values() if a.elf_machine == elf_machine), None)
    return f"{arch.cross_compile}{name}" if arch is not None and is_foreign(arch) else name


def split_arch(spec: str) -> tuple[str | None, str]:
    """A --kernel value's architecture prefix and the rest: "arm64:6.1.0-57-arm64" -> ("arm64", "6.1.0-57-arm64");
    no known prefix -> (None, spec)."""
    head, sep, rest = spec.partition(":")
    if sep and head in ARCHES:
        return head, rest
    return None, spec
