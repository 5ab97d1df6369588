"""Build an out-of-tree module against a kernel's build directory, with a cache.

Sources are copied to a private directory first (Kbuild writes its objects
next to the sources, and two kernels must not share them). The result is kept
under a key made of the source contents, the kernel build (its release, its
image's version string with build number and date, hashes of its ``.config``
and ``Module.symvers``), the make targets and the coverage flag, so an
unchanged module is never rebuilt and an edited one, or one for a rebuilt
kernel of the same release, always is.

The copy is built where it stays, under a lock (a directory without the done
mark is an interrupted build, redone): the paths compiled into the module (the
``.gcda`` path of a coverage build, the sources named in its ``.gcno`` notes
and debug info) are the cache entry's own.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from harness.arches import arch_named
from harness.build.config_items import read_kernel_config
from harness.build.dkms import DKMS_CONF, DkmsConf, exclusion, read_dkms_conf
from harness.build.kernel import Kernel, image_version
from harness.build.kernel_source import locked
from harness.build.module_deps import (
    closure,
    kernel_dependencies,
    load_order,
    missing_symbols,
    module_name,
    parse_depends,
    read_symvers,
    undefined_symbols,
    under_test,
)
from harness.build.plan import (
    MakeCommand,
    choose_build,
    dkms_command,
    dkms_variables,
    kbuild_command,
    makefile_command,
)
from harness.config import default_cache_root, expand_make_vars
from harness.errors import BuildError, BuildExcluded, ConfigError, MissingDependencyError
from harness.formats.elf import modinfo_field

IGNORED_SUFFIXES = (".o", ".ko", ".mod", ".mod.c", ".cmd", ".symvers", ".order", ".swp")
BUILD_LOG = "build.log"
DONE_MARK = ".knh-built"
MODULES_LIST = ".knh-modules"  # the .ko files to load, relative to the build, in the build's order


@dataclass(frozen=True)
class BuiltModule:
    """Artifacts of one module build for one kernel."""

    kernel: Kernel
    directory: Path  # the build copy, visible to the guest through the shared root
    modules: tuple[Path, ...]  # every .ko produced
    warnings: tuple[str, ...]  # compiler warning lines from the build log
    cached: bool
    coverage: bool = False  # built with GCOV_PROFILE=y (harness.guest.coverage)
    depends: tuple[tuple[str, tuple[str, ...]], ...] = ()  # (module, its depends=) in load order
    choice: str = ""  # the build line: how the module was built (harness.build.plan)

    @property
    def build_kind(self) -> str:
        """dkms, makefile or kbuild (harness.config.BUILD_CHOICES)."""
        return self.choice.removeprefix("build: ").split(" ", 1)[0]

    def kernel_dependencies_of(self, kos: Sequence[Path]) -> tuple[str, ...]:
        """Modules of the kernel that `kos` (built here) need: to modprobe before loading them."""
        depends = dict(self.depends)
        wanted = [module_name(ko.name) for ko in kos]
        return tuple(d for d in kernel_dependencies(depends) if any(d in depends[n] for n in wanted))

    def under_test(self) -> Path:
        """The .ko a test loads last: the only one, or the last one no other built module depends on."""
        if len(self.modules) == 1:
            return self.modules[0]
        name = under_test(dict(self.depends), [n for n, _ in self.depends])
        return self.module(name)

    def load_plan(self, name: str | None = None) -> list[Path]:
        """The .ko files to load, in order: `name` after the built modules it needs, or every built one
        in dependency order, the one under test last."""
        if name is None:
            last = self.under_test()
            return [ko for ko in self.modules if ko != last] + [last]
        last = self.module(name)
        needed = closure(dict(self.depends), module_name(last.name))
        return [ko for ko in self.modules if ko != last and module_name(ko.name) in needed] + [last]

    def module(self, name: str | None = None) -> Path:
        """The .ko called `name` (without .ko), or the only one built."""
        if name is None:
            if len(self.modules) != 1:
                raise BuildError(f"build produced {len(self.modules)} modules; name one", "")
            return self.modules[0]
        for ko in self.modules:
            if module_name(ko.name) == module_name(name):
                return ko
        raise BuildError(f"no {name}.ko among {[m.name for m in self.modules]}", "")


IGNORED_DIRS = ("__pycache__", "results")  # a driver's own test suite beside it: bytecode, the harness's results


def source_files(src: Path) -> list[Path]:
    files = []
    for path in sorted(src.rglob("*")):
        rel = path.relative_to(src)
        if (
            path.is_file()
            and not path.name.endswith(IGNORED_SUFFIXES)
            and not any(part.startswith(".") or part in IGNORED_DIRS for part in rel.parts[:-1])
            and not rel.name.startswith(".")
        ):
            files.append(path)
    return files


def _file_digest(path: Path) -> str:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return "-"


def kernel_identity(kernel: Kernel) -> str:
    """What tells two builds of one release apart, cheaply: the image's version string (build number
    and date of a kernel built here, the package version of a distribution's), and hashes of the build
    directory's .config and Module.symvers (exported symbols and their CRCs)."""
    parts = (kernel.release, str(kernel.build_dir), image_version(kernel.image) or "-",
             _file_digest(kernel.build_dir / ".config"), _file_digest(kernel.build_dir / "Module.symvers"))  # fmt: skip
    return "\0".join(parts)


