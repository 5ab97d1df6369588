"""Foreign architectures' kernels and root (harness/build/foreign.py), with no apt, dpkg or mmdebstrap:
a fake `run` records each argv and makes what the real command would leave behind (the downloaded
.deb files, the unpacked tree, modules.dep, the unpacked root)."""

from __future__ import annotations

import os
import platform
import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest

from harness.arches import ARM64, X86_64
from harness.build import foreign
from harness.build.foreign import (
    ROOT_DONE,
    ROOT_PACKAGES,
    ForeignSetupError,
    _finish_root,
    counterpart_release,
    host_suite,
    install_kernel,
    make_root,
)
from harness.build.kernel import arch_dirs
from harness.errors import MissingDependencyError

REL = "6.1.0-57-arm64"
COMMON = "linux-headers-6.1.0-57-common"
KBUILD = "linux-kbuild-6.1"
DEPENDS = f"{COMMON} (= 6.1.158-1), {KBUILD} (>= 6.1.158-1), linux-compiler-gcc-12-arm (>= 6.1.158-1)\n"


@pytest.fixture(autouse=True)
def x86_64_host(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(platform, "machine", lambda: "x86_64")


def done(argv: Sequence[str], stdout: str = "", code: int = 0, stderr: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.CompletedProcess(list(argv), code, stdout, stderr)


class FakeApt:
    """apt-get download, dpkg-deb -f/-x and depmod as far as install_kernel sees them."""

    def __init__(self, depends: str = DEPENDS) -> None:
        self.calls: list[tuple[list[str], Path]] = []
        self.depends = depends

    def __call__(self, argv: Sequence[str], cwd: Path) -> subprocess.CompletedProcess[str]:
        argv = list(argv)
        self.calls.append((argv, cwd))
        if argv[:2] == ["apt-get", "download"]:
            for pkg in argv[2:]:
                name, _, arch = pkg.partition(":")
                (cwd / f"{name}_6.1.158-1_{arch or 'all'}.deb").write_bytes(b"!<arch>\n")
        elif argv[:2] == ["dpkg-deb", "-f"]:
            assert argv[3] == "Depends" and Path(argv[2]).exists()
            return done(argv, self.depends)
        elif argv[:2] == ["dpkg-deb", "-x"]:
            self.unpack(Path(argv[2]).name, Path(argv[3]))
        elif argv[0] == "depmod":
            (Path(argv[2]) / "lib" / "modules" / argv[3] / "modules.dep").write_text("")
        return done(argv)

    @staticmethod
    def unpack(deb: str, store: Path) -> None:
        if deb.startswith(f"linux-image-{REL}_"):
            (store / "boot").mkdir(parents=True, exist_ok=True)
            (store / "boot" / f"vmlinuz-{REL}").write_bytes(b"MZ")
            mod = store / "lib" / "modules" / REL / "kernel"
            mod.mkdir(parents=True, exist_ok=True)
            (mod / "virtio_console.ko").write_bytes(b"")
        elif deb.startswith(f"linux-headers-{REL}_"):
            src = store / "usr" / "src" / f"linux-headers-{REL}"
            src.mkdir(parents=True, exist_ok=True)
            (src / "Makefile").write_text(f"# generated\ninclude /usr/src/{COMMON}/Makefile\n")
            (src / "scripts").symlink_to(f"../../lib/{KBUILD}/scripts")
            mods = store / "lib" / "modules" / REL
            mods.mkdir(parents=True, exist_ok=True)
            (mods / "build").symlink_to(f"/usr/src/linux-headers-{REL}")  # as packaged: absolute
        elif deb.startswith(f"{COMMON}_"):
            common = store / "usr" / "src" / COMMON
            common.mkdir(parents=True, exist_ok=True)
            (common / "Makefile").write_text("VERSION = 6\n")
        else:
            raise AssertionError(f"unexpected deb {deb}")


@pytest.fixture
def kbuild_root(tmp_path: Path) -> Path:
    """The host's /usr/lib with linux-kbuild-6.1/scripts."""
    root = tmp_path / "host-usr-lib"
    (root / KBUILD / "scripts").mkdir(parents=True)
    return root


def _shape(calls: list[tuple[list[str], Path]], work: Path, store: Path) -> list[list[str]]:
    def one(a: str) -> str:
        return a.replace(str(work), "WORK").replace(str(store), "STORE")

    return [[one(a) for a in argv] for argv, _ in calls]


def test_install_kernel_argv_sequence(tmp_path: Path, kbuild_root: Path) -> None:
    cache = tmp_path / "cache"
    apt = FakeApt()
    kernel = install_kernel(ARM64, REL, cache_root=cache, run=apt, kbuild_root=kbuild_root)
    store = arch_dirs(ARM64, cache).store
    work = apt.calls[0][1]
    assert work.parent == arch_dirs(ARM64, cache).base and not work.exists()  # a temporary directory, removed
    assert _shape(apt.calls, work, store) == [
        ["apt-get", "download", f"linux-image-{REL}:arm64", f"linux-headers-{REL}:arm64"],
        ["dpkg-deb", "-f", f"WORK/linux-headers-{REL}_6.1.158-1_arm64.deb", "Depends"],
        ["apt-get", "download", COMMON],
        ["dpkg-deb", "-x", f"WORK/linux-headers-{REL}_6.1.158-1_arm64.deb", "STORE"],
        ["dpkg-deb", "-x", f"WORK/{COMMON}_6.1.158-1_all.deb", "STORE"],
        ["dpkg-deb", "-x", f"WORK/linux-image-{REL}_6.1.158-1_arm64.deb", "STORE"],
        ["depmod", "-b", "STORE", REL],
    ]
    assert apt.calls[-1][1] == store
    assert (kernel.release, kernel.arch, kernel.spec) == (REL, "arm64", f"arm64:{REL}")
    assert kernel.image == store / "boot" / f"vmlinuz-{REL}"
    assert kernel.build_dir == store / "lib" / "modules" / REL / "build"


def test_install_kernel_relocates_the_headers(tmp_path: Path, kbuild_root: Path) -> None:
    cache = tmp_path / "cache"
    install_kernel(ARM64, REL, cache_root=cache, run=FakeApt(), kbuild_root=kbuild_root)
    store = arch_dirs(ARM64, cache).store
    build = store / "lib" / "modules" / REL / "build"
    assert build.is_symlink() and os.readlink(build) == f"../../../usr/src/linux-headers-{REL}"
    assert build.resolve() == (store / "usr" / "src" / f"linux-headers-{REL}").resolve()
    kb = store / "usr" / "lib" / KBUILD
    assert kb.is_symlink() and Path(os.readlink(kb)) == kbuild_root / KBUILD
    # the headers' relative scripts link now reaches the host's kbuild through the store
    assert (store / "usr" / "src" / f"linux-headers-{REL}" / "scripts").resolve() == (kbuild_root / KBUILD / "scripts")
    makefile = (build / "Makefile").read_text()
    assert f"include {store}/usr/src/{COMMON}/Makefile\n" in makefile
    assert "include /usr/src/" not in makefile and makefile.startswith("# generated\n")


def test_install_kernel_twice_runs_nothing(tmp_path: Path, kbuild_root: Path) -> None:
    cache = tmp_path / "cache"
    first = install_kernel(ARM64, REL, cache_root=cache, run=FakeApt(), kbuild_root=kbuild_root)

    def never(argv: Sequence[str], cwd: Path) -> subprocess.CompletedProcess[str]:
        raise AssertionError(f"ran {argv}")

    assert install_kernel(ARM64, REL, cache_root=cache, run=never, kbuild_root=kbuild_root) == first


def test_install_kernel_without_the_hosts_kbuild(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    apt = FakeApt()
    with pytest.raises(MissingDependencyError) as e:
        install_kernel(ARM64, REL, cache_root=cache, run=apt, kbuild_root=tmp_path / "empty-usr-lib")
    assert e.value.install == f"apt-get install {KBUILD}"
    assert REL in e.value.what
    assert not any(argv[:2] == ["dpkg-deb", "-x"] for argv, _ in apt.calls)  # nothing unpacked
    assert not (arch_dirs(ARM64, cache).boot / f"vmlinuz-{REL}").exists()


def test_install_kernel_a_failing_download(tmp_path: Path, kbuild_root: Path) -> None:
    def apt(argv: Sequence[str], cwd: Path) -> subprocess.CompletedProcess[str]:
        return done(argv, code=100, stderr="E: Unable to locate package linux-image-9.9-arm64:arm64\n")

    with pytest.raises(ForeignSetupError, match=r"(?s)apt-get download linux-image-9.9-arm64:arm64.*exit 100.*locate"):
        install_kernel(ARM64, "9.9-arm64", cache_root=tmp_path, run=apt, kbuild_root=kbuild_root)


def test_depends_alternatives_and_versions(tmp_path: Path) -> None:
    deb = tmp_path / "x.deb"

    def run(argv: Sequence[str], cwd: Path) -> subprocess.CompletedProcess[str]:
        return done(argv, "a (>= 1), b | c (= 2),d\n")

    assert foreign._depends(deb, run) == ["a", "b", "c", "d"]


def test_missing_tool_names_its_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # none of the tools
    with pytest.raises(MissingDependencyError) as e:
        foreign._run(["mmdebstrap", "--version"], tmp_path)
    assert e.value.install == "apt-get install mmdebstrap"
    with pytest.raises(MissingDependencyError) as e:
        foreign._run(["dpkg-deb", "--version"], tmp_path)
    assert e.value.install == "apt-get install dpkg"


@pytest.mark.parametrize(
    ("release", "host", "arch", "expected"),
    [
        ("6.1.0-57-amd64", X86_64, ARM64, "6.1.0-57-arm64"),
        ("6.12.48+deb13-amd64", X86_64, ARM64, "6.12.48+deb13-arm64"),
        ("6.1.0-57-cloud-amd64", X86_64, ARM64, "6.1.0-57-cloud-arm64"),
        ("6.1.0-57-arm64", ARM64, X86_64, "6.1.0-57-amd64"),
        ("6.8.0-rc1", X86_64, ARM64, None),  # built here: no distribution counterpart
        ("6.1.0-57-amd64-dbg", X86_64, ARM64, None),
        ("amd64", X86_64, ARM64, None),
    ],
)
def test_counterpart_release(release: str, host: object, arch: object, expected: str | None) -> None:
    assert counterpart_release(release, host, arch) == expected  # type: ignore[arg-type]


def test_host_suite(tmp_path: Path) -> None:
    f = tmp_path / "os-release"
    f.write_text('PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nVERSION_CODENAME=bookworm\nID=debian\n')
    assert host_suite(f) == "bookworm"
    f.write_text('VERSION_CODENAME="trixie"\n')
    assert host_suite(f) == "trixie"
    f.write_text("ID=debian\n")
    with pytest.raises(ForeignSetupError, match="no VERSION_CODENAME"):
        host_suite(f)


# --- the root -----------------------------------------------------------------------------------------------


class FakeMmdebstrap:
    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def __call__(self, argv: Sequence[str], cwd: Path) -> subprocess.CompletedProcess[str]:
        argv = list(argv)
        self.calls.append(argv)
        assert argv[0] == "mmdebstrap"
        root = Path(argv[-1])
        for d in ("bin", "etc", "usr/share/base-passwd"):
            (root / d).mkdir(parents=True, exist_ok=True)
        (root / "bin" / "dash").write_bytes(b"")
        (root / "bin" / "bash").write_bytes(b"")
        (root / "usr/share/base-passwd/passwd.master").write_text("root:x:0:0:root:/root:/bin/bash\n")
        (root / "usr/share/base-passwd/group.master").write_text("root:x:0:\n")
        return done(argv)


def test_make_root_argv(tmp_path: Path) -> None:
    fake = FakeMmdebstrap()
    root = make_root(ARM64, cache_root=tmp_path, run=fake, suite="bookworm")
    assert root == arch_dirs(ARM64, tmp_path).root
    assert fake.calls == [[
        "mmdebstrap", "--mode=root", "--variant=extract", "--arch=arm64", f"--include={','.join(ROOT_PACKAGES)}",
        "bookworm", str(root),
    ]]  # fmt: skip
    assert (root / ROOT_DONE).read_text() == ",".join(ROOT_PACKAGES) + "\n"
    assert "busybox-static" in ROOT_PACKAGES and "kmod" in ROOT_PACKAGES and "base-passwd" in ROOT_PACKAGES


def test_make_root_is_made_once_per_package_list(tmp_path: Path) -> None:
    fake = FakeMmdebstrap()
    root = make_root(ARM64, cache_root=tmp_path, run=fake, suite="bookworm", packages=("bash", "busybox-static"))
    (root / "stale").write_text("")
    assert make_root(ARM64, cache_root=tmp_path, run=fake, suite="bookworm", packages=("bash", "busybox-static"))
    assert len(fake.calls) == 1 and (root / "stale").exists()
    make_root(ARM64, cache_root=tmp_path, run=fake, suite="bookworm", packages=("bash", "busybox-static", "kmod"))
    assert len(fake.calls) == 2 and fake.calls[1][4] == "--include=bash,busybox-static,kmod"
    assert not (root / "stale").exists()  # made again from nothing
    assert (root / ROOT_DONE).read_text() == "bash,busybox-static,kmod\n"


def test_make_root_unfinished_is_made_again(tmp_path: Path) -> None:
    fake = FakeMmdebstrap()
    root = arch_dirs(ARM64, tmp_path).root
    (root / "bin").mkdir(parents=True)  # a root without its done file: an interrupted run
    make_root(ARM64, cache_root=tmp_path, run=fake, suite="bookworm", packages=("bash",))
    assert len(fake.calls) == 1


def test_make_root_failure_leaves_no_done_file(tmp_path: Path) -> None:
    def failing(argv: Sequence[str], cwd: Path) -> subprocess.CompletedProcess[str]:
        Path(argv[-1]).mkdir(parents=True, exist_ok=True)
        return done(argv, code=1, stderr="E: mmdebstrap failed")

    with pytest.raises(ForeignSetupError, match="mmdebstrap failed"):
        make_root(ARM64, cache_root=tmp_path, run=failing, suite="bookworm", packages=("bash",))
    assert not (arch_dirs(ARM64, tmp_path).root / ROOT_DONE).exists()


def test_make_root_suite_defaults_to_the_hosts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(foreign, "host_suite", lambda: "trixie")
    fake = FakeMmdebstrap()
    make_root(ARM64, cache_root=tmp_path, run=fake, packages=("bash",))
    assert fake.calls[0][-2] == "trixie"


def test_finish_root(tmp_path: Path) -> None:
    root = tmp_path / "root"
    for d in ("bin", "etc", "usr/share/base-passwd"):
        (root / d).mkdir(parents=True)
    (root / "bin" / "dash").write_bytes(b"")
    (root / "usr/share/base-passwd/passwd.master").write_text("root:x:0:0:root:/root:/bin/bash\n")
    (root / "usr/share/base-passwd/group.master").write_text("root:x:0:\n")
    _finish_root(root)
    assert os.readlink(root / "bin" / "sh") == "dash"
    assert (root / "etc" / "passwd").read_text() == "root:x:0:0:root:/root:/bin/bash\n"
    assert (root / "etc" / "group").read_text() == "root:x:0:\n"
    for d in ("proc", "sys", "dev", "run", "tmp", "root", "lib/modules"):
        assert (root / d).is_dir(), d
    assert (root / "tmp").stat().st_mode & 0o7777 == 0o1777


def test_finish_root_keeps_what_is_there(tmp_path: Path) -> None:
    root = tmp_path / "root"
    for d in ("bin", "etc", "usr/share/base-passwd"):
        (root / d).mkdir(parents=True)
    (root / "bin" / "bash").write_bytes(b"")  # no dash: sh is bash
    (root / "usr/share/base-passwd/passwd.master").write_text("master\n")
    (root / "etc" / "passwd").write_text("mine\n")
    _finish_root(root)
    assert os.readlink(root / "bin" / "sh") == "bash"
    assert (root / "etc" / "passwd").read_text() == "mine\n"
    assert not (root / "etc" / "group").exists()  # no master, no database
    _finish_root(root)  # again: nothing to do, nothing raised
    assert os.readlink(root / "bin" / "sh") == "bash"


def test_the_initramfs_finds_the_foreign_roots_busybox(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One answer to "where is the root's busybox" (foreign.root_busybox) for the initramfs, the module tools
    and doctor: a merged-/usr root has it in usr/bin."""
    from harness.arches import ARM64
    from harness.build.initramfs import build_initramfs
    from harness.build.kernel import Kernel, arch_dirs
    from harness.errors import KernelModulesMissing, MissingDependencyError

    monkeypatch.setattr("platform.machine", lambda: "x86_64")
    kernel = Kernel("6.1.0-57-arm64", tmp_path / "Image", tmp_path / "nowhere" / "build", arch="arm64")
    with pytest.raises(MissingDependencyError, match="arch-setup arm64"):
        build_initramfs(kernel, tmp_path / "init", tmp_path)
    busybox = arch_dirs(ARM64, tmp_path).root / "usr" / "bin" / "busybox"
    busybox.parent.mkdir(parents=True)
    busybox.write_bytes(b"\x7fELF")
    assert foreign.root_busybox(busybox.parents[2]) == "/usr/bin/busybox"
    with pytest.raises(KernelModulesMissing):  # past the busybox: the kernel's modules are next
        build_initramfs(kernel, tmp_path / "init", tmp_path)
