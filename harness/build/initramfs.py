"""The opt-in fast boot path: a tiny busybox initramfs and an uncompressed kernel.

virtme-ng's boot under TCG spends most of its time outside the kernel (udev
coldplug and settle, its init's setup). The "qemu" engine boots the same
kernel straight into guest_scripts/fast-init, which loads the few modules a
9p root needs, mounts the host root read-only under a tmpfs overlay and starts
the same guest shell the vng engine uses.

Everything here is cached under the harness cache directory, keyed by content.
"""

from __future__ import annotations

import hashlib
import io
import lzma
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterable
from pathlib import Path

from harness.build.kernel import Kernel
from harness.errors import KernelModulesMissing, MissingDependencyError

# Modules a 9p root, the overlay and the virtio-serial channel need on the qemu engine's
# microvm (virtio-mmio devices); built in on some kernels.
BOOT_MODULES = ("virtio_mmio", "9pnet_virtio", "9p", "overlay", "virtio_console")


def _newc_entry(name: str, mode: int, data: bytes = b"", ino: int = 0) -> bytes:
    namez = name.encode() + b"\0"
    fields = [ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(namez), 0]
    head = b"070701" + b"".join(f"{v:08x}".encode() for v in fields)
    out = head + namez
    out += b"\0" * (-len(out) % 4)
    out += data
    out += b"\0" * (-len(out) % 4)
    return out


def cpio_newc(entries: Iterable[tuple[str, int, bytes]]) -> bytes:
    """A newc cpio archive of (path, mode, data) entries; directories need mode 0o040755."""
    buf = io.BytesIO()
    for ino, (name, mode, data) in enumerate(entries, start=1):
        buf.write(_newc_entry(name, mode, data, ino))
    buf.write(_newc_entry("TRAILER!!!", 0))
    return buf.getvalue()


def parse_modules_dep(text: str) -> dict[str, list[str]]:
    """modules.dep -> {module path: [dependency paths]}."""
    deps: dict[str, list[str]] = {}
    for line in text.splitlines():
        if ":" in line:
            mod, _, rest = line.partition(":")
            deps[mod.strip()] = rest.split()
    return deps


def module_name(path: str) -> str:
    base = path.rsplit("/", 1)[-1]
    for suffix in (".ko.xz", ".ko.zst", ".ko.gz", ".ko"):
        if base.endswith(suffix):
            base = base[: -len(suffix)]
    return base.replace("-", "_")


def load_order(deps: dict[str, list[str]], wanted: Iterable[str]) -> list[str]:
    """Module paths to insmod, dependencies first; wanted names missing from deps are built in."""
    by_name = {module_name(p): p for p in deps}
    order: list[str] = []

    def visit(path: str, stack: tuple[str, ...]) -> None:
        if path in order or path in stack:
            return
        for dep in deps.get(path, []):
            visit(dep, (*stack, path))
        order.append(path)

    for name in wanted:
        path = by_name.get(name.replace("-", "_"))
        if path is not None:
            visit(path, ())
    return order


def load_levels(deps: dict[str, list[str]], order: list[str]) -> list[list[str]]:
    """`order` grouped into levels: a module's dependencies are all in earlier levels,
    so the modules of one level can be loaded in parallel."""
    level: dict[str, int] = {}
    for path in order:  # dependencies first, so theirs are known
        level[path] = 1 + max((level[d] for d in deps.get(path, []) if d in level), default=-1)
    levels: list[list[str]] = [[] for _ in range(max(level.values(), default=-1) + 1)]
    for path in order:
        levels[level[path]].append(path)
    return levels


def decompress_module(path: Path) -> bytes:
    data = path.read_bytes()
    if path.name.endswith(".xz"):
        return lzma.decompress(data)
    if path.name.endswith(".zst"):
        return _zstd(data, check=True)
    if path.name.endswith(".gz"):
        import gzip

        return gzip.decompress(data)
    return data


def _zstd(data: bytes, *flags: str, check: bool) -> bytes:
    """`zstd -dc FLAGS` over `data`: its output."""
    zstd = shutil.which("zstd")
    if zstd is None:
        raise MissingDependencyError("zstd", "apt-get install zstd")
    return subprocess.run([zstd, "-dc", *flags], input=data, capture_output=True, check=check).stdout


XZ_MAGIC = b"\xfd7zXZ\x00"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
ELF_MAGIC = b"\x7fELF"