def source_key(src: Path, kernel: Kernel, targets: Sequence[str], *, coverage: bool = False) -> str:
    """Hash of every source file (path + bytes), the kernel build, the make targets and the coverage flag."""
    h = hashlib.sha256()
    for path in source_files(src):
        h.update(str(path.relative_to(src)).encode() + b"\0")
        h.update(path.read_bytes() + b"\0")
    h.update(f"{kernel_identity(kernel)}\0{' '.join(targets)}\0gcov={int(coverage)}".encode())
    return h.hexdigest()[:16]


def warning_lines(log: str) -> tuple[str, ...]:
    return tuple(line for line in log.splitlines() if "warning:" in line.lower())


GCOV_VARIABLES = ("GCOV_PROFILE=y",)  # kbuild: compile every object of the module for gcov


DEBUG_INFO_VARIABLES = ("KCFLAGS=-g",)  # kbuild adds KCFLAGS to every compiler command line


def debug_info_variables(config: Mapping[str, str], variables: Sequence[str]) -> tuple[str, ...]:
    """Make variables that give the module debug info on a kernel configured without any (a debug kernel
    built here saves its build time that way): a splat's frames in the module then decode to source
    lines (harness.build.decode). Nothing when the kernel has CONFIG_DEBUG_INFO, its config is unknown, or
    the user sets KCFLAGS."""
    if not config or config.get("DEBUG_INFO") == "y" or any(v.startswith("KCFLAGS=") for v in variables):
        return ()
    return DEBUG_INFO_VARIABLES


def guest_machine(kernel: Kernel) -> str:
    """DKMS's `arch`: the guest's architecture (uname -m), the host's unless the kernel is foreign."""
    return arch_named(kernel.arch).machine


def cross_variables(kernel: Kernel, which: Callable[[str], str | None] = shutil.which) -> tuple[str, ...]:
    """make's ARCH= and CROSS_COMPILE= for a foreign kernel (harness.arches), nothing for the host's; the
    cross compiler must be there (the headers of Debian's kernels call <prefix>gcc-<version>)."""
    if not kernel.foreign:
        return ()
    arch = arch_named(kernel.arch)
    if which(f"{arch.cross_compile}gcc") is None:
        raise MissingDependencyError(f"{arch.cross_compile}gcc (the {arch.name} cross compiler)",
                                     f"apt-get install {' '.join(arch.cross_packages)}")  # fmt: skip
    return (f"ARCH={arch.kbuild}", f"CROSS_COMPILE={arch.cross_compile}")


def ko_depends(ko: Path) -> tuple[str, ...]:
    """The modules `ko` needs loaded first (its depends= field, read from its .modinfo section)."""
    try:
        depends = modinfo_field(ko.read_bytes(), "depends")
    except OSError as e:
        raise BuildError(f"{ko} is unreadable: {e.strerror}", "") from None
    if depends is None:
        raise BuildError(f"{ko} has no depends= in a .modinfo section: not a kernel module built by kbuild", "")
    return parse_depends(depends)


