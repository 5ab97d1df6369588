"""Build a kernel from a source tree, once, and hand it to the harness as a Kernel.

A kernel developer names a tree (``--kernel ~/src/linux``) instead of an
installed release. The tree is configured from virtme-ng's guest options (the
list ``vng --kconfig --dry-run`` prints) and the items the harness and the
module need (:data:`REQUIRED_CONFIG`) on top of ``make allnoconfig`` (base
"tiny", the default) or of x86_64_defconfig (base "defconfig": exactly
``vng --kconfig``), then built with ``vng --build`` (``make LOCALVERSION=-virtme``). Its modules are installed
into the harness cache (never into the host's /lib/modules), for the fast
engine's initramfs and for a guest that autoloads a module.

A build is cached by the tree's state: ``git rev-parse HEAD`` plus a hash of
``git status --porcelain`` and ``git diff HEAD`` for a git tree, the newest
mtime and count of the source files for any other tree, plus a hash of the
configuration. Nothing changed: the previous kernel is returned without running
make. Anything changed: the tree is reconfigured if the configuration changed,
and make rebuilds what it must.

Every external command goes through an injectable runner, so the cache logic
and the failure paths are tested without building a kernel.

A foreign architecture's kernel (``--kernel arm64:debug``, ``arm64:TREE``) goes the same way, cross-built:
every make gets ``ARCH=arm64 CROSS_COMPILE=aarch64-linux-gnu-`` (harness.arches) and runs out of the tree
(``make O=``) into a cache entry named with the architecture, so it never shares objects or a record with
the host's build of the same tree. It is plain make, not ``vng --build --arch arm64``: the debug profile is
already built with make O= (vng builds in the tree), and one command line serves both architectures; only
``vng --kconfig --dry-run --arch arm64`` is asked, for virtme-ng's arm64 guest items. Its image is
``arch/arm64/boot/Image`` (no bzImage header to read: the release is the one kbuild wrote to
``include/config/kernel.release``, which modules_install uses too), its modules are installed into the
cache like the host's, and the Kernel carries the architecture, so the qemu engine boots it on -M virt.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from harness.arches import arch_named, is_foreign, split_arch
from harness.build.config_items import (
    BuildOptions,
    Runner,
    missing_config,
    missing_profile,
    read_config,
)
from harness.build.configure import (
    KIMG as KIMG,  # the x86 image, where it was named before
)
from harness.build.configure import (
    BuildLayout,
    build_layout,
    built_release,
    check_clean_source,
    check_cross_compiler,
    configure,
    kernel_image,
    profile_error,
)
from harness.build.kernel import Kernel, resolve_foreign_kernel, resolve_kernel
from harness.build.kernel_source import find_distro_source, is_kernel_tree, locked, parse_profile_spec, profile_tree
from harness.build.progress import BuildProgress, Notify, previous_objects
from harness.config import default_cache_root, vng_executable
from harness.errors import KernelBuildError, KernelNotFoundError, MissingDependencyError

BUILD_TOOLS_HINT = "apt-get install build-essential flex bison bc libelf-dev libssl-dev zstd"


LOCALVERSION = "-virtme"  # what `vng --build` passes to make


# Source files whose mtimes stand for a non-git tree's state.
_SOURCE_SUFFIXES = (".c", ".h", ".S", ".rs", ".lds")


_SOURCE_PREFIXES = ("Makefile", "Kconfig", "Kbuild")


def run_logged(argv: Sequence[str], cwd: Path, log: Path) -> int:
    """Run argv in cwd with stdout and stderr appended to log.

    vng runs its helpers (virtme-configkernel) by name: the directory of an absolute argv[0]
    and of the running interpreter (a venv's bin) go first on PATH.
    """
    env = dict(os.environ)
    extra = [str(Path(argv[0]).parent)] if os.path.isabs(argv[0]) else []
    extra.append(str(Path(sys.executable).parent))
    env["PATH"] = os.pathsep.join([*dict.fromkeys(extra), env.get("PATH", "")])
    with log.open("a") as out:
        out.write(f"\n$ (cd {cwd} && {' '.join(argv)})\n")
        out.flush()
        try:
            proc = subprocess.run(list(argv), cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, check=False)
        except FileNotFoundError:
            hint = "pip install virtme-ng" if "vng" in Path(argv[0]).name else BUILD_TOOLS_HINT
            raise MissingDependencyError(argv[0], hint) from None
        return proc.returncode


def _silent(_: str) -> None:
    pass


def _git(tree: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["git", "-C", str(tree), *args], capture_output=True, check=False)


def tree_state(tree: Path) -> str:
    """A string that changes whenever the tree's sources change (see the module docstring)."""
    top = _git(tree, "rev-parse", "--show-toplevel")
    if top.returncode == 0 and Path(top.stdout.decode().strip()).resolve() == tree.resolve():
        head = _git(tree, "rev-parse", "HEAD")
        if head.returncode == 0:
            h = hashlib.sha256()
            h.update(_git(tree, "status", "--porcelain=v1", "-z").stdout)
            h.update(_git(tree, "diff", "HEAD", "--binary").stdout)
            for line in _git(tree, "ls-files", "--others", "--exclude-standard", "-z").stdout.split(b"\0"):
                if line:  # untracked, not ignored: its content counts too
                    with contextlib.suppress(OSError):
                        st = (tree / line.decode()).stat()
                        h.update(line + f":{st.st_size}:{st.st_mtime_ns}".encode())
            return f"git:{head.stdout.decode().strip()}:{h.hexdigest()[:16]}"
    newest, count = 0, 0
    for root, dirs, files in os.walk(tree):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in files:
            if name.endswith(_SOURCE_SUFFIXES) or name.startswith(_SOURCE_PREFIXES):
                with contextlib.suppress(OSError):
                    newest = max(newest, os.stat(os.path.join(root, name)).st_mtime_ns)
                    count += 1
    return f"mtime:{newest}:{count}"


def cache_key(tree: Path, options: BuildOptions) -> str:
    return f"{tree_state(tree)}|config:{options.fingerprint()}"


@dataclass(frozen=True)
class BuiltKernel:
    """Result of build_kernel: the Kernel plus where its modules were installed."""

    kernel: Kernel
    modules_root: Path  # INSTALL_MOD_PATH: <modules_root>/lib/modules/<release>/modules.dep
    cached: bool
    seconds: float
    log: Path
    key: str = ""
    steps: tuple[str, ...] = field(default=())

    @property
    def modules_dir(self) -> Path:
        return self.modules_root / "lib" / "modules" / self.kernel.release


def _layout(tree: Path, cache_root: Path, options: BuildOptions) -> BuildLayout:
    """The build layout of `options`: the profile's and the foreign architecture's entry."""
    return build_layout(tree, cache_root, options.profile, options.target.name if options.foreign else "")


def _state_paths(tree: Path, cache_root: Path) -> tuple[Path, Path, Path, Path]:
    layout = build_layout(tree, cache_root)
    return layout.record, layout.log, layout.lock, layout.modules_root


@dataclass(frozen=True)
class _Build:
    """One build of a tree that the cache did not spare: what each of its steps needs."""

    tree: Path
    options: BuildOptions
    layout: BuildLayout
    run: Runner
    notify: Notify
    vng: str
    what: str  # what the messages call it: "kernel tree /src/linux (debug profile)"

    def error(self, message: str) -> KernelBuildError:
        return KernelBuildError(message, self.layout.log)


def build_kernel(
    tree: Path,
    *,
    options: BuildOptions | None = None,
    cache_root: Path | None = None,
    run: Runner = run_logged,
    notify: Notify = _silent,
) -> BuiltKernel:
    """Configure (if needed) and build `tree`; cached by tree state + config (see module docstring)."""
    tree = tree.resolve()
    if not is_kernel_tree(tree):  # not a build failure of this commit: bisect-run aborts on it
        raise KernelNotFoundError(f"{tree} is not a kernel source tree (no Makefile, Kconfig and arch/)")
    options = options or BuildOptions()
    options.profile_config()  # an unknown profile fails before anything runs
    kernel_image(options)  # so does an architecture the harness builds no kernel for
    layout = _layout(tree, cache_root or default_cache_root(), options)
    kind = [f"{options.profile} profile"] if options.profile else []
    kind += [f"{options.target.name}, {options.target.cross_compile}gcc"] if options.foreign else []
    what = f"kernel tree {tree}" + (f" ({'; '.join(kind)})" if kind else "")
    with locked(layout.lock):
        key = cache_key(tree, options)
        cached = _cached(layout.record, key, layout.build_dir, options)
        if cached is not None:
            notify(f"{what}: unchanged, using the {cached.release} built before")
            return BuiltKernel(cached, layout.modules_root, True, 0.0, layout.log, key)
        check_cross_compiler(options)
        start = time.monotonic()
        layout.log.write_text(f"kernel build of {tree}, key {key}\n")
        job = _Build(tree, options, layout, run, notify, options.vng or vng_executable(), what)
        steps = ["configure"] if _configure_if_changed(job) else []
        progress = _make(job)
        _check_config(job)
        release = _release(job)
        _install_modules(job, release)
        return _record(job, key, release, start, progress, (*steps, "build", "modules_install"))


def _configure_if_changed(job: _Build) -> bool:
    """Configure the tree when its configuration is not the one asked for; whether it did."""
    build_dir, objdir, options = job.layout.build_dir, job.layout.objdir, job.options
    if objdir is not None:
        check_clean_source(job.tree, objdir, options)
        objdir.mkdir(parents=True, exist_ok=True)
    marker = build_dir / ".knh-config"  # ignored by the kernel's .gitignore (".*")
    fingerprint = options.fingerprint()
    current = marker.read_text().strip() if marker.exists() else ""
    if current == fingerprint and (build_dir / ".config").exists():
        return False
    extra = f" + the {options.profile} profile" if options.profile else ""
    job.notify(f"{job.what}: configuring ({options.base} base + virtme-ng and harness items{extra}) ...")
    configure(job.layout, options, job.vng, job.run)
    marker.write_text(fingerprint + "\n")
    return True


def _make(job: _Build) -> BuildProgress:
    """Build the kernel (`vng --build`, or make O= for a profile or a cross build), counting the objects
    compiled."""
    layout, options = job.layout, job.options
    jobs = options.jobs or os.cpu_count() or 1
    if layout.objdir is None:
        argv = [job.vng, "--build", "--verbose"]
        if options.jobs:
            argv += ["--jobs", str(options.jobs)]
    else:
        argv = ["make", f"O={layout.objdir}", *options.make_vars(), f"-j{jobs}",
                f"LOCALVERSION={localversion(options)}"]  # fmt: skip
    job.notify(f"{job.what}: building with {jobs} job(s) ({' '.join(argv[:2])} ...; log {layout.log}) ...")
    with BuildProgress(layout.log, job.notify, job.what, previous_objects(layout.record)) as progress:
        status = job.run(argv, job.tree, layout.log)
    if status != 0:
        raise job.error(f"kernel build failed in {job.tree} ({' '.join(argv)})")
    return progress


def _check_config(job: _Build) -> None:
    """The built configuration has what the harness and the profile need: another commit's Kconfig may
    have dropped or renamed a symbol since the tree was configured."""
    build_dir = job.layout.build_dir
    final = read_config(build_dir / ".config")
    missing = missing_config(final, job.options.required())
    if missing:
        raise job.error(f"{build_dir}/.config after the build lacks what the harness needs: {', '.join(missing)}")
    missing = missing_profile(final, job.options.profile_config())
    if missing:
        raise job.error(profile_error(job.options.profile, build_dir, missing))


def _release(job: _Build) -> str:
    """The release of the kernel image the build made."""
    image = job.layout.build_dir / kernel_image(job.options)
    release = built_release(image, job.layout.build_dir, job.options)
    if release is None:
        raise job.error(f"the build of {job.tree} produced no readable {image}")
    return release


def _install_modules(job: _Build, release: str) -> None:
    """make modules_install into the harness cache (a fresh directory), never into the host's /lib/modules."""
    layout = job.layout
    job.notify(f"{job.what}: installing modules into {layout.modules_root} ...")
    modules_root = layout.modules_root
    if modules_root.exists():
        _rmtree(modules_root)
    modules_root.mkdir(parents=True)
    argv = ["make", "-s", f"LOCALVERSION={localversion(job.options)}", "modules_install",
            f"INSTALL_MOD_PATH={modules_root}", "INSTALL_MOD_STRIP=1", "DEPMOD=/sbin/depmod"]  # fmt: skip
    argv[1:1] = job.options.make_vars()  # the cross strip (INSTALL_MOD_STRIP) of a foreign build
    if layout.objdir is not None:
        argv.insert(1, f"O={layout.objdir}")
    if job.run(argv, job.tree, layout.log) != 0:
        raise job.error(f"make modules_install failed in {job.tree}")
    if not (modules_root / "lib" / "modules" / release / "modules.dep").exists():
        raise job.error(f"modules_install of {job.tree} left no lib/modules/{release}/modules.dep")


def _record(job: _Build, key: str, release: str, start: float, progress: BuildProgress,
            steps: tuple[str, ...]) -> BuiltKernel:  # fmt: skip
    """Write the cache record of a finished build and say so."""
    layout = job.layout
    image = layout.build_dir / kernel_image(job.options)
    seconds = time.monotonic() - start
    # Non-git trees: the state after the build, so files the build generated do not count as changes.
    key = key if key.startswith("git:") else cache_key(job.tree, job.options)
    record = {"key": key, "release": release, "image": str(image), "seconds": round(seconds, 1),
              "objects": progress.objects, "profile": job.options.profile,
              "full_objects": max(progress.objects, progress.expected)}  # fmt: skip
    if job.options.foreign:  # the host's records keep their fields
        record["arch"] = job.options.target.name
    layout.record.write_text(json.dumps(record, indent=1) + "\n")
    job.notify(f"{job.what}: built {release} in {seconds:.0f} s ({progress.objects} objects compiled)")
    kernel = Kernel(release, image, layout.build_dir, job.options.target.name)
    return BuiltKernel(kernel, layout.modules_root, False, seconds, layout.log, key, steps)


def localversion(options: BuildOptions) -> str:
    """LOCALVERSION of a build: `-virtme` (what vng passes), `-virtme-debug` for the debug profile, and the
    foreign architecture last as in the distribution's flavours (`-virtme-debug-arm64`), so the kernels of
    one tree have different releases (test ids, result paths, the module cache)."""
    return (LOCALVERSION + (f"-{options.profile}" if options.profile else "")
            + (f"-{options.target.name}" if options.foreign else ""))  # fmt: skip


def _cached(record_path: Path, key: str, tree: Path, options: BuildOptions) -> Kernel | None:
    try:
        record = json.loads(record_path.read_text())
    except (OSError, ValueError):
        return None
    image = Path(record.get("image", ""))
    if record.get("key") != key or built_release(image, tree, options) != record.get("release"):
        return None
    return Kernel(record["release"], image, tree, options.target.name)


def _rmtree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def modules_dir_for(kernel: Kernel, cache_root: Path | None = None) -> Path | None:
    """Where the modules of a kernel built here were installed (for the fast engine's initramfs), the
    store's modules of a foreign kernel (harness.build.foreign), or None for any other kernel."""
    build_dir = kernel.build_dir
    if build_dir.name.endswith("-obj") and build_dir.parent.name == "kernel-builds":  # a profile or cross build (O=)
        modules_root = build_dir.with_name(build_dir.name.removesuffix("-obj") + "-modules")
    elif kernel.foreign:  # a foreign kernel of the store: <store>/lib/modules/<release>/build
        return build_dir.parent if (build_dir.parent / "modules.dep").exists() else None
    else:
        _, _, _, modules_root = _state_paths(build_dir, cache_root or default_cache_root())
    moddir = modules_root / "lib" / "modules" / kernel.release
    return moddir if (moddir / "modules.dep").exists() else None


def built_kernel_for_spec(spec: str, *, options: BuildOptions | None = None,
                          cache_root: Path | None = None) -> Kernel | None:  # fmt: skip
    """The kernel a tree or profile spec (`~/src/linux`, `debug`, `debug:TREE`, with a foreign architecture's
    prefix too: `arm64:debug`) resolves to when it is already built and current, without building anything;
    None otherwise (also for other specs)."""
    cache_root = cache_root or default_cache_root()
    base = options or BuildOptions.from_env()
    arch, spec = split_arch(spec)
    if arch is not None:
        base = replace(base, arch=arch if is_foreign(arch) else "")
    profile = parse_profile_spec(spec)
    if profile is not None:
        name, tree_spec = profile
        if tree_spec:
            tree = Path(tree_spec).expanduser()
        else:
            tarball = find_distro_source()
            if tarball is None:
                return None
            tree = cache_root / "kernel-src" / tarball.name.split(".tar.")[0]
        base = replace(base, profile=name)
    else:
        tree = Path(spec)
    if not is_kernel_tree(tree):
        return None
    layout = _layout(tree.resolve(), cache_root, base)
    return _cached(layout.record, cache_key(tree.resolve(), base), layout.build_dir, base)


def resolve_kernel_spec(
    spec: str | None,
    *,
    options: BuildOptions | None = None,
    notify: Notify = _silent,
    run: Runner = run_logged,
    cache_root: Path | None = None,
) -> Kernel:
    """resolve_kernel plus source trees and profiles: a directory with Makefile, Kconfig and arch/ is
    built (or taken from the cache) and its Kernel returned; `debug` builds the distribution's source
    with the debug profile, `debug:TREE` that tree; `ARCH:RELEASE` (harness.arches) a kernel of a foreign
    architecture from its store (harness.build.foreign), `ARCH:debug`, `ARCH:debug:TREE` and `ARCH:TREE`
    the same builds cross-compiled for it; anything else goes to resolve_kernel."""
    arch, rest = split_arch(spec) if spec else (None, "")
    if arch is not None:
        if is_foreign(arch_named(arch)):
            if parse_profile_spec(rest) is None and not (rest and Path(rest).is_dir()):
                return resolve_foreign_kernel(arch_named(arch), rest or None, cache_root)
            options = replace(options or BuildOptions.from_env(), arch=arch)
        spec = rest or None
    profile = parse_profile_spec(spec) if spec else None
    if profile is not None:
        name, tree = profile
        cache_root = cache_root or default_cache_root()
        path = profile_tree(tree, cache_root=cache_root, notify=notify)
        options = replace(options or BuildOptions.from_env(), profile=name)
        return build_kernel(path, options=options, notify=notify, run=run, cache_root=cache_root).kernel
    if spec and Path(spec).is_dir():
        path = Path(spec)
        if not is_kernel_tree(path):
            raise KernelNotFoundError(
                f"{spec} is a directory but not a kernel source tree (it needs Makefile, Kconfig and arch/); "
                "name a release, a vmlinuz path or a tree"
            )
        options = options or BuildOptions.from_env()
        return build_kernel(path, options=options, notify=notify, run=run, cache_root=cache_root).kernel
    return resolve_kernel(spec)
