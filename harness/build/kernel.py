"""Find the kernel a guest boots and the build directory a module is built against.

A kernel is named by an installed release (``6.1.0-56-amd64``), by a path to a
kernel image (``/boot/vmlinuz-6.12.117+deb12-amd64``, ``arch/x86/boot/bzImage``),
or not at all: then the newest installed kernel that has matching headers wins.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass, field, replace
from pathlib import Path

from harness.arches import Arch, arch_named, host_arch, is_foreign, split_arch
from harness.config import default_cache_root
from harness.errors import KernelNotFoundError

BOOT_DIR = Path("/boot")
MODULES_DIR = Path("/lib/modules")


@dataclass(frozen=True)
class Kernel:
    """A bootable kernel and what an out-of-tree module is built against."""

    release: str  # uname -r of the guest, e.g. "6.1.0-56-amd64"
    image: Path  # bzImage/vmlinuz handed to virtme-ng
    build_dir: Path  # KDIR for `make -C KDIR M=...`
    arch: str = field(default_factory=lambda: host_arch().name)  # harness.arches: the guest's architecture

    @property
    def label(self) -> str:
        """Short name used in test ids and result paths."""
        return self.release

    @property
    def foreign(self) -> bool:
        """True for a kernel of another architecture than the host's (harness.arches.is_foreign)."""
        return is_foreign(self.arch)

    @property
    def spec(self) -> str:
        """A --kernel value naming this kernel by release: with its architecture when that is not the host's."""
        return f"{self.arch}:{self.release}" if self.foreign else self.release


def release_sort_key(release: str) -> tuple[tuple[int, ...], str]:
    """Order releases by their numeric parts (6.12 > 6.1.0-56 > 6.1.0-9)."""
    return tuple(int(n) for n in re.findall(r"\d+", release)), release


def image_version(image: Path) -> str | None:
    """The version string embedded in an x86 bzImage header.

    The boot protocol stores a pointer at offset 0x20e to a NUL-terminated
    version string ("6.1.0-56-amd64 (debian-kernel@...) #1 SMP ...") located
    0x200 bytes further: the release, who built it, the build number and date.
    Returns None when the file is not such an image.
    """
    try:
        with image.open("rb") as f:
            head = f.read(0x210)
            if len(head) < 0x210 or head[0x202:0x206] != b"HdrS":
                return None
            (offset,) = struct.unpack_from("<H", head, 0x20E)
            f.seek(offset + 0x200)
            raw = f.read(256)
    except OSError:
        return None
    return raw.split(b"\0", 1)[0].decode("ascii", "replace") or None


def image_release(image: Path) -> str | None:
    """The release (first word of the image's version string), or None when `image` is not a bzImage."""
    version = image_version(image)
    return (version.split(" ", 1)[0] or None) if version else None


def _kernel_for_release(release: str, boot: Path, modules: Path) -> Kernel | None:
    image = boot / f"vmlinuz-{release}"
    build = modules / release / "build"
    if image.exists() and (build / "Makefile").exists():
        return Kernel(release, image, build)
    return None


def installed_kernels(boot: Path = BOOT_DIR, modules: Path = MODULES_DIR) -> list[Kernel]:
    """Installed kernels that have both an image and headers, newest first."""
    found = []
    for image in boot.glob("vmlinuz-*"):
        kernel = _kernel_for_release(image.name.removeprefix("vmlinuz-"), boot, modules)
        if kernel is not None:
            found.append(kernel)
    return sorted(found, key=lambda k: release_sort_key(k.release), reverse=True)


def headers_install_hint(release: str) -> str:
    return f"apt-get install linux-headers-{release}"


def resolve_kernel(spec: str | None, boot: Path = BOOT_DIR, modules: Path = MODULES_DIR) -> Kernel:
    """Turn a user's kernel spec into a Kernel, or explain what is missing."""
    if not spec:
        kernels = installed_kernels(boot, modules)
        if not kernels:
            images = sorted(p.name for p in boot.glob("vmlinuz-*"))
            raise KernelNotFoundError(
                "no installed kernel has both an image in "
                f"{boot} and headers in {modules}/<release>/build "
                f"(images found: {', '.join(images) or 'none'}); install a pair with:\n"
                "    apt-get install linux-image-amd64 linux-headers-amd64"
            )
        return kernels[0]

    path = Path(spec)
    if "/" in spec or path.is_file():
        if not path.is_file():
            raise KernelNotFoundError(f"kernel image {spec} does not exist")
        release = image_release(path)
        if release is None:
            name = path.name
            release = name.removeprefix("vmlinuz-") if name.startswith("vmlinuz-") else None
        if release is None:
            raise KernelNotFoundError(f"cannot read a kernel release from {spec}: not an x86 bzImage")
        build = _build_dir_for_image(path, release, modules)
        if build is None:
            raise KernelNotFoundError(
                f"kernel image {spec} (release {release}) has no headers: expected "
                f"{modules}/{release}/build or a kernel tree around the image; install with:\n"
                f"    {headers_install_hint(release)}"
            )
        return Kernel(release, path.resolve(), build)

    image = boot / f"vmlinuz-{spec}"
    if not image.exists():
        known = ", ".join(k.release for k in installed_kernels(boot, modules)) or "none"
        raise KernelNotFoundError(
            f"kernel release {spec!r} is not installed ({image} missing; installed with headers: {known}); "
            f"install with:\n    apt-get install linux-image-{spec} linux-headers-{spec}"
        )
    kernel = _kernel_for_release(spec, boot, modules)
    if kernel is None:
        raise KernelNotFoundError(
            f"kernel {spec} has no headers ({modules}/{spec}/build missing); install with:\n"
            f"    {headers_install_hint(spec)}"
        )
    return kernel