def find_kos(directory: Path) -> list[Path]:
    """Every .ko under `directory` (drivers that build into src/ or drivers/ too), hidden directories left out."""
    return sorted(ko for ko in directory.rglob("*.ko")
                  if not any(part.startswith(".") for part in ko.relative_to(directory).parts))  # fmt: skip


def build_module(src: Path, kernel: Kernel, *, cache_root: Path | None = None, targets: Sequence[str] = (),
                 coverage: bool = False, choice: str = "auto",
                 make_vars: Sequence[str] = ()) -> BuiltModule:  # fmt: skip
    """Build `src` for `kernel` (or reuse an identical earlier build); `coverage`: with GCOV_PROFILE=y;
    `choice`: dkms, makefile, kbuild or auto (from the files present); `make_vars`: NAME=VALUE items
    for make, {kdir} and {release} expanded. Raises ConfigError (no such build), BuildExcluded (a
    dkms.conf excludes the kernel) or BuildError."""
    src = src.resolve()
    if not src.is_dir():
        raise ConfigError(f"module source directory {src} does not exist; fix: point --module-dir (or "
                          "knh_module_source) at the driver's directory")  # fmt: skip
    choice = choose_build(src, choice)
    config = read_kernel_config(kernel)
    variables = cross_variables(kernel) + expand_make_vars(make_vars, kernel.build_dir, kernel.release)
    variables += GCOV_VARIABLES if coverage else ()
    variables += debug_info_variables(config, variables)
    cache_root = cache_root or default_cache_root()
    key = source_key(src, kernel, (*targets, f"build={choice}", *variables), coverage=coverage)
    final = cache_root / "modules" / kernel.release / f"{src.name}-{key}"
    dkms_root = final.with_name(f".{final.name}.dkms")  # DKMS's dkms_tree and source_tree for this build
    conf = None
    machine = guest_machine(kernel)
    dkms_vars = dkms_variables(kernel.build_dir, kernel.release, machine, dkms_root / "tree", dkms_root / "src")
    if choice == "dkms" and targets:
        raise ConfigError(f"make targets {' '.join(targets)} do not apply to a dkms.conf build (its MAKE[i] says "
                          "what to build); fix: drop --make-targets, or set --module-build makefile")  # fmt: skip
    if choice == "dkms":
        conf = read_dkms_conf(src / DKMS_CONF, dkms_vars)
        reason = exclusion(conf, kernel.release, machine, config)
        if reason:
            raise BuildExcluded(reason)
    if (final / DONE_MARK).exists():
        return _result(kernel, final, cached=True, coverage=coverage)
    with locked(final.with_name(f".{final.name}.lock")):  # another process building the same waits
        if (final / DONE_MARK).exists():
            return _result(kernel, final, cached=True, coverage=coverage)
        shutil.rmtree(final, ignore_errors=True)  # an interrupted build
        try:
            shutil.copytree(src, final, ignore=shutil.ignore_patterns(*(f"*{s}" for s in IGNORED_SUFFIXES),
                                                                      *IGNORED_DIRS))  # fmt: skip
            if conf is not None:
                named = {**dkms_vars, "module": conf.package, "module_version": conf.version}  # DKMS's -m, -v
                command = _dkms_command(final, kernel, conf, dkms_root, named, variables)
            elif choice == "makefile":
                command = makefile_command(final, kernel.build_dir, kernel.release, jobs=os.cpu_count(),
                                           make_vars=variables, targets=targets)  # fmt: skip
            else:
                command = kbuild_command(final, kernel.build_dir, jobs=os.cpu_count(), make_vars=variables,
                                         targets=targets)  # fmt: skip
            _run_build(final, kernel, choice, command)
            kos = _built_kos(final, conf)
            (final / MODULES_LIST).write_text("".join(f"{ko.relative_to(final)}\n" for ko in kos))
            (final / DONE_MARK).write_text(key + "\n")
        except BaseException:
            shutil.rmtree(final, ignore_errors=True)
            raise
    return _result(kernel, final, cached=False, coverage=coverage)


def describe_choice(choice: str, command: MakeCommand) -> str:
    """The one line that says how the module is built (progress line and head of the build log)."""
    why = {"dkms": "dkms.conf", "makefile": "the module's Makefile", "kbuild": "Kbuild only: the kernel's make"}
    return f"build: {choice} ({why[choice]}): {command.shown()}"


