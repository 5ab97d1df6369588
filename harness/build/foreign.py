"""Kernels and a root filesystem for guests of a foreign architecture (harness.arches).

A foreign guest (arm64 on an x86_64 host) cannot boot the host's kernels or run the
host's programs. `arch-setup` makes, under the harness cache, per architecture:

- a kernel store: the distribution's kernel packages for that architecture (image,
  modules, headers) unpacked with `dpkg-deb -x` (installing them with apt would need
  multiarch headers that conflict with the host's compiler), laid out like a root
  (boot/, lib/modules/, usr/src/) so the host's kernel lookup works on it unchanged.
  The headers' build tools (scripts/, a Multi-Arch: foreign package) are the host's
  own linux-kbuild of the same version: x86_64 programs that generate arm64 objects
  with the cross compiler, no emulation;
- a root filesystem: the distribution's packages for that architecture (bash, busybox,
  python3, kmod, bpftrace...) unpacked by mmdebstrap's extract variant (seconds, no
  emulated maintainer scripts), plus the few links a maintainer script would make.

Everything is keyed by architecture and release, and made once.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from harness.arches import Arch
from harness.build.kernel import ArchDirs, Kernel, arch_dirs, resolve_foreign_kernel
from harness.build.progress import Notify
from harness.errors import HarnessError, MissingDependencyError

# The guest userspace of a foreign root: what the harness and the suite run in a guest (the shell, busybox
# for the log reader and the module tools, kmod for modprobe, python3 for the sender, bpftrace for the eBPF
# tests). Their dependencies come with them.
ROOT_PACKAGES = (
    "base-files", "base-passwd", "bash", "coreutils", "dash", "debianutils", "busybox-static", "kmod", "mount",
    "util-linux", "procps", "psmisc", "iproute2", "grep", "sed", "gawk", "findutils", "gzip", "xz-utils",
    "python3-minimal", "libpython3-stdlib", "bpftrace",
    "python3-pyroute2",  # the example module's generic netlink sender (examples/genl_echo)
)  # fmt: skip
ROOT_DONE = ".knh-root"  # written last: a root without it is unfinished


class ForeignSetupError(HarnessError):
    """Downloading or unpacking a foreign architecture's kernel or root failed."""


Run = Callable[[Sequence[str], Path], subprocess.CompletedProcess[str]]