@dataclass(frozen=True)
class ArchDirs:
    """Where one architecture's kernels and root live under the harness cache."""

    arch: Arch
    cache_root: Path

    @property
    def base(self) -> Path:
        return self.cache_root / "arch" / self.arch.name

    @property
    def store(self) -> Path:
        """The kernel store: boot/, lib/modules/<release>/, usr/src/ as in a root."""
        return self.base / "kernels"

    @property
    def boot(self) -> Path:
        return self.store / "boot"

    @property
    def modules(self) -> Path:
        return self.store / "lib" / "modules"

    @property
    def root(self) -> Path:
        """The guest's root filesystem."""
        return self.base / "root"


def arch_dirs(arch: Arch, cache_root: Path | None = None) -> ArchDirs:
    """`arch`'s directories under `cache_root` (default: the harness cache)."""
    return ArchDirs(arch, cache_root or default_cache_root())


def setup_hint(arch: Arch) -> str:
    return f"python -m harness arch-setup {arch.name}"


def foreign_kernels(arch: Arch, cache_root: Path | None = None) -> list[Kernel]:
    """The kernels in `arch`'s store, newest first."""
    dirs = arch_dirs(arch, cache_root)
    return [replace(k, arch=arch.name) for k in installed_kernels(dirs.boot, dirs.modules)]


def resolve_foreign_kernel(arch: Arch, spec: str | None, cache_root: Path | None = None) -> Kernel:
    """A release in `arch`'s store (None: the newest there), or what is missing and the command that adds it."""
    dirs = arch_dirs(arch, cache_root)
    if spec and "/" in spec:
        raise KernelNotFoundError(f"{arch.name} kernels are named by release ({arch.name}:6.1.0-57-{arch.debian}), "
                                  f"not by path: {spec}")  # fmt: skip
    try:
        kernel = resolve_kernel(spec, dirs.boot, dirs.modules)
    except KernelNotFoundError as e:
        have = ", ".join(k.release for k in foreign_kernels(arch, cache_root)) or "none"
        add = f"{setup_hint(arch)}{' --release ' + spec if spec else ''}"
        raise KernelNotFoundError(f"no {arch.name} kernel {spec or ''} in {dirs.store} (have: {have}); add it "
                                  f"with:\n    {add}\n({e.args[0].splitlines()[0]})") from None  # fmt: skip
    return replace(kernel, arch=arch.name)


ALL_KERNELS = "all"


def qualify(spec: str, arch: str | None) -> str:
    """`spec` with the architecture it is meant for: a spec without a prefix gets `arch` (the arch setting)
    when that is foreign; a prefix naming the host's architecture is dropped. "" stays "" on the host."""
    prefix, rest = split_arch(spec)
    name = prefix or arch or host_arch().name
    if not is_foreign(name):
        return rest
    return f"{arch_named(name).name}:{rest}"  # an unknown name: the error that lists the known ones


def expand_kernel_specs(specs: tuple[str, ...], boot: Path = BOOT_DIR, modules: Path = MODULES_DIR,
                        arch: str | None = None) -> list[str]:  # fmt: skip
    """Turn the user's list into specs: () -> [""] (the default kernel); "all" -> every installed
    kernel with headers, oldest first; duplicates dropped. `arch` (the arch setting) is the architecture
    of specs without one: a foreign one's "all" is every kernel of its store (harness.build.foreign), and
    its specs carry the prefix ("arm64:6.1.0-57-arm64", "arm64:" for the newest)."""
    out: list[str] = []
    for spec in specs or ("",):
        spec = qualify(spec, arch)
        prefix, rest = split_arch(spec)
        if rest != ALL_KERNELS:
            out.append(spec)
        elif prefix is None:
            found = [k.release for k in reversed(installed_kernels(boot, modules))]
            out += found or [""]  # nothing installed: the default spec reports what is missing
        else:
            found = [k.spec for k in reversed(foreign_kernels(arch_named(prefix)))]
            out += found or [f"{prefix}:"]
    return list(dict.fromkeys(out))


def _build_dir_for_image(image: Path, release: str, modules: Path) -> Path | None:
    candidate = modules / release / "build"
    if (candidate / "Makefile").exists():
        return candidate
    # A kernel tree: <tree>/arch/<arch>/boot/bzImage, built in place.
    for parent in image.resolve().parents:
        if (parent / "Makefile").exists() and (parent / "Module.symvers").exists():
            return parent
    return None
