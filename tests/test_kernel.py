import struct
from pathlib import Path

import pytest

from harness.build.kernel import image_release, installed_kernels, release_sort_key, resolve_kernel
from harness.errors import KernelNotFoundError


def fake_bzimage(path: Path, version: str) -> Path:
    data = bytearray(0x1000)
    data[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", data, 0x20E, 0x400)
    text = f"{version} (builder@host) #1 SMP PREEMPT_DYNAMIC".encode() + b"\0"
    data[0x600 : 0x600 + len(text)] = text
    path.write_bytes(bytes(data))
    return path


def make_install(root: Path, release: str, headers: bool = True) -> None:
    (root / "boot").mkdir(exist_ok=True)
    fake_bzimage(root / "boot" / f"vmlinuz-{release}", release)
    if headers:
        build = root / "modules" / release / "build"
        build.mkdir(parents=True)
        (build / "Makefile").write_text("")


def test_release_sort_is_numeric() -> None:
    rels = ["6.1.0-9-amd64", "6.12.117+deb12-amd64", "6.1.0-56-amd64"]
    assert sorted(rels, key=release_sort_key, reverse=True) == [
        "6.12.117+deb12-amd64",
        "6.1.0-56-amd64",
        "6.1.0-9-amd64",
    ]


def test_image_release_reads_bzimage_header(tmp_path: Path) -> None:
    assert image_release(fake_bzimage(tmp_path / "bz", "6.12.117+deb12-amd64")) == "6.12.117+deb12-amd64"
    (tmp_path / "junk").write_bytes(b"\0" * 4096)
    assert image_release(tmp_path / "junk") is None


def test_default_is_newest_with_headers(tmp_path: Path) -> None:
    make_install(tmp_path, "6.1.0-56-amd64")
    make_install(tmp_path, "6.12.117+deb12-amd64", headers=False)
    k = resolve_kernel(None, tmp_path / "boot", tmp_path / "modules")
    assert k.release == "6.1.0-56-amd64"
    assert [x.release for x in installed_kernels(tmp_path / "boot", tmp_path / "modules")] == ["6.1.0-56-amd64"]


def test_release_without_headers_names_package(tmp_path: Path) -> None:
    make_install(tmp_path, "6.12.117+deb12-amd64", headers=False)
    with pytest.raises(KernelNotFoundError, match=r"apt-get install linux-headers-6\.12\.117"):
        resolve_kernel("6.12.117+deb12-amd64", tmp_path / "boot", tmp_path / "modules")


def test_unknown_release(tmp_path: Path) -> None:
    (tmp_path / "boot").mkdir()
    with pytest.raises(KernelNotFoundError, match="not installed"):
        resolve_kernel("5.10.0-1-amd64", tmp_path / "boot", tmp_path / "modules")


def test_image_path_finds_headers_by_embedded_release(tmp_path: Path) -> None:
    make_install(tmp_path, "6.1.0-56-amd64")
    img = fake_bzimage(tmp_path / "bzImage", "6.1.0-56-amd64")
    k = resolve_kernel(str(img), tmp_path / "boot", tmp_path / "modules")
    assert (k.release, k.image, k.build_dir) == ("6.1.0-56-amd64", img, tmp_path / "modules/6.1.0-56-amd64/build")


def test_no_kernel_at_all(tmp_path: Path) -> None:
    (tmp_path / "boot").mkdir()
    with pytest.raises(KernelNotFoundError, match="linux-image-amd64 linux-headers-amd64"):
        resolve_kernel(None, tmp_path / "boot", tmp_path / "modules")


def test_all_expands_to_installed_kernels_oldest_first(tmp_path: Path) -> None:
    from harness.build.kernel import expand_kernel_specs

    make_install(tmp_path, "6.12.117+deb12-amd64")
    make_install(tmp_path, "6.1.0-56-amd64")
    boot, mods = tmp_path / "boot", tmp_path / "modules"
    assert expand_kernel_specs(("all",), boot, mods) == ["6.1.0-56-amd64", "6.12.117+deb12-amd64"]
    assert expand_kernel_specs(("6.1.0-56-amd64", "all"), boot, mods) == ["6.1.0-56-amd64", "6.12.117+deb12-amd64"]
    assert expand_kernel_specs((), boot, mods) == [""]
