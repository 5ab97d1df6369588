"""Configure a kernel tree (or its make O= directory) for the harness: the "tiny" base
(``make allnoconfig`` with :func:`~harness.build.config_items.tiny_fragment`) or virtme-ng's defconfig,
then check the resulting ``.config``. Every command goes through an injectable runner."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from harness.build.config_items import (
    REQUIRED_CONFIG,
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
from harness.errors import KernelBuildError


@dataclass(frozen=True)
class BuildLayout:
    """Where one build of a tree lives. A plain build is made in the tree (like `vng --build`); a
    profile build (``debug``) in a directory of the cache (``make O=``), so that the plain and the
    debug kernel of one tree are two cache entries that never overwrite each other's objects."""

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


def build_layout(tree: Path, cache_root: Path, profile: str = "") -> BuildLayout:
    tid = hashlib.sha256(str(tree.resolve()).encode()).hexdigest()[:12] + (f"-{profile}" if profile else "")
    base = cache_root / "kernel-builds"
    objdir = base / f"{tid}-obj" if profile else None
    return BuildLayout(tree, objdir, base / f"{tid}.json", base / f"{tid}.log", base / f"{tid}.lock",
                       base / f"{tid}-modules")  # fmt: skip


def configure(layout: BuildLayout, options: BuildOptions, vng: str, run: Runner) -> None:
    build_dir, log = layout.build_dir, layout.log
    wanted = options.config()
    items = []
    for name, value in wanted.items():
        items += ["--configitem", f"CONFIG_{name}={value}"]
    if options.base == "defconfig":
        _configure_defconfig(layout, options, vng, items, run)
    else:
        _configure_tiny(layout, options, vng, items, run)
    config = read_config(build_dir / ".config")
    missing = missing_config(config, {**REQUIRED_CONFIG, **extra_items(options)})
    if missing:
        raise KernelBuildError(
            f"the configured {build_dir}/.config lacks what the harness needs (an older tree without "
            f"these symbols, or a dependency turned them off): {', '.join(missing)}",
            log,
        )
    missing = missing_profile(config, options.profile_config())
    if missing:
        raise KernelBuildError(profile_error(options.profile, build_dir, missing), log)


def _make_o(layout: BuildLayout) -> list[str]:
    return ["make", f"O={layout.objdir}"] if layout.objdir is not None else ["make"]


def _configure_defconfig(layout: BuildLayout, options: BuildOptions, vng: str, items: list[str],
                         run: Runner) -> None:  # fmt: skip
    """virtme-ng's own: x86_64_defconfig + its guest items + ours (`vng --kconfig`; for a profile
    build in O=, the same made by hand: defconfig, then the items, then olddefconfig)."""
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
        if run([*_make_o(layout), "-s", "x86_64_defconfig"], tree, log) != 0:
            raise KernelBuildError(f"make x86_64_defconfig (O={layout.objdir}) failed in {tree}", log)
        wanted = {**config_items(listing.read_text()), **options.config()}
        with config.open("a") as f:  # later assignments win when make reads .config
            f.write("".join(config_line(k, v) for k, v in wanted.items()))
        if run([*_make_o(layout), "-s", "olddefconfig"], tree, log) != 0:
            raise KernelBuildError(f"make olddefconfig (O={layout.objdir}) failed in {tree}", log)
    if not options.btf:
        # virtme-ng turns DWARF debug info on; without BTF it only makes the build slower and larger.
        argv = ["scripts/config", "--file", str(config), "-d", "DEBUG_INFO_DWARF_TOOLCHAIN_DEFAULT",
                "-d", "DEBUG_INFO_DWARF4", "-d", "DEBUG_INFO_DWARF5", "-e", "DEBUG_INFO_NONE"]  # fmt: skip
        if run(argv, tree, log) != 0 or run([*_make_o(layout), "-s", "olddefconfig"], tree, log) != 0:
            raise KernelBuildError(f"adjusting the configuration of {tree} failed", log)


def _configure_tiny(layout: BuildLayout, options: BuildOptions, vng: str, items: list[str],
                    run: Runner) -> None:  # fmt: skip
    """allnoconfig + TINY_BASE + virtme-ng's guest items (its --dry-run list) + ours."""
    tree, log = layout.tree, layout.log
    listing = log.with_suffix(".vng-items")
    listing.write_text("")
    if run([vng, "--kconfig", "--dry-run", *items], tree, listing) != 0:
        raise KernelBuildError(f"{vng} --kconfig --dry-run failed in {tree}", listing)
    fragment = tiny_fragment(config_items(listing.read_text()), options)
    allconfig = layout.build_dir / ".knh-allconfig"  # ignored by the kernel's .gitignore (".*")
    allconfig.write_text("".join(config_line(k, v) for k, v in fragment.items()))
    argv = [*_make_o(layout), "-s", f"KCONFIG_ALLCONFIG={allconfig}", "allnoconfig"]
    if run(argv, tree, log) != 0:
        raise KernelBuildError(f"{' '.join(argv)} failed in {tree}", log)


def profile_error(profile: str, build_dir: Path, missing: list[str]) -> str:
    return (f"the {profile} profile cannot be enabled in {build_dir}/.config: the tree lacks these symbols or "
            "their dependencies turned them off (an older or newer tree, another architecture, a compiler "
            "without the sanitizer):\n    " + "\n    ".join(missing)
            + "\nfix: a tree that has them (`--kernel debug` builds the distribution's linux-source), or drop "
              "the symbols from DEBUG_PROFILE in harness/build/config_items.py")  # fmt: skip
