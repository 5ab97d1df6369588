"""arm64 kernels built here (`--kernel arm64:debug`, `arm64:debug:TREE`, `arm64:TREE`): cross-built through the
kernel-build path of the debug kernel (harness.build.kernel_build), with make's ARCH=arm64 and
CROSS_COMPILE=aarch64-linux-gnu-, out of the tree into a cache entry of the architecture's own, the image
arch/arm64/boot/Image, the release kbuild wrote, the arm64 configuration items, modules in the cache, a Kernel
of arch arm64 that the qemu engine boots on -M virt; and the host's entries of the same tree never touched.

A scripted runner stands in for vng and make, so no kernel is built here. The host is pinned to x86_64
(platform.machine), so arm64 is foreign whatever machine runs the tests.
"""

from __future__ import annotations

import hashlib
import json
import platform
import shutil
import tarfile
from collections.abc import Sequence
from pathlib import Path

import pytest
from test_kernel_build_profile import allnoconfig, fake_image  # tests/: a bzImage with its version string

from harness.arches import ARM64, arch_named
from harness.build import configure, kernel_source
from harness.build import kernel_build as kb
from harness.build.config_items import (
    DEBUG_PROFILE,
    PREFERRED_CONFIG,
    REQUIRED_CONFIG,
    TINY_BASE,
    BuildOptions,
    config_items,
)
from harness.build.configure import build_layout
from harness.build.kernel import Kernel, arch_dirs
from harness.build.kernel_build import build_kernel, built_kernel_for_spec, modules_dir_for, resolve_kernel_spec
from harness.errors import KernelBuildError, MissingDependencyError
from harness.guest.engines import GuestSpec, QemuEngine

VERSION = "6.1.192"
CROSS = ("ARCH=arm64", "CROSS_COMPILE=aarch64-linux-gnu-")
IMAGE = Path("arch/arm64/boot/Image")