def extract_vmlinux(bzimage: bytes) -> bytes | None:
    """The uncompressed ELF kernel inside a bzImage (xz or zstd payload), or None.

    QEMU boots such an ELF through its PVH entry point, skipping the
    decompressor, which under TCG takes about 2 s.
    """
    for magic in (XZ_MAGIC, ZSTD_MAGIC):
        start = bzimage.find(magic)
        while start != -1:
            try:
                if magic == XZ_MAGIC:
                    out = lzma.LZMADecompressor().decompress(bzimage[start:])
                else:
                    out = _zstd_stream(bzimage[start:])
            except (lzma.LZMAError, subprocess.CalledProcessError):
                out = b""
            if out.startswith(ELF_MAGIC):
                return out
            start = bzimage.find(magic, start + 1)
    return None


def _zstd_stream(data: bytes) -> bytes:
    # The payload is followed by the decompressor's trailer; zstd stops at the frame end
    # but reports the trailing bytes as an error, so read what it produced.
    return _zstd(data, "--no-check", check=False)


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def cached_vmlinux(kernel: Kernel, cache_root: Path) -> Path | None:
    """Path of the kernel's uncompressed ELF (extracted once), or None if it cannot be had."""
    st = kernel.image.stat()
    out = cache_root / "vmlinux" / f"vmlinux-{kernel.release}-{st.st_size}-{int(st.st_mtime)}"
    if out.exists():
        return out
    data = extract_vmlinux(kernel.image.read_bytes())
    if data is None:
        return None
    _atomic_write(out, data)
    return out


def build_initramfs(kernel: Kernel, init_script: Path, cache_root: Path, busybox: str | None = None) -> Path:
    """The fast engine's initramfs for `kernel` (cached by content). Its busybox is the host's, or for a
    foreign kernel the static one of that architecture's root (harness.build.foreign)."""
    if busybox is None and kernel.foreign:
        from harness.arches import arch_named
        from harness.build.foreign import root_busybox
        from harness.build.kernel import arch_dirs, setup_hint

        arch = arch_named(kernel.arch)
        root = arch_dirs(arch, cache_root).root
        in_root = root_busybox(root)
        if in_root is None:
            raise MissingDependencyError(f"busybox in {root} (the {arch.name} root's static busybox)", setup_hint(arch))
        busybox = str(root / in_root.lstrip("/"))
    busybox = busybox or shutil.which("busybox")
    if busybox is None:
        raise MissingDependencyError("busybox", "apt-get install busybox-static")
    from harness.build.kernel_build import modules_dir_for

    moddir = modules_dir_for(kernel) or Path("/lib/modules") / kernel.release
    dep_file = moddir / "modules.dep"
    if not dep_file.exists():
        raise KernelModulesMissing(
            f"{dep_file} is missing: the qemu engine builds its initramfs from the modules of kernel "
            f"{kernel.release} installed on the host; install them (the distribution's package of that kernel, "
            f"e.g. linux-image-{kernel.release}), or run `depmod {kernel.release}` when {moddir} holds the "
            "modules without their index"
        )
    deps = parse_modules_dep(dep_file.read_text())
    order = load_order(deps, BOOT_MODULES)
    bb = Path(busybox).read_bytes()
    init = init_script.read_bytes()
    h = hashlib.sha256(bb + init + kernel.release.encode())
    for rel in order:
        st = (moddir / rel).stat()
        h.update(f"{rel}:{st.st_size}:{int(st.st_mtime)}".encode())
    out = cache_root / "initramfs" / f"initramfs-{kernel.release}-{h.hexdigest()[:16]}.cpio"
    if out.exists():
        return out
    entries: list[tuple[str, int, bytes]] = [
        ("bin", 0o040755, b""), ("dev", 0o040755, b""), ("proc", 0o040755, b""), ("sys", 0o040755, b""),
        ("newroot", 0o040755, b""), ("lower", 0o040755, b""), ("rw", 0o040755, b""), ("modules", 0o040755, b""),
        ("bin/busybox", 0o100755, bb), ("init", 0o100755, init),
    ]  # fmt: skip
    # modules/order: one line per level, the modules of a line loaded in parallel
    lines = []
    for level in load_levels(deps, order):
        names = []
        for rel in level:
            name = f"modules/{order.index(rel):02d}-{module_name(rel)}.ko"
            entries.append((name, 0o100644, decompress_module(moddir / rel)))
            names.append(name)
        lines.append(" ".join(names))
    entries.append(("modules/order", 0o100644, ("\n".join(lines) + "\n").encode()))
    _atomic_write(out, cpio_newc(entries))
    return out
