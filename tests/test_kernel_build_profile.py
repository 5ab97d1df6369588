"""The debug profile of harness.build.kernel_build: its data, `debug`/`debug:TREE` specs, the out-of-tree
(make O=) build that keeps it apart from the plain build of the same tree, the error naming a symbol
the tree cannot enable, the distribution source unpacked once, and the build's progress messages.

A scripted runner stands in for vng and make, so no kernel is built here.
"""

from __future__ import annotations

import json
import struct
import tarfile
from collections.abc import Sequence
from pathlib import Path

import pytest

from harness.build import kernel_build as kb
from harness.build import kernel_source
from harness.build.config_items import DEBUG_PROFILE, BuildOptions, missing_profile
from harness.build.configure import build_layout
from harness.build.kernel_build import build_kernel, built_kernel_for_spec, modules_dir_for, resolve_kernel_spec
from harness.build.kernel_source import find_distro_source, parse_profile_spec, unpack_source
from harness.build.progress import BuildProgress, count_compiled, previous_objects
from harness.errors import KernelBuildError, KernelNotFoundError

SUBLEVEL_RELEASE = "6.1.192"


def fake_image(path: Path, release: str) -> None:
    data = bytearray(0x1000)
    data[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", data, 0x20E, 0x400)
    text = f"{release} (builder@host) #1 SMP".encode()
    data[0x600 : 0x600 + len(text)] = text
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bytes(data))


def allnoconfig(args: Sequence[str], out: Path, drop: set[str]) -> int:
    """A fake `make [O=out] allnoconfig`: KCONFIG_ALLCONFIG copied to out/.config, minus the symbols in `drop`."""
    allconfig = Path(next(a for a in args if a.startswith("KCONFIG_ALLCONFIG=")).split("=", 1)[1])
    dropped = tuple(f"CONFIG_{d}=" for d in drop)
    lines = [ln for ln in allconfig.read_text().splitlines() if not ln.startswith(dropped)]
    (out / ".config").write_text("\n".join(lines) + "\n")
    return 0


class FakeKbuild:
    """Runner: `vng --kconfig --dry-run` lists items; `make [O=dir] allnoconfig` copies KCONFIG_ALLCONFIG to
    the .config, minus `drop` (symbols "the tree lacks"); a build writes bzImage and prints CC lines;
    modules_install writes modules.dep. Every argv is recorded."""

    def __init__(self, drop: Sequence[str] = ()) -> None:
        self.drop = set(drop)
        self.calls: list[tuple[list[str], Path]] = []

    def __call__(self, argv: Sequence[str], cwd: Path, log: Path) -> int:
        args = list(argv)
        self.calls.append((args, cwd))
        out = cwd
        localversion = ""
        for a in args:
            if a.startswith("O="):
                out = Path(a[2:])
            if a.startswith("LOCALVERSION="):
                localversion = a.split("=", 1)[1]
        if "--kconfig" in args and "--dry-run" in args:
            with log.open("a") as f:
                f.write("CONFIG_VIRTIO=y\nCONFIG_DRM=y\n# CONFIG_USB is not set\n")
            return 0
        if "allnoconfig" in args:
            return allnoconfig(args, out, self.drop)
        if "modules_install" in args:
            root = Path(next(a for a in args if a.startswith("INSTALL_MOD_PATH=")).split("=", 1)[1])
            moddir = root / "lib" / "modules" / (SUBLEVEL_RELEASE + localversion)
            moddir.mkdir(parents=True)
            (moddir / "modules.dep").write_text("")
            return 0
        if "--build" in args or (args[0] == "make" and any(a.startswith("-j") for a in args)):
            with log.open("a") as f:
                f.write("  CC      kernel/fork.o\n  CC [M]  fs/x.o\n  AS      arch/x86/entry.o\n  LD      vmlinux\n")
            fake_image(out / kb.KIMG, SUBLEVEL_RELEASE + (localversion or kb.LOCALVERSION))
            (out / "Module.symvers").write_text("")
            return 0
        return 64


def make_tree(root: Path) -> Path:
    tree = root / "linux"
    (tree / "arch" / "x86").mkdir(parents=True)
    (tree / "Makefile").write_text("# fake\n")
    (tree / "Kconfig").write_text("mainmenu fake\n")
    (tree / "kernel.c").write_text("int x;\n")
    return tree


def debug(**kw: object) -> BuildOptions:
    return BuildOptions(vng="vng", profile="debug", jobs=2, **kw)  # type: ignore[arg-type]


# ---- the profile as data ---------------------------------------------------------------------------


