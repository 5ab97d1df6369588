import lzma
import shutil
import subprocess
from pathlib import Path

import pytest

from harness.build.initramfs import cpio_newc, extract_vmlinux, load_levels, load_order, module_name, parse_modules_dep

DEP = """kernel/fs/9p/9p.ko: kernel/net/9p/9pnet.ko kernel/fs/netfs/netfs.ko
kernel/net/9p/9pnet_virtio.ko: kernel/net/9p/9pnet.ko kernel/drivers/virtio/virtio.ko
kernel/net/9p/9pnet.ko:
kernel/fs/netfs/netfs.ko:
kernel/drivers/virtio/virtio.ko:
kernel/fs/overlayfs/overlay.ko.xz:
"""


def test_load_order_puts_dependencies_first_once() -> None:
    order = load_order(parse_modules_dep(DEP), ["9pnet_virtio", "9p", "overlay", "virtio_pci"])
    assert order == [
        "kernel/net/9p/9pnet.ko",
        "kernel/drivers/virtio/virtio.ko",
        "kernel/net/9p/9pnet_virtio.ko",
        "kernel/fs/netfs/netfs.ko",
        "kernel/fs/9p/9p.ko",
        "kernel/fs/overlayfs/overlay.ko.xz",
    ]  # virtio_pci absent from modules.dep: built in


def test_load_levels_put_every_dependency_in_an_earlier_level() -> None:
    deps = parse_modules_dep(DEP)
    levels = load_levels(deps, load_order(deps, ["9pnet_virtio", "9p", "overlay"]))
    assert levels == [
        ["kernel/net/9p/9pnet.ko", "kernel/drivers/virtio/virtio.ko", "kernel/fs/netfs/netfs.ko",
         "kernel/fs/overlayfs/overlay.ko.xz"],
        ["kernel/net/9p/9pnet_virtio.ko", "kernel/fs/9p/9p.ko"],
    ]  # fmt: skip
    assert load_levels(deps, []) == []


def test_module_name() -> None:
    assert module_name("kernel/fs/overlayfs/overlay.ko.xz") == "overlay"
    assert module_name("a/virtio-pci.ko") == "virtio_pci"


@pytest.mark.skipif(shutil.which("cpio") is None, reason="cpio not installed (apt-get install cpio)")
def test_cpio_archive_is_readable_by_cpio(tmp_path: Path) -> None:
    hello = b"#!/bin/sh\necho hi\n"
    data = cpio_newc([("bin", 0o040755, b""), ("bin/hello", 0o100755, hello), ("init", 0o100644, b"x")])
    out = subprocess.run(["cpio", "-t"], input=data, capture_output=True, check=True).stdout.decode().split()
    assert out == ["bin", "bin/hello", "init"]
    subprocess.run(["cpio", "-id", "--quiet"], input=data, cwd=tmp_path, check=True)
    assert (tmp_path / "bin/hello").read_bytes() == b"#!/bin/sh\necho hi\n"


def test_extract_vmlinux_finds_the_elf_payload() -> None:
    elf = b"\x7fELF" + b"kernel" * 100
    image = b"MZ" + b"\0" * 1000 + lzma.compress(elf, format=lzma.FORMAT_XZ) + b"trailer"
    assert extract_vmlinux(image) == elf
    assert extract_vmlinux(b"MZ" + lzma.compress(b"not an elf", format=lzma.FORMAT_XZ)) is None