def _dkms_command(copy: Path, kernel: Kernel, conf: DkmsConf, dkms_root: Path, dkms_vars: Mapping[str, str],
                  variables: Sequence[str]) -> MakeCommand:  # fmt: skip
    """MAKE[i] of the dkms.conf, with DKMS's build directory ($dkms_tree/<name>/<version>/build) and
    source directory ($source_tree/<name>-<version>) pointing at the copy; `dkms_vars` with DKMS's
    -m and -v (module, module_version)."""
    shutil.rmtree(dkms_root, ignore_errors=True)
    build = dkms_root / "tree" / conf.package / conf.version / "build"
    build.parent.mkdir(parents=True)
    build.symlink_to(copy)
    (dkms_root / "src").mkdir()
    (dkms_root / "src" / f"{conf.package}-{conf.version}").symlink_to(copy)
    return dkms_command(copy, conf.make_command(kernel.release), kernel.build_dir, dkms_vars, jobs=os.cpu_count(),
                        make_vars=variables)


def _run_build(copy: Path, kernel: Kernel, choice: str, command: MakeCommand) -> None:
    proc = subprocess.run(command.argv, cwd=command.cwd, env={**os.environ, **command.env}, capture_output=True,
                          text=True, check=False)  # fmt: skip
    env = " ".join(f"{k}={v}" for k, v in sorted(command.env.items()))
    log = (f"# {describe_choice(choice, command)}\n# argv: {command.argv}\n# environment added: {env}\n"
           f"{proc.stdout}{proc.stderr}")  # fmt: skip
    (copy / BUILD_LOG).write_text(log)
    if proc.returncode != 0:
        raise BuildError(f"module build failed for {kernel.release} (exit {proc.returncode}): "
                         f"{describe_choice(choice, command)}{_undefined_note(log, kernel)}", log)  # fmt: skip


def _undefined_note(log: str, kernel: Kernel) -> str:
    """For a build that failed on symbols no module of the kernel exports: which, and what provides them."""
    undefined = undefined_symbols(log)
    if not undefined:
        return ""
    symvers = read_symvers(kernel.build_dir)
    config = read_kernel_config(kernel)
    symbols = list(dict.fromkeys(symbol for symbol, _ in undefined))
    lines = [m.describe(kernel.release, config) for m in missing_symbols(symbols, symvers, kernel.build_dir)]
    return "\nthe module uses symbols this kernel does not export:\n  " + "\n  ".join(lines)


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def _built_kos(copy: Path, conf: DkmsConf | None) -> list[Path]:
    """The .ko files to load: a dkms.conf's BUILT_MODULE_NAME/LOCATION in order, else every .ko found."""
    if conf is not None and conf.modules:
        kos = [copy / location / f"{name}.ko" for name, location in conf.modules]
        missing = [str(ko.relative_to(copy)) for ko in kos if not ko.exists()]
        if missing:
            log = _read(copy / BUILD_LOG)
            found = [str(k.relative_to(copy)) for k in find_kos(copy)]
            raise BuildError(f"dkms.conf names {', '.join(missing)} (BUILT_MODULE_NAME/BUILT_MODULE_LOCATION), "
                             f"which the build did not make; found: {found}", log)  # fmt: skip
        return kos
    kos = find_kos(copy)
    if not kos:
        raise BuildError(f"module build produced no .ko under {copy}", _read(copy / BUILD_LOG))
    return kos


def _result(kernel: Kernel, directory: Path, cached: bool, coverage: bool) -> BuiltModule:
    log = _read(directory / BUILD_LOG)
    listed = _read(directory / MODULES_LIST).split()
    kos = [directory / rel for rel in listed] if listed else find_kos(directory)
    depends = {module_name(ko.name): ko_depends(ko) for ko in kos}
    by_name = {module_name(ko.name): ko for ko in kos}
    order = load_order(depends, [module_name(ko.name) for ko in kos])
    return BuiltModule(
        kernel=kernel,
        directory=directory,
        modules=tuple(by_name[n] for n in order),
        warnings=warning_lines(log),
        cached=cached,
        coverage=coverage,
        depends=tuple((n, depends[n]) for n in order),
        choice=log.splitlines()[0].removeprefix("# ") if log.startswith("# build:") else "",
    )