def test_profile_has_what_the_issue_asks_with_a_reason_each() -> None:
    wanted = {
        "KASAN": "y", "KASAN_GENERIC": "y", "KASAN_INLINE": "y", "DEBUG_KMEMLEAK": "y",
        "DEBUG_KMEMLEAK_AUTO_SCAN": "n", "DEBUG_KMEMLEAK_DEFAULT_OFF": "n", "PROVE_LOCKING": "y",
        "DEBUG_ATOMIC_SLEEP": "y", "DEBUG_OBJECTS": "y", "DEBUG_OBJECTS_TIMERS": "y", "DEBUG_OBJECTS_WORK": "y",
        "UBSAN": "y", "UBSAN_BOUNDS": "y", "SLUB_DEBUG_ON": "y", "KFENCE": "n", "GCOV_KERNEL": "y", "DEBUG_FS": "y",
    }  # fmt: skip
    assert {k: DEBUG_PROFILE[k][0] for k in wanted} == wanted
    assert all(len(reason) > 20 for _, reason in DEBUG_PROFILE.values())


def test_profile_options_carry_the_profile_and_the_harness_items() -> None:
    config = debug().config()
    assert config["KASAN"] == "y" and config["KFENCE"] == "n"
    assert config["MODULES"] == "y" and config["VIRTIO_MMIO"] == "y"  # REQUIRED_CONFIG still there
    assert "KASAN" not in BuildOptions().config()
    assert debug().fingerprint() != BuildOptions(vng="vng", jobs=2).fingerprint()


def test_an_unknown_profile_is_an_error_naming_the_known_ones() -> None:
    with pytest.raises(KernelBuildError, match=r"unknown kernel profile 'fast'.*debug"):
        BuildOptions(profile="fast").config()


@pytest.mark.parametrize(
    ("spec", "parsed"),
    [("debug", ("debug", "")), ("debug:/src/linux", ("debug", "/src/linux")), ("debug:", None),
     ("debugx", None), ("6.1.0-9-amd64", None), ("./debug", None), ("/boot/vmlinuz-6", None)],
)  # fmt: skip
def test_parse_profile_spec(spec: str, parsed: tuple[str, str] | None) -> None:
    assert parse_profile_spec(spec) == parsed


def test_missing_profile_names_the_symbol_and_its_reason_and_allows_dropped_optional_symbols() -> None:
    profile = {"KASAN": ("y", "slab checks"), "KFENCE": ("n", "off"), "UBSAN_SANITIZE_ALL": ("y", "all")}
    assert missing_profile({"KASAN": "y", "UBSAN_SANITIZE_ALL": "y"}, profile) == []
    assert missing_profile({"KASAN": "y"}, profile) == []  # a newer tree without UBSAN_SANITIZE_ALL
    assert missing_profile({"KASAN": "y", "UBSAN_SANITIZE_ALL": "n"}, profile) == [
        "CONFIG_UBSAN_SANITIZE_ALL=y (have n; wanted for: all)"
    ]
    assert missing_profile({"KFENCE": "y"}, profile) == [
        "CONFIG_KASAN=y (have unset; wanted for: slab checks)",
        "CONFIG_KFENCE=n (have y; wanted for: off)",
    ]


# ---- building with the profile ---------------------------------------------------------------------


def test_debug_build_goes_out_of_the_tree_and_is_a_cache_entry_of_its_own(tmp_path: Path) -> None:
    tree, cache, run = make_tree(tmp_path), tmp_path / "cache", FakeKbuild()
    built = build_kernel(tree, options=debug(), cache_root=cache, run=run)
    objdir = cache / "kernel-builds" / (build_layout(tree, cache).record.stem + "-debug-obj")
    assert built.kernel.build_dir == objdir and built.kernel.image == objdir / kb.KIMG
    assert built.kernel.release == f"{SUBLEVEL_RELEASE}-virtme-debug"
    assert not (tree / ".config").exists() and not (tree / kb.KIMG).exists()  # the tree stays clean
    make_calls = [argv for argv, _ in run.calls if argv[0] == "make"]
    assert all(f"O={objdir}" in argv for argv in make_calls) and len(make_calls) == 3
    assert ["make", f"O={objdir}", "-j2", "LOCALVERSION=-virtme-debug"] in make_calls
    assert modules_dir_for(built.kernel, cache) == built.modules_dir
    assert "CONFIG_KASAN=y" in (objdir / ".config").read_text()

    plain = build_kernel(tree, options=BuildOptions(vng="vng"), cache_root=cache, run=run)
    assert plain.kernel.build_dir == tree and plain.kernel.release == f"{SUBLEVEL_RELEASE}-virtme"
    assert not plain.cached
    calls = len(run.calls)
    again = build_kernel(tree, options=debug(), cache_root=cache, run=run)  # the plain build did not evict it
    assert again.cached and again.kernel == built.kernel and len(run.calls) == calls
    assert build_kernel(tree, options=BuildOptions(vng="vng"), cache_root=cache, run=run).cached


