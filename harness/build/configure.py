"""Configure a kernel tree (or its make O= directory) for the harness: the "tiny" base
(``make allnoconfig`` with :func:`~harness.build.config_items.tiny_fragment`) or virtme-ng's defconfig,
then check the resulting ``.config``. Every command goes through an injectable runner."""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from harness.build.config_items import (
    BuildOptions,
    Runner,
    config_items,
    config_line,
    extra_items,
    missing_config,
    missing_profile,
    read_config,
    tiny_fragment,
)
from harness.build.kernel import image_release
from harness.errors import KernelBuildError, MissingDependencyError

KIMG = Path("arch/x86/boot/bzImage")
# The boot image of each architecture (make's ARCH=): what the engines boot and what the record names.
KIMGS = {"x86": KIMG, "arm64": Path("arch/arm64/boot/Image")}


def kernel_image(options: BuildOptions) -> Path:
    """The image a build makes, relative to its build directory."""
    kbuild = options.target.kbuild
    if kbuild not in KIMGS:
        raise KernelBuildError(f"the harness builds no kernel for {options.target.name} (make ARCH={kbuild})")
    return KIMGS[kbuild]


@dataclass(frozen=True)
class BuildLayout:
    """Where one build of a tree lives. A plain build is made in the tree (like `vng --build`); a
    profile build (``debug``) and a cross build (``arm64``) in a directory of the cache (``make O=``), so
    that the plain, the debug and each architecture's kernel of one tree are cache entries that never
    overwrite each other's objects."""

    tree: Path
    objdir: Path | None  # make O= directory; None: in the tree
    record: Path
    log: Path
    lock: Path
    modules_root: Path

    @property
    def build_dir(self) -> Path:
        """Where .config, the objects, bzImage and Module.symvers are: KDIR for the module build."""
        return self.objdir or self.tree


def build_layout(tree: Path, cache_root: Path, profile: str = "", arch: str = "") -> BuildLayout:
    """`arch`: "" for the host's architecture, else the foreign one's name (the entry `<id>-arm64-debug`; the
    host's entries keep their names, so a cross build never touches them)."""
    tid = (hashlib.sha256(str(tree.resolve()).encode()).hexdigest()[:12] + (f"-{arch}" if arch else "")
           + (f"-{profile}" if profile else ""))  # fmt: skip
    base = cache_root / "kernel-builds"
    objdir = base / f"{tid}-obj" if profile or arch else None
    return BuildLayout(tree, objdir, base / f"{tid}.json", base / f"{tid}.log", base / f"{tid}.lock",
                       base / f"{tid}-modules")  # fmt: skip


def configure(layout: BuildLayout, options: BuildOptions, vng: str, run: Runner) -> None:
    build_dir, log = layout.build_dir, layout.log
    wanted = options.config()
    items = ["--arch", options.target.kbuild] if options.foreign else []  # virtme-ng's items of that architecture
    for name, value in wanted.items():
        items += ["--configitem", f"CONFIG_{name}={value}"]
    if options.base == "defconfig":
        _configure_defconfig(layout, options, vng, items, run)
    else:
        _configure_tiny(layout, options, vng, items, run)
    config = read_config(build_dir / ".config")
    missing = missing_config(config, {**options.required(), **extra_items(options)})
    if missing:
        raise KernelBuildError(
            f"the configured {build_dir}/.config lacks what the harness needs (an older tree without "
            f"these symbols, or a dependency turned them off): {', '.join(missing)}",
            log,
        )
    missing = missing_profile(config, options.profile_config())
    if missing:
        raise KernelBuildError(profile_error(options.profile, build_dir, missing), log)


def _make_o(layout: BuildLayout, options: BuildOptions) -> list[str]:
    """make [O=DIR] [ARCH= CROSS_COMPILE=]: every make of a build, configure and build alike."""
    return ["make", *([f"O={layout.objdir}"] if layout.objdir is not None else []), *options.make_vars()]