@pytest.fixture(autouse=True)
def x86_64_host(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """An x86_64 host with the arm64 cross compiler (whatever this machine has), its cache under tmp_path."""
    monkeypatch.setattr(platform, "machine", lambda: "x86_64")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    real = shutil.which

    def which(name: str) -> str | None:
        return f"/usr/bin/{name}" if "linux-gnu-" in name else real(name)

    monkeypatch.setattr(configure.shutil, "which", which)


class FakeKbuild:
    """Runner: `vng --kconfig --dry-run [--arch arm64]` lists virtme-ng's items of that architecture; `make [O=]
    allnoconfig` copies KCONFIG_ALLCONFIG to the .config minus `drop`; a build with ARCH=arm64 writes
    arch/arm64/boot/Image (no bzImage header) and include/config/kernel.release, one without writes a bzImage;
    modules_install writes modules.dep under the release kbuild wrote. Every argv is recorded."""

    def __init__(self, drop: Sequence[str] = ()) -> None:
        self.drop = set(drop)
        self.calls: list[list[str]] = []

    def __call__(self, argv: Sequence[str], cwd: Path, log: Path) -> int:
        args = list(argv)
        self.calls.append(args)
        out = next((Path(a[2:]) for a in args if a.startswith("O=")), cwd)
        localversion = next((a.split("=", 1)[1] for a in args if a.startswith("LOCALVERSION=")), kb.LOCALVERSION)
        arm64 = "ARCH=arm64" in args
        if "--kconfig" in args and "--dry-run" in args:
            uart = "CONFIG_SERIAL_AMBA_PL011=y\n" if "--arch" in args else "CONFIG_SERIAL_8250=y\nCONFIG_KVM_GUEST=y\n"
            with log.open("a") as f:
                f.write(f"CONFIG_VIRTIO=y\nCONFIG_DRM=y\n{uart}")
            return 0
        if "allnoconfig" in args:
            return allnoconfig(args, out, self.drop)
        if "modules_install" in args:
            root = Path(next(a for a in args if a.startswith("INSTALL_MOD_PATH=")).split("=", 1)[1])
            release = (out / "include" / "config" / "kernel.release").read_text().strip()
            moddir = root / "lib" / "modules" / release
            moddir.mkdir(parents=True)
            (moddir / "modules.dep").write_text("kernel/crypto/crypto_user.ko:\n")
            return 0
        if "--build" in args or (args[0] == "make" and any(a.startswith("-j") for a in args)):
            with log.open("a") as f:
                f.write("  CC      kernel/fork.o\n  AS      arch/arm64/kernel/head.o\n")
            release = VERSION + localversion
            (out / "include" / "config").mkdir(parents=True, exist_ok=True)
            (out / "include" / "config" / "kernel.release").write_text(release + "\n")
            if arm64:
                (out / IMAGE).parent.mkdir(parents=True, exist_ok=True)
                (out / IMAGE).write_bytes(b"MZ\0\0 arm64 Image " + release.encode())
            else:
                fake_image(out / kb.KIMG, release)
            (out / "Module.symvers").write_text("")
            return 0
        return 64

    def makes(self) -> list[list[str]]:
        return [argv for argv in self.calls if argv[0] == "make"]


def make_tree(root: Path) -> Path:
    tree = root / "linux"
    (tree / "arch" / "arm64").mkdir(parents=True)
    (tree / "arch" / "x86").mkdir(parents=True)
    (tree / "Makefile").write_text("# fake\n")
    (tree / "Kconfig").write_text("mainmenu fake\n")
    (tree / "kernel.c").write_text("int x;\n")
    return tree


def arm64(**kw: object) -> BuildOptions:
    return BuildOptions(vng="vng", jobs=2, arch="arm64", **kw)  # type: ignore[arg-type]


def snapshot(directory: Path) -> dict[str, tuple[int, int]]:
    """Every file under `directory`: (size, mtime_ns)."""
    return {str(p.relative_to(directory)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(directory.rglob("*")) if p.is_file()}  # fmt: skip


# ---- the arm64 configuration -----------------------------------------------------------------------


def test_arm64_items_have_the_virt_machine_uart_and_not_x86_s() -> None:
    required = arm64().required()
    assert required["SERIAL_AMBA_PL011"] == "y" and required["SERIAL_AMBA_PL011_CONSOLE"] == "y"
    assert not {"PVH", "SERIAL_8250_CONSOLE", "VIRTIO_PCI"} & set(required)
    for name in ("VIRTIO_MMIO", "NET_9P_VIRTIO", "9P_FS", "OVERLAY_FS", "VIRTIO_CONSOLE", "BLK_DEV_INITRD", "MODULES"):
        assert required[name] == "y", name  # what the qemu engine's initramfs and fast-init need, built in
    assert required["CRYPTO_USER"] == "m"
    base = arm64().tiny_base()
    assert not {"SERIAL_8250", "ACPI", "KVM_GUEST", "HPET_TIMER", "PCI", "EARLY_PRINTK"} & set(base)
    assert base["DEVTMPFS"] == "y" and base["KALLSYMS_ALL"] == "y"


def test_arm64_debug_profile_keeps_kasan_and_drops_the_x86_image_items() -> None:
    profile = arm64(profile="debug").profile_config()
    assert {k: profile[k][0] for k in ("KASAN", "KASAN_GENERIC", "KASAN_INLINE", "DEBUG_KMEMLEAK", "GCOV_KERNEL")} == {
        "KASAN": "y", "KASAN_GENERIC": "y", "KASAN_INLINE": "y", "DEBUG_KMEMLEAK": "y", "GCOV_KERNEL": "y"}  # fmt: skip
    assert set(DEBUG_PROFILE) - set(profile) == {"KERNEL_GZIP", "KERNEL_ZSTD"}
    assert "KERNEL_ZSTD" not in arm64(profile="debug").config()


def test_the_host_s_build_request_and_its_fingerprint_are_what_they_were() -> None:
    """The x86 debug kernel in the cache (21 min to build) stays a cache hit: its configuration request and
    fingerprint do not change with the arch field, a host-named arch included."""
    host = BuildOptions(vng="vng", profile="debug")
    wanted = {**REQUIRED_CONFIG, **PREFERRED_CONFIG, **{k: v for k, (v, _) in DEBUG_PROFILE.items()}}
    assert host.config() == wanted and host.required() is REQUIRED_CONFIG and host.tiny_base() is TINY_BASE
    assert host.make_vars() == () and not host.foreign
    named = BuildOptions(vng="vng", profile="debug", arch="x86_64")
    assert named.fingerprint() == host.fingerprint() and named.make_vars() == ()
    assert arm64(profile="debug").fingerprint() != host.fingerprint()
    assert kb.localversion(host) == "-virtme-debug" and kb.localversion(arm64(profile="debug")) == "-virtme-debug-arm64"
    assert build_layout(Path("/t"), Path("/c"), "debug").objdir == Path("/c/kernel-builds") / (
        build_layout(Path("/t"), Path("/c")).record.stem + "-debug-obj")  # fmt: skip


def test_the_host_s_fingerprint_is_computed_as_before_the_arch_field() -> None:
    """The formula of the fingerprint the x86 debug kernel in ~/.cache was recorded with (a change of it is a
    21-minute rebuild on 2 cores)."""
    from importlib import metadata

    for options in (BuildOptions(vng="vng", profile="debug"), BuildOptions(vng="vng", profile="debug", arch="x86_64"),
                    BuildOptions(vng="vng")):  # fmt: skip
        parts: list[object] = [sorted(options.config().items()), False, "tiny", metadata.version("virtme-ng")]
        parts += [options.profile] if options.profile else []
        assert options.fingerprint() == hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:16]


# ---- building ---------------------------------------------------------------------------------------


def test_arm64_debug_is_cross_built_out_of_the_tree_into_its_own_entry(tmp_path: Path) -> None:
    tree, cache, run = make_tree(tmp_path), tmp_path / "cache", FakeKbuild()
    said: list[str] = []
    built = build_kernel(tree, options=arm64(profile="debug"), cache_root=cache, run=run, notify=said.append)
    objdir = cache / "kernel-builds" / (build_layout(tree, cache).record.stem + "-arm64-debug-obj")
    k = built.kernel
    assert (k.release, k.arch, k.image, k.build_dir) == (f"{VERSION}-virtme-debug-arm64", "arm64", objdir / IMAGE,
                                                        objdir)  # fmt: skip
    assert k.foreign and k.spec == f"arm64:{VERSION}-virtme-debug-arm64"
    makes = run.makes()
    assert len(makes) == 3 and all(argv[1:4] == [f"O={objdir}", *CROSS] for argv in makes)
    assert ["make", f"O={objdir}", *CROSS, "-j2", "LOCALVERSION=-virtme-debug-arm64"] in makes
    dry_run = next(argv for argv in run.calls if "--dry-run" in argv)
    assert dry_run[:5] == ["vng", "--kconfig", "--dry-run", "--arch", "arm64"]
    assert not (tree / ".config").exists() and not (tree / IMAGE).exists()  # the tree stays clean
    config = config_items((objdir / ".config").read_text())
    for name, value in {"KASAN": "y", "KASAN_GENERIC": "y", "SERIAL_AMBA_PL011_CONSOLE": "y", "VIRTIO_MMIO": "y",
                        "RTC_DRV_PL031": "y", "CRYPTO_USER": "m"}.items():  # fmt: skip
        assert config.get(name) == value, name
    assert not {"PVH", "KERNEL_GZIP", "SERIAL_8250_CONSOLE", "KVM_GUEST", "DRM"} & set(config)
    assert built.modules_dir == cache / "kernel-builds" / f"{objdir.name.removesuffix('-obj')}-modules" / "lib" / (
        "modules") / k.release  # fmt: skip
    assert modules_dir_for(k, cache) == built.modules_dir
    record = json.loads((cache / "kernel-builds" / f"{objdir.name.removesuffix('-obj')}.json").read_text())
    assert (record["arch"], record["release"], record["image"]) == ("arm64", k.release, str(objdir / IMAGE))
    assert "(debug profile; arm64, aarch64-linux-gnu-gcc): configuring" in said[0]
    assert said[-1].startswith(f"kernel tree {tree.resolve()} (debug profile; arm64, aarch64-linux-gnu-gcc): built")


def test_the_host_s_debug_entry_of_the_same_tree_is_never_touched(tmp_path: Path) -> None:
    tree, cache, run = make_tree(tmp_path), tmp_path / "cache", FakeKbuild()
    x86 = build_kernel(tree, options=BuildOptions(vng="vng", jobs=2, profile="debug"), cache_root=cache, run=run)
    assert x86.kernel.arch == "x86_64" and x86.kernel.image.name == "bzImage"
    host_files = {p: snapshot(p) if p.is_dir() else p.stat().st_mtime_ns
                  for p in (cache / "kernel-builds").iterdir()}  # fmt: skip
    calls = len(run.calls)
    a = build_kernel(tree, options=arm64(profile="debug"), cache_root=cache, run=run)
    assert not a.cached and all("ARCH=arm64" in argv for argv in run.makes()[3:])
    assert len(run.calls) > calls and all(c[0] != "make" or any(x.startswith("O=") and "arm64" in x for x in c)
                                          for c in run.calls[calls:])  # fmt: skip
    assert {p: snapshot(p) if p.is_dir() else p.stat().st_mtime_ns for p in host_files} == host_files
    calls = len(run.calls)
    again = build_kernel(tree, options=BuildOptions(vng="vng", jobs=2, profile="debug"), cache_root=cache, run=run)
    assert again.cached and again.kernel == x86.kernel
    assert build_kernel(tree, options=arm64(profile="debug"), cache_root=cache, run=run).kernel == a.kernel
    assert len(run.calls) == calls  # both cache hits: nothing ran


def test_the_arm64_cache_entry_is_checked_against_the_release_kbuild_wrote(tmp_path: Path) -> None:
    tree, cache, run = make_tree(tmp_path), tmp_path / "cache", FakeKbuild()
    built = build_kernel(tree, options=arm64(profile="debug"), cache_root=cache, run=run)
    release_file = built.kernel.build_dir / "include" / "config" / "kernel.release"
    release_file.write_text("6.1.999-other\n")  # a build by hand in the entry's directory since
    calls = len(run.calls)
    rebuilt = build_kernel(tree, options=arm64(profile="debug"), cache_root=cache, run=run)
    assert not rebuilt.cached and len(run.calls) > calls and rebuilt.kernel == built.kernel
    built.kernel.image.unlink()
    assert not build_kernel(tree, options=arm64(profile="debug"), cache_root=cache, run=run).cached


def test_a_build_without_the_release_file_is_an_error(tmp_path: Path) -> None:
    class NoRelease(FakeKbuild):
        def __call__(self, argv: Sequence[str], cwd: Path, log: Path) -> int:
            status = super().__call__(argv, cwd, log)
            for a in argv:
                if a.startswith("O=") and "-j2" in argv:
                    (Path(a[2:]) / "include" / "config" / "kernel.release").unlink()
            return status

    with pytest.raises(KernelBuildError, match=r"produced no readable .*arch/arm64/boot/Image"):
        build_kernel(make_tree(tmp_path), options=arm64(profile="debug"), cache_root=tmp_path / "c", run=NoRelease())


def test_a_plain_arm64_tree_build_goes_out_of_the_tree_too(tmp_path: Path) -> None:
    tree, cache, run = make_tree(tmp_path), tmp_path / "cache", FakeKbuild()
    k = resolve_kernel_spec(f"arm64:{tree}", options=BuildOptions(vng="vng", jobs=2), run=run, cache_root=cache)
    objdir = cache / "kernel-builds" / (build_layout(tree, cache).record.stem + "-arm64-obj")
    assert (k.release, k.arch, k.build_dir, k.image) == (f"{VERSION}-virtme-arm64", "arm64", objdir, objdir / IMAGE)
    assert not any("--build" in argv for argv in run.calls)  # make, not `vng --build`
    assert not (tree / ".config").exists() and modules_dir_for(k, cache) is not None
    plain = resolve_kernel_spec(str(tree), options=BuildOptions(vng="vng"), run=run, cache_root=cache)
    assert plain.build_dir == tree and plain.arch == "x86_64"  # the host's plain build stays in the tree


def test_an_arm64_build_of_a_tree_built_in_place_names_the_fix(tmp_path: Path) -> None:
    tree = make_tree(tmp_path)
    (tree / "arch" / "arm64" / "include" / "generated").mkdir(parents=True)
    with pytest.raises(KernelBuildError, match=r"arch/arm64/include/generated.*--kernel arm64:debug:\.\./linux-debug"):
        build_kernel(tree, options=arm64(profile="debug"), cache_root=tmp_path / "c", run=FakeKbuild())
    with pytest.raises(KernelBuildError, match=r"the arm64 build goes to .*--kernel arm64:\.\./linux-arm64"):
        build_kernel(tree, options=arm64(), cache_root=tmp_path / "c", run=FakeKbuild())
    x86 = build_kernel(tree, options=BuildOptions(vng="vng", profile="debug"), cache_root=tmp_path / "c",
                       run=FakeKbuild())  # fmt: skip
    assert x86.kernel.arch == "x86_64"  # make checks only the built architecture's generated headers


def test_without_the_cross_compiler_nothing_runs_and_the_package_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(configure.shutil, "which", lambda name: None)
    run = FakeKbuild()
    with pytest.raises(MissingDependencyError, match=r"(?s)aarch64-linux-gnu-gcc.*install gcc-aarch64-linux-gnu"):
        build_kernel(make_tree(tmp_path), options=arm64(profile="debug"), cache_root=tmp_path / "c", run=run)
    assert run.calls == []


def test_an_arm64_profile_symbol_the_tree_cannot_enable_is_an_error_naming_it(tmp_path: Path) -> None:
    run = FakeKbuild(drop=["KASAN_GENERIC"])
    with pytest.raises(KernelBuildError, match=r"CONFIG_KASAN_GENERIC=y \(have unset"):
        build_kernel(make_tree(tmp_path), options=arm64(profile="debug"), cache_root=tmp_path / "c", run=run)
    assert not any("-j2" in argv for argv in run.calls)


def test_a_missing_pl011_console_fails_the_configuration(tmp_path: Path) -> None:
    run = FakeKbuild(drop=["SERIAL_AMBA_PL011_CONSOLE"])
    with pytest.raises(KernelBuildError, match=r"CONFIG_SERIAL_AMBA_PL011_CONSOLE=y \(have unset\)"):
        build_kernel(make_tree(tmp_path), options=arm64(profile="debug"), cache_root=tmp_path / "c", run=run)


# ---- the --kernel specs ---------------------------------------------------------------------------------


def make_tarball(path: Path, tmp: Path) -> Path:
    tree = make_tree(tmp / "stage")
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:xz") as tar:
        tar.add(tree, arcname="linux-source-6.1")
    return path


def test_arm64_debug_builds_the_distribution_source_beside_the_host_s_debug(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_tarball(tmp_path / "usr-src" / "linux-source-6.1.tar.xz", tmp_path)
    monkeypatch.setattr(kernel_source, "SOURCE_DIR", tmp_path / "usr-src")
    cache, run = tmp_path / "cache", FakeKbuild()
    options = BuildOptions(vng="vng")
    k = resolve_kernel_spec("arm64:debug", options=options, run=run, cache_root=cache)
    assert k.arch == "arm64" and k.release == f"{VERSION}-virtme-debug-arm64" and k.image.parts[-4:] == IMAGE.parts
    assert k.build_dir.parent == cache / "kernel-builds" and k.build_dir.name.endswith("-arm64-debug-obj")
    x86 = resolve_kernel_spec("debug", options=options, run=run, cache_root=cache)
    assert x86.arch == "x86_64" and x86.build_dir.name.endswith("-debug-obj") and "arm64" not in x86.build_dir.name
    calls = len(run.calls)
    assert resolve_kernel_spec("arm64:debug", options=options, run=run, cache_root=cache) == k
    assert len(run.calls) == calls
    tree = make_tree(tmp_path / "own")
    own = resolve_kernel_spec(f"arm64:debug:{tree}", options=options, run=run, cache_root=cache)
    assert own.arch == "arm64" and own.build_dir != k.build_dir


def test_built_kernel_for_spec_finds_an_arm64_build_without_building(tmp_path: Path) -> None:
    tree, cache, run = make_tree(tmp_path), tmp_path / "cache", FakeKbuild()
    spec = f"arm64:debug:{tree}"
    assert built_kernel_for_spec(spec, options=BuildOptions(vng="vng"), cache_root=cache) is None
    built = resolve_kernel_spec(spec, options=BuildOptions(vng="vng"), run=run, cache_root=cache)
    assert built_kernel_for_spec(spec, options=BuildOptions(vng="vng"), cache_root=cache) == built
    assert built_kernel_for_spec(f"debug:{tree}", options=BuildOptions(vng="vng"), cache_root=cache) is None


def test_an_arm64_release_still_comes_from_the_store(tmp_path: Path) -> None:
    with pytest.raises(Exception, match=r"arch-setup arm64"):
        resolve_kernel_spec("arm64:6.1.0-57-arm64", run=FakeKbuild(), cache_root=tmp_path / "c")


def test_modules_dir_for_the_store_s_kernel_and_a_built_one(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    dirs = arch_dirs(ARM64, cache)
    store_build = dirs.modules / "6.1.0-57-arm64" / "build"
    store_build.mkdir(parents=True)
    store = Kernel("6.1.0-57-arm64", dirs.boot / "vmlinuz-6.1.0-57-arm64", store_build, "arm64")
    assert modules_dir_for(store, cache) is None
    (store_build.parent / "modules.dep").write_text("")
    assert modules_dir_for(store, cache) == store_build.parent
    built = build_kernel(make_tree(tmp_path), options=arm64(profile="debug"), cache_root=cache, run=FakeKbuild())
    assert modules_dir_for(built.kernel, cache) == built.modules_dir != store_build.parent


# ---- the qemu engine boots it on -M virt ----------------------------------------------------------------


def test_the_qemu_engine_boots_the_built_image_on_virt(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    built = build_kernel(make_tree(tmp_path), options=arm64(profile="debug"), cache_root=cache, run=FakeKbuild())
    engine = QemuEngine(which=lambda name: f"/usr/bin/{name}", vmlinux=lambda kernel, c: None,
                        initramfs=lambda kernel, init, c: c / f"initramfs-{kernel.release}.cpio",
                        tsc_khz=lambda: 2_994_000)  # fmt: skip
    launch = GuestSpec(kernel=built.kernel, name="knh-1", accel="tcg", run_dir=tmp_path / "run",
                       shell=Path("/g/guest-shell"), cache=cache,
                       tree_modules=modules_dir_for(built.kernel, cache))  # fmt: skip
    argv = engine.argv(launch)
    assert argv[0] == "/usr/bin/" + arch_named("arm64").qemu and argv[argv.index("-M") + 1] == "virt"
    assert argv[argv.index("-kernel") + 1] == str(built.kernel.image)
    append = argv[argv.index("-append") + 1]
    assert "console=ttyAMA0" in append and "tsc_early_khz" not in append
    assert f"knh.map=/lib/modules/{built.kernel.release}" in append