def test_a_profile_symbol_the_tree_cannot_enable_is_an_error_naming_it(tmp_path: Path) -> None:
    run = FakeKbuild(drop=["DEBUG_OBJECTS_WORK"])
    with pytest.raises(KernelBuildError, match=r"CONFIG_DEBUG_OBJECTS_WORK=y \(have unset; wanted for: ODEBUG"):
        build_kernel(make_tree(tmp_path), options=debug(), cache_root=tmp_path / "c", run=run)
    assert not any("-j2" in argv for argv, _ in run.calls)  # stopped before the build


def test_an_optional_profile_symbol_may_be_absent(tmp_path: Path) -> None:
    run = FakeKbuild(drop=["UBSAN_SANITIZE_ALL"])
    built = build_kernel(make_tree(tmp_path), options=debug(), cache_root=tmp_path / "c", run=run)
    assert built.kernel.release.endswith("-debug")


def test_a_tree_with_an_in_tree_build_gets_the_fix_named(tmp_path: Path) -> None:
    tree = make_tree(tmp_path)
    (tree / ".config").write_text("CONFIG_X=y\n")
    with pytest.raises(KernelBuildError, match=r"in-tree build \(\.config\).*make mrproper.*git worktree"):
        build_kernel(tree, options=debug(), cache_root=tmp_path / "c", run=FakeKbuild())


def test_progress_names_each_step_and_the_measured_time(tmp_path: Path) -> None:
    said: list[str] = []
    build_kernel(make_tree(tmp_path), options=debug(), cache_root=tmp_path / "c", run=FakeKbuild(),
                 notify=said.append)  # fmt: skip
    steps = ["configuring", "building with 2 job(s)", "installing modules", "built 6.1.192-virtme-debug in"]
    positions = [next(i for i, m in enumerate(said) if step in m) for step in steps]
    assert positions == sorted(positions)
    assert said[-1].endswith("(3 objects compiled)")


def test_count_compiled_counts_cc_and_as_lines_only() -> None:
    text = "  CC      kernel/fork.o\n  CC [M]  net/x.o\n  AS      a.o\n  LD      vmlinux\nCC not indented\n"
    assert count_compiled(text) == 3


def test_build_progress_reads_the_log_as_it_grows_and_gives_a_share_of_the_last_total(tmp_path: Path) -> None:
    log = tmp_path / "build.log"
    log.write_text("configure output\n  CC      before.o\n")  # what was there before the build does not count
    progress = BuildProgress(log, lambda _: None, "tree", expected=8)
    with log.open("a") as f:
        f.write("  CC      a.o\n  CC      b.o\n  CC      par")  # a partial line is read once complete
    assert progress.poll() == 2
    with log.open("a") as f:
        f.write("tial.o\n  CC      c.o\n")
    assert "4 objects compiled (~50% of a full build's 8)" in progress.message()


def test_build_progress_notifies_while_the_build_runs(tmp_path: Path) -> None:
    import time

    log = tmp_path / "build.log"
    log.write_text("")
    said: list[str] = []
    with BuildProgress(log, said.append, "tree", interval=0.05):
        log.write_text("  CC      a.o\n")
        time.sleep(0.3)
    assert said and "1 objects compiled" in said[-1]


# ---- the distribution's source ---------------------------------------------------------------------


def make_tarball(path: Path, tmp: Path, top: str = "linux-source-6.1") -> Path:
    tree = make_tree(tmp / "stage")
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:xz") as tar:
        tar.add(tree, arcname=top)
    return path


def test_find_distro_source_debian_and_ubuntu_layouts(tmp_path: Path) -> None:
    assert find_distro_source(tmp_path) is None
    deb = make_tarball(tmp_path / "linux-source-6.1.tar.xz", tmp_path / "a")
    assert find_distro_source(tmp_path) == deb
    ubuntu = make_tarball(tmp_path / "linux-source-6.8.0" / "linux-source-6.8.0.tar.xz", tmp_path / "b")
    assert find_distro_source(tmp_path) == ubuntu  # the newest


