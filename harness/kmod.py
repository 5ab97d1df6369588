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
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .errors import BuildError
from .kernel import Kernel, image_version
from .kernel_source import locked

IGNORED_SUFFIXES = (".o", ".ko", ".mod", ".mod.c", ".cmd", ".symvers", ".order", ".swp")
BUILD_LOG = "build.log"
DONE_MARK = ".knh-built"


def default_cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "knetlink-harness"


@dataclass(frozen=True)
class BuiltModule:
    """Artifacts of one module build for one kernel."""

    kernel: Kernel
    directory: Path  # the build copy, visible to the guest through the shared root
    modules: tuple[Path, ...]  # every .ko produced
    warnings: tuple[str, ...]  # compiler warning lines from the build log
    cached: bool
    coverage: bool = False  # built with GCOV_PROFILE=y (harness.coverage)

    def module(self, name: str | None = None) -> Path:
        """The .ko called `name` (without .ko), or the only one built."""
        if name is None:
            if len(self.modules) != 1:
                raise BuildError(f"build produced {len(self.modules)} modules; name one", "")
            return self.modules[0]
        for ko in self.modules:
            if ko.stem == name:
                return ko
        raise BuildError(f"no {name}.ko among {[m.name for m in self.modules]}", "")


def source_files(src: Path) -> list[Path]:
    files = []
    for path in sorted(src.rglob("*")):
        rel = path.relative_to(src)
        if (
            path.is_file()
            and not path.name.endswith(IGNORED_SUFFIXES)
            and not any(part.startswith(".") for part in rel.parts)
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


def make_argv(build_copy: Path, kernel: Kernel, targets: Sequence[str], jobs: int | None = None,
              variables: Sequence[str] = ()) -> list[str]:  # fmt: skip
    """The module's own Makefile (taking KDIR) when it has one; a Kbuild-only directory is built by
    the kernel's build system directly (make -C KDIR M=dir modules). `variables` (NAME=VALUE) go on
    make's command line, which passes them down to the kernel's make."""
    if (build_copy / "Makefile").exists():
        argv = ["make", "-C", str(build_copy), f"KDIR={kernel.build_dir}"]
    else:
        argv = ["make", "-C", str(kernel.build_dir), f"M={build_copy}"]
        targets = targets or ["modules"]
    if jobs:
        argv.append(f"-j{jobs}")
    return argv + list(variables) + list(targets)


def warning_lines(log: str) -> tuple[str, ...]:
    return tuple(line for line in log.splitlines() if "warning:" in line.lower())


GCOV_VARIABLES = ("GCOV_PROFILE=y",)  # kbuild: compile every object of the module for gcov


def build_module(
    src: Path,
    kernel: Kernel,
    *,
    cache_root: Path | None = None,
    targets: Sequence[str] = (),
    coverage: bool = False,
) -> BuiltModule:
    """Build `src` for `kernel` (or reuse an identical earlier build); `coverage`: with GCOV_PROFILE=y."""
    src = src.resolve()
    if not (src / "Makefile").exists() and not (src / "Kbuild").exists():
        raise BuildError(f"{src} has no Makefile or Kbuild: not a module source directory", "")
    cache_root = cache_root or default_cache_root()
    key = source_key(src, kernel, targets, coverage=coverage)
    final = cache_root / "modules" / kernel.release / f"{src.name}-{key}"
    if (final / DONE_MARK).exists():
        return _result(kernel, final, cached=True, coverage=coverage)
    with locked(final.with_name(f".{final.name}.lock")):  # another process building the same waits
        if (final / DONE_MARK).exists():
            return _result(kernel, final, cached=True, coverage=coverage)
        shutil.rmtree(final, ignore_errors=True)  # an interrupted build
        try:
            shutil.copytree(src, final, ignore=shutil.ignore_patterns(*(f"*{s}" for s in IGNORED_SUFFIXES)))
            argv = make_argv(final, kernel, targets, jobs=os.cpu_count(),
                             variables=GCOV_VARIABLES if coverage else ())  # fmt: skip
            proc = subprocess.run(argv, capture_output=True, text=True, check=False)
            log = f"$ {' '.join(argv)}\n{proc.stdout}{proc.stderr}"
            (final / BUILD_LOG).write_text(log)
            if proc.returncode != 0:
                raise BuildError(
                    f"module build failed for {kernel.release} (exit {proc.returncode}): {' '.join(argv)}", log
                )
            if not list(final.glob("*.ko")):
                raise BuildError(f"module build for {kernel.release} produced no .ko", log)
            (final / DONE_MARK).write_text(key + "\n")
        except BaseException:
            shutil.rmtree(final, ignore_errors=True)
            raise
    return _result(kernel, final, cached=False, coverage=coverage)


def _result(kernel: Kernel, directory: Path, cached: bool, coverage: bool) -> BuiltModule:
    log = (directory / BUILD_LOG).read_text() if (directory / BUILD_LOG).exists() else ""
    return BuiltModule(
        kernel=kernel,
        directory=directory,
        modules=tuple(sorted(directory.glob("*.ko"))),
        warnings=warning_lines(log),
        cached=cached,
        coverage=coverage,
    )