def _run(argv: Sequence[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(list(argv), cwd=cwd, capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise MissingDependencyError(argv[0], f"apt-get install {TOOL_PACKAGES.get(argv[0], argv[0])}") from None


TOOL_PACKAGES = {"apt-get": "apt", "dpkg-deb": "dpkg", "depmod": "kmod", "mmdebstrap": "mmdebstrap"}


def _checked(run: Run, argv: Sequence[str], cwd: Path) -> str:
    proc = run(argv, cwd)
    if proc.returncode != 0:
        raise ForeignSetupError(f"`{' '.join(argv)}` failed (exit {proc.returncode}):\n{proc.stderr.strip()}")
    return proc.stdout


def root_busybox(root: Path) -> str | None:
    """Where a foreign root has its busybox, as a path in the guest (its static busybox-static binary), or None."""
    found = [d for d in ("/usr/bin", "/bin", "/usr/sbin", "/sbin") if (root / d[1:] / "busybox").is_file()]
    return f"{found[0]}/busybox" if found else None


def counterpart_release(release: str, host: Arch, arch: Arch) -> str | None:
    """The release of `arch`'s flavour of a host kernel: 6.1.0-57-amd64 -> 6.1.0-57-arm64; None when the release
    does not end in the host's flavour (a kernel built here, another distribution's naming)."""
    suffix = f"-{host.debian}"
    return release[: -len(suffix)] + f"-{arch.debian}" if release.endswith(suffix) else None


def _depends(deb: Path, run: Run) -> list[str]:
    text = _checked(run, ["dpkg-deb", "-f", str(deb), "Depends"], deb.parent)
    return [re.split(r"[\s(]", item.strip(), maxsplit=1)[0] for item in text.replace("|", ",").split(",")]


def install_kernel(arch: Arch, release: str, *, cache_root: Path | None = None, run: Run = _run,
                   notify: Notify = lambda _: None, kbuild_root: Path = Path("/usr/lib")) -> Kernel:  # fmt: skip
    """Download `arch`'s image, modules and headers of `release` and unpack them into its store."""
    dirs = arch_dirs(arch, cache_root)
    if (dirs.boot / f"vmlinuz-{release}").exists() and (dirs.modules / release / "modules.dep").exists():
        return resolve_foreign_kernel(arch, release, cache_root)
    dirs.store.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dirs.base) as tmp:
        work = Path(tmp)
        notify(f"downloading linux-image-{release} and its headers ({arch.debian}) ...")
        _checked(run, ["apt-get", "download", f"linux-image-{release}:{arch.debian}",
                       f"linux-headers-{release}:{arch.debian}"], work)  # fmt: skip
        headers = next(work.glob(f"linux-headers-{release}_*.deb"))
        needs = _depends(headers, run)
        common = [n for n in needs if n.startswith("linux-headers-") and n.endswith("-common")]
        kbuild = [n for n in needs if n.startswith("linux-kbuild-")]
        if common:
            _checked(run, ["apt-get", "download", *common], work)
        for name in kbuild:  # the host's own build tools of that version run the arm64 headers' scripts
            if not (kbuild_root / name / "scripts").is_dir():
                raise MissingDependencyError(f"{kbuild_root / name} (the host's kernel build tools of {release})",
                                             f"apt-get install {name}")  # fmt: skip
        for deb in sorted(work.glob("*.deb")):
            _checked(run, ["dpkg-deb", "-x", str(deb), str(dirs.store)], work)
    _relocate_headers(dirs, release, kbuild, kbuild_root)
    _checked(run, ["depmod", "-b", str(dirs.store), release], dirs.store)
    return resolve_foreign_kernel(arch, release, cache_root)


def _relocate_headers(dirs: ArchDirs, release: str, kbuild: Sequence[str], kbuild_root: Path) -> None:
    """Make the unpacked headers work where they are: the packages' absolute paths point into /usr/src."""
    build = dirs.modules / release / "build"
    headers = dirs.store / "usr" / "src" / f"linux-headers-{release}"
    if build.is_symlink() or build.exists():
        build.unlink()
    build.symlink_to(Path("../../../usr/src") / headers.name)
    for name in kbuild:
        link = dirs.store / "usr" / "lib" / name
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.exists():
            link.symlink_to(kbuild_root / name)
    makefile = headers / "Makefile"
    text = makefile.read_text()
    makefile.write_text(re.sub(r"^include /usr/src/", f"include {dirs.store}/usr/src/", text, flags=re.M))


def host_suite(os_release: Path = Path("/etc/os-release")) -> str:
    """The host distribution's release name (bookworm): the foreign root has the same packages."""
    for line in os_release.read_text().splitlines():
        if line.startswith("VERSION_CODENAME="):
            return line.partition("=")[2].strip().strip('"')
    raise ForeignSetupError(f"{os_release} has no VERSION_CODENAME: name the distribution release to unpack")


def make_root(arch: Arch, *, cache_root: Path | None = None, run: Run = _run, notify: Notify = lambda _: None,
              packages: Sequence[str] = ROOT_PACKAGES, suite: str | None = None) -> Path:  # fmt: skip
    """`arch`'s root filesystem (made once): the packages unpacked, with the links their scripts would make."""
    dirs = arch_dirs(arch, cache_root)
    listed = ",".join(packages) + "\n"
    if (dirs.root / ROOT_DONE).exists() and (dirs.root / ROOT_DONE).read_text() == listed:
        return dirs.root
    suite = suite or host_suite()
    notify(f"unpacking a {suite} {arch.debian} root ({len(packages)} packages and their dependencies) ...")
    shutil.rmtree(dirs.root, ignore_errors=True)
    dirs.base.mkdir(parents=True, exist_ok=True)
    _checked(run, ["mmdebstrap", "--mode=root", "--variant=extract", f"--arch={arch.debian}",
                   f"--include={','.join(packages)}", suite, str(dirs.root)], dirs.base)  # fmt: skip
    _finish_root(dirs.root)
    (dirs.root / ROOT_DONE).write_text(listed)
    return dirs.root


def _finish_root(root: Path) -> None:
    """What maintainer scripts do that the guest relies on: /bin/sh, the user and group databases, mount points."""
    sh = root / "bin" / "sh"
    if not sh.exists() and not sh.is_symlink():
        sh.symlink_to("dash" if (root / "bin" / "dash").exists() else "bash")
    for name in ("passwd", "group"):
        master = root / "usr" / "share" / "base-passwd" / f"{name}.master"
        target = root / "etc" / name
        if master.exists() and not target.exists():
            shutil.copyfile(master, target)
    for d in ("proc", "sys", "dev", "run", "tmp", "root", "lib/modules"):
        (root / d).mkdir(parents=True, exist_ok=True)
    (root / "tmp").chmod(0o1777)