def test_unpack_source_once_and_again_when_the_tarball_changes(tmp_path: Path) -> None:
    tarball = make_tarball(tmp_path / "src" / "linux-source-6.1.tar.xz", tmp_path)
    said: list[str] = []
    tree = unpack_source(tarball, tmp_path / "cache", notify=said.append)
    assert tree == tmp_path / "cache" / "kernel-src" / "linux-source-6.1" and (tree / "Kconfig").is_file()
    (tree / "marker").write_text("")
    assert unpack_source(tarball, tmp_path / "cache", notify=said.append) == tree
    assert (tree / "marker").exists() and sum("unpacking" in m for m in said) == 1
    make_tarball(tarball, tmp_path / "again")  # a distribution update
    unpack_source(tarball, tmp_path / "cache", notify=said.append)
    assert not (tree / "marker").exists() and sum("unpacking" in m for m in said) == 2
    assert not [p for p in (tmp_path / "cache" / "kernel-src").iterdir() if p.name.startswith(".unpack-")]


def test_resolve_debug_builds_the_unpacked_distribution_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_tarball(tmp_path / "usr-src" / "linux-source-6.1.tar.xz", tmp_path)
    monkeypatch.setattr(kernel_source, "SOURCE_DIR", tmp_path / "usr-src")
    cache = tmp_path / "cache"
    kernel = resolve_kernel_spec("debug", options=BuildOptions(vng="vng"), run=FakeKbuild(), cache_root=cache)
    assert kernel.release.endswith("-virtme-debug")
    assert kernel.build_dir.parent == cache / "kernel-builds"
    tree = make_tree(tmp_path / "own")
    own = resolve_kernel_spec(f"debug:{tree}", options=BuildOptions(vng="vng"), run=FakeKbuild(), cache_root=cache)
    assert own.build_dir != kernel.build_dir and own.release.endswith("-virtme-debug")


def test_resolve_debug_without_a_source_names_the_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kernel_source, "SOURCE_DIR", tmp_path)
    with pytest.raises(KernelNotFoundError, match=r"apt-get install linux-source-6\.1.*debug:~/src/linux"):
        resolve_kernel_spec("debug", run=FakeKbuild(), cache_root=tmp_path / "c")


def test_resolve_debug_tree_that_is_not_a_tree(tmp_path: Path) -> None:
    with pytest.raises(KernelNotFoundError, match="not a kernel source tree"):
        resolve_kernel_spec(f"debug:{tmp_path}", run=FakeKbuild(), cache_root=tmp_path / "c")


def test_built_kernel_for_spec_finds_a_current_build_without_building(tmp_path: Path) -> None:
    tree, cache, run = make_tree(tmp_path), tmp_path / "cache", FakeKbuild()
    spec = f"debug:{tree}"
    assert built_kernel_for_spec(spec, options=BuildOptions(vng="vng"), cache_root=cache) is None
    built = resolve_kernel_spec(spec, options=BuildOptions(vng="vng"), run=run, cache_root=cache)
    assert built_kernel_for_spec(spec, options=BuildOptions(vng="vng"), cache_root=cache) == built
    plain = built_kernel_for_spec(str(tree), options=BuildOptions(vng="vng"), cache_root=cache)
    assert plain is None  # the plain build of the tree was never made
    (tree / "kernel.c").write_text("int y;\n")  # the tree changed: the build is stale
    assert built_kernel_for_spec(spec, options=BuildOptions(vng="vng"), cache_root=cache) is None
    assert built_kernel_for_spec("6.1.0-9-amd64", cache_root=cache) is None


def test_the_percentage_refers_to_the_largest_build_not_the_last_incremental_one(tmp_path: Path) -> None:
    tree, cache, run = make_tree(tmp_path), tmp_path / "cache", FakeKbuild()
    build_kernel(tree, options=debug(), cache_root=cache, run=run)  # the fake build compiles 3 objects
    record = build_layout(tree.resolve(), cache, "debug").record
    data = json.loads(record.read_text())
    record.write_text(json.dumps({**data, "full_objects": 1400, "objects": 17}))  # a full build, then a small one
    (tree / "kernel.c").write_text("int z;\n")
    build_kernel(tree, options=debug(), cache_root=cache, run=run)
    assert json.loads(record.read_text())["full_objects"] == 1400
    assert previous_objects(record) == 1400


def test_docs_list_every_profile_item_with_its_value() -> None:
    docs = (Path(__file__).resolve().parent.parent / "docs" / "kernels.md").read_text()
    missing = [f"CONFIG_{k}={v}" for k, (v, _) in DEBUG_PROFILE.items() if f"`CONFIG_{k}={v}`" not in docs]
    assert not missing, f"docs/kernels.md does not list {missing}"