def _configure_defconfig(layout: BuildLayout, options: BuildOptions, vng: str, items: list[str],
                         run: Runner) -> None:  # fmt: skip
    """virtme-ng's own: x86_64_defconfig (another architecture's defconfig) + its guest items + ours
    (`vng --kconfig`; for a build in O=, the same made by hand: defconfig, then the items, then olddefconfig)."""
    tree, log = layout.tree, layout.log
    config = layout.build_dir / ".config"
    if layout.objdir is None:
        if run([vng, "--kconfig", "--verbose", *items], tree, log) != 0:
            raise KernelBuildError(f"configuring {tree} failed ({vng} --kconfig)", log)
    else:
        listing = log.with_suffix(".vng-items")
        listing.write_text("")
        if run([vng, "--kconfig", "--dry-run", *items], tree, listing) != 0:
            raise KernelBuildError(f"{vng} --kconfig --dry-run failed in {tree}", listing)
        defconfig = "x86_64_defconfig" if options.target.kbuild == "x86" else "defconfig"
        if run([*_make_o(layout, options), "-s", defconfig], tree, log) != 0:
            raise KernelBuildError(f"make {defconfig} (O={layout.objdir}) failed in {tree}", log)
        wanted = {**config_items(listing.read_text()), **options.config()}
        with config.open("a") as f:  # later assignments win when make reads .config
            f.write("".join(config_line(k, v) for k, v in wanted.items()))
        if run([*_make_o(layout, options), "-s", "olddefconfig"], tree, log) != 0:
            raise KernelBuildError(f"make olddefconfig (O={layout.objdir}) failed in {tree}", log)
    if not options.btf:
        # virtme-ng turns DWARF debug info on; without BTF it only makes the build slower and larger.
        argv = ["scripts/config", "--file", str(config), "-d", "DEBUG_INFO_DWARF_TOOLCHAIN_DEFAULT",
                "-d", "DEBUG_INFO_DWARF4", "-d", "DEBUG_INFO_DWARF5", "-e", "DEBUG_INFO_NONE"]  # fmt: skip
        if run(argv, tree, log) != 0 or run([*_make_o(layout, options), "-s", "olddefconfig"], tree, log) != 0:
            raise KernelBuildError(f"adjusting the configuration of {tree} failed", log)


def _configure_tiny(layout: BuildLayout, options: BuildOptions, vng: str, items: list[str],
                    run: Runner) -> None:  # fmt: skip
    """allnoconfig + TINY_BASE (ARM64_BASE) + virtme-ng's guest items (its --dry-run list) + ours."""
    tree, log = layout.tree, layout.log
    listing = log.with_suffix(".vng-items")
    listing.write_text("")
    if run([vng, "--kconfig", "--dry-run", *items], tree, listing) != 0:
        raise KernelBuildError(f"{vng} --kconfig --dry-run failed in {tree}", listing)
    fragment = tiny_fragment(config_items(listing.read_text()), options)
    allconfig = layout.build_dir / ".knh-allconfig"  # ignored by the kernel's .gitignore (".*")
    allconfig.write_text("".join(config_line(k, v) for k, v in fragment.items()))
    argv = [*_make_o(layout, options), "-s", f"KCONFIG_ALLCONFIG={allconfig}", "allnoconfig"]
    if run(argv, tree, log) != 0:
        raise KernelBuildError(f"{' '.join(argv)} failed in {tree}", log)


def profile_error(profile: str, build_dir: Path, missing: list[str]) -> str:
    return (f"the {profile} profile cannot be enabled in {build_dir}/.config: the tree lacks these symbols or "
            "their dependencies turned them off (an older or newer tree, another architecture, a compiler "
            "without the sanitizer):\n    " + "\n    ".join(missing)
            + "\nfix: a tree that has them (`--kernel debug` builds the distribution's linux-source), or drop "
              "the symbols from DEBUG_PROFILE in harness/build/config_items.py")  # fmt: skip


def built_release(image: Path, build_dir: Path, options: BuildOptions) -> str | None:
    """The release of a built image: read from the bzImage header on x86; on other architectures (an arm64
    Image has no such header) the one kbuild wrote to include/config/kernel.release for this build (what
    `make kernelrelease` prints and modules_install uses), when the image is there. None otherwise."""
    if not image.is_file():
        return None
    if options.target.kbuild == "x86":
        return image_release(image)
    try:
        return (build_dir / "include" / "config" / "kernel.release").read_text().strip() or None
    except OSError:
        return None


def check_cross_compiler(options: BuildOptions, which: Callable[[str], str | None] | None = None) -> None:
    """A cross build needs the architecture's cross compiler (harness.arches: gcc-aarch64-linux-gnu)."""
    if not options.foreign:
        return
    arch = options.target
    if (which or shutil.which)(f"{arch.cross_compile}gcc") is None:
        raise MissingDependencyError(f"{arch.cross_compile}gcc (the {arch.name} cross compiler)",
                                     f"apt-get install {' '.join(arch.cross_packages)}")  # fmt: skip


def check_clean_source(tree: Path, objdir: Path, options: BuildOptions) -> None:
    """make refuses an O= build of a tree that was configured in place (its own check, made clear here)."""
    generated = f"arch/{options.target.kbuild}/include/generated"
    leftovers = [p for p in (".config", "include/config", generated) if (tree / p).exists()]
    if not leftovers:
        return
    build = f"{options.profile} build" if options.profile else f"{options.target.name} build"
    checkout = f"../linux-{options.profile or options.target.name}"
    spec = ":".join([*([options.target.name] if options.foreign else []), *([options.profile] if options.profile
                                                                             else []), checkout])  # fmt: skip
    raise KernelBuildError(
        f"{tree} has an in-tree build ({', '.join(leftovers)}), and the {build} goes to {objdir} "
        "(make O=), which make refuses for a tree that is not clean. Fix: `make mrproper` in the tree "
        f"(its plain build is then redone on next use), or give the {build} a clean checkout "
        f"(`git worktree add {checkout}`) and name that: --kernel {spec}"
    )
