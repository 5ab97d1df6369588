"""Kernel source trees: recognising one, the distribution's source (``linux-source-*``) unpacked
once into the harness cache, and the profile specs (``debug``, ``debug:TREE``) that name a tree."""

from __future__ import annotations

import contextlib
import fcntl
import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from harness.build.config_items import PROFILES
from harness.build.progress import Notify
from harness.errors import KernelBuildError, KernelNotFoundError


def _silent(_: str) -> None:
    pass


def is_kernel_tree(path: Path) -> bool:
    """A directory that looks like a Linux source tree (Makefile, Kconfig, arch/)."""
    return path.is_dir() and (path / "Makefile").is_file() and (path / "Kconfig").is_file() and (path / "arch").is_dir()


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)  # another pytest process building the same tree waits
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


SOURCE_DIR = Path("/usr/src")


SOURCE_HINT = ("apt-get install linux-source-6.1 (Debian 12; scripts/setup.sh does it) or linux-source (Ubuntu), "
               "or name your own tree: --kernel debug:~/src/linux")  # fmt: skip


def parse_profile_spec(spec: str) -> tuple[str, str] | None:
    """`debug` -> ("debug", ""): the distribution's source; `debug:TREE` -> ("debug", TREE); None for a
    spec without a profile. A directory named like a profile is reached as ./debug."""
    name, sep, tree = spec.partition(":")
    if name not in PROFILES or (sep and not tree):
        return None
    return name, tree


def find_distro_source(src: Path | None = None) -> Path | None:
    """The newest linux-source tarball: Debian's /usr/src/linux-source-6.1.tar.xz, Ubuntu's
    /usr/src/linux-source-<ver>/linux-source-<ver>.tar.bz2."""
    from harness.build.kernel import release_sort_key

    src = src or SOURCE_DIR
    found = [p for pattern in ("linux-source-*.tar.*", "linux-source-*/linux-source-*.tar.*") for p in src.glob(pattern)
             if p.is_file() and p.name.endswith((".tar.xz", ".tar.bz2", ".tar.gz"))]  # fmt: skip
    return max(found, key=lambda p: release_sort_key(p.name), default=None)


def unpack_source(tarball: Path, cache_root: Path, *, notify: Notify = _silent) -> Path:
    """Unpack a source tarball once into <cache>/kernel-src/<name> and return the tree. A tarball that
    changed since (a distribution update: other size or mtime) is unpacked again."""
    import shutil
    import tempfile

    name = tarball.name.split(".tar.")[0]
    base = cache_root / "kernel-src"
    tree, stamp = base / name, base / f"{name}.json"
    st = tarball.stat()
    identity = {"tarball": str(tarball), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    base.mkdir(parents=True, exist_ok=True)
    with locked(base / f"{name}.lock"):
        with contextlib.suppress(OSError, ValueError):
            if json.loads(stamp.read_text()) == identity and is_kernel_tree(tree):
                return tree
        notify(f"unpacking {tarball} into {tree} (once) ...")
        start = time.monotonic()
        tmp = Path(tempfile.mkdtemp(prefix=".unpack-", dir=base))
        try:
            proc = subprocess.run(["tar", "-xf", str(tarball), "-C", str(tmp)], capture_output=True, check=False)
            if proc.returncode != 0:
                raise KernelBuildError(f"unpacking {tarball} failed (tar -xf): "
                                       f"{proc.stderr.decode(errors='replace').strip()[-500:]}")  # fmt: skip
            tops = [p for p in tmp.iterdir() if p.is_dir()]
            if len(tops) != 1 or not is_kernel_tree(tops[0]):
                raise KernelBuildError(
                    f"{tarball} does not hold one kernel source tree (found {len(tops)} directories)"
                )
            if tree.exists():
                shutil.rmtree(tree)
            tops[0].rename(tree)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        stamp.write_text(json.dumps(identity) + "\n")
        notify(f"unpacked {tarball} in {time.monotonic() - start:.0f} s")
        return tree


def profile_tree(tree: str, *, cache_root: Path, notify: Notify = _silent, src: Path | None = None) -> Path:
    """The tree a profile spec builds: the named one, or the distribution's source unpacked into the cache."""
    if tree:
        path = Path(tree).expanduser()
        if not is_kernel_tree(path):
            raise KernelNotFoundError(f"debug:{tree}: {path} is not a kernel source tree (it needs Makefile, "
                                      "Kconfig and arch/)")  # fmt: skip
        return path
    src = src or SOURCE_DIR
    tarball = find_distro_source(src)
    if tarball is None:
        raise KernelNotFoundError(f"--kernel debug builds the distribution's kernel source, and {src} has no "
                                  f"linux-source-*.tar.*: {SOURCE_HINT}")  # fmt: skip
    return unpack_source(tarball, cache_root, notify=notify)
