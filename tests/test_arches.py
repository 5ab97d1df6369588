"""Guest architectures (harness/arches.py) and what reads them: --kernel prefixes (qualify,
expand_kernel_specs, resolve_foreign_kernel, resolve_kernel_spec), the arch setting, cross builds,
the accelerator of a foreign kernel, the guest's module tools and the session's engine and root.

The host is pinned to x86_64 (platform.machine) unless a test says otherwise, and the harness cache
is a tmp_path (XDG_CACHE_HOME), so nothing here reads the machine's kernels or cache.
"""

from __future__ import annotations

import platform
from pathlib import Path

import pytest

from harness import arches
from harness.arches import ARM64, X86_64, arch_named, host_arch, is_foreign, split_arch
from harness.build.kernel import (
    Kernel,
    arch_dirs,
    expand_kernel_specs,
    foreign_kernels,
    qualify,
    resolve_foreign_kernel,
)
from harness.build.kernel_build import modules_dir_for, resolve_kernel_spec
from harness.build.module_build import cross_variables, guest_machine
from harness.config import HarnessConfig, resolve
from harness.errors import ConfigError, KernelNotFoundError, MissingDependencyError
from harness.guest.accel import ProbeResult, choose_accel
from harness.guest.kernel_ops import module_tool
from harness.session import KernelSession


@pytest.fixture(autouse=True)
def x86_64_host(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """An x86_64 host whose harness cache is empty and under tmp_path; returns the cache root."""
    monkeypatch.setattr(platform, "machine", lambda: "x86_64")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    return tmp_path / "xdg" / "knetlink-harness"


def add_kernel(boot: Path, modules: Path, release: str) -> None:
    """An installed kernel as installed_kernels sees one: an image and a build dir with a Makefile."""
    boot.mkdir(parents=True, exist_ok=True)
    (boot / f"vmlinuz-{release}").write_bytes(b"")
    build = modules / release / "build"
    build.mkdir(parents=True, exist_ok=True)
    (build / "Makefile").write_text("")


def arm64_store(cache: Path, *releases: str) -> Path:
    dirs = arch_dirs(ARM64, cache)
    dirs.store.mkdir(parents=True, exist_ok=True)
    for r in releases:
        add_kernel(dirs.boot, dirs.modules, r)
    return dirs.store


def arm64_kernel(release: str = "6.1.0-57-arm64") -> Kernel:
    return Kernel(release, Path(f"/s/boot/vmlinuz-{release}"), Path(f"/s/lib/modules/{release}/build"), arch="arm64")


HOST_K = Kernel("6.1.0-57-amd64", Path("/boot/vmlinuz-6.1.0-57-amd64"), Path("/lib/modules/6.1.0-57-amd64/build"))


# --- the table --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("arm64:6.1.0-57-arm64", ("arm64", "6.1.0-57-arm64")),
        ("x86_64:6.1.0-57-amd64", ("x86_64", "6.1.0-57-amd64")),
        ("arm64:", ("arm64", "")),
        ("arm64:all", ("arm64", "all")),
        ("6.1.0-57-amd64", (None, "6.1.0-57-amd64")),
        ("debug:/src/linux", (None, "debug:/src/linux")),  # a profile, not an architecture
        ("riscv64:6.6", (None, "riscv64:6.6")),  # not a known architecture
        ("", (None, "")),
    ],
)
def test_split_arch(spec: str, expected: tuple[str | None, str]) -> None:
    assert split_arch(spec) == expected


def test_host_arch_follows_the_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    assert host_arch() == X86_64 and not is_foreign(X86_64) and is_foreign(ARM64)
    monkeypatch.setattr(platform, "machine", lambda: "aarch64")
    assert host_arch() == ARM64 and is_foreign(X86_64) and not is_foreign(ARM64)


def test_arch_named_refuses_an_unknown_name() -> None:
    assert arch_named("arm64") is ARM64
    with pytest.raises(ConfigError, match=r"unknown guest architecture 'mips'.*x86_64, arm64"):
        arch_named("mips")


def test_kernel_arch_foreign_and_spec() -> None:
    assert HOST_K.arch == "x86_64" and not HOST_K.foreign and HOST_K.spec == "6.1.0-57-amd64"
    k = arm64_kernel()
    assert k.foreign and k.spec == "arm64:6.1.0-57-arm64" and k.label == "6.1.0-57-arm64"


def test_an_unknown_host_has_nothing_foreign(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(platform, "machine", lambda: "riscv64")
    k = Kernel("6.6.0", Path("/boot/vmlinuz-6.6.0"), Path("/lib/modules/6.6.0/build"))
    assert not k.foreign and k.spec == "6.6.0"
    assert qualify("6.6.0", None) == "6.6.0"


# --- qualify and expand_kernel_specs ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "arch", "expected"),
    [
        ("6.1.0-57-amd64", None, "6.1.0-57-amd64"),
        ("6.1.0-57-amd64", "x86_64", "6.1.0-57-amd64"),
        ("", None, ""),
        ("", "x86_64", ""),
        ("", "arm64", "arm64:"),
        ("6.1.0-57-arm64", "arm64", "arm64:6.1.0-57-arm64"),
        ("arm64:6.1.0-57-arm64", None, "arm64:6.1.0-57-arm64"),  # its own prefix wins over the setting
        ("arm64:6.1.0-57-arm64", "x86_64", "arm64:6.1.0-57-arm64"),
        ("x86_64:6.1.0-57-amd64", None, "6.1.0-57-amd64"),  # the host's prefix is dropped
        ("x86_64:6.1.0-57-amd64", "arm64", "6.1.0-57-amd64"),
    ],
)
def test_qualify(spec: str, arch: str | None, expected: str) -> None:
    assert qualify(spec, arch) == expected


def test_qualify_on_an_arm64_host_prefixes_x86_64(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(platform, "machine", lambda: "aarch64")
    assert qualify("6.1.0-57-amd64", "x86_64") == "x86_64:6.1.0-57-amd64"
    assert qualify("arm64:6.1.0-57-arm64", None) == "6.1.0-57-arm64"


def test_host_specs_unchanged(tmp_path: Path) -> None:
    boot, modules = tmp_path / "boot", tmp_path / "modules"
    for r in ("6.1.0-9-amd64", "6.12.1-amd64", "6.1.0-56-amd64"):
        add_kernel(boot, modules, r)
    assert expand_kernel_specs((), boot, modules) == [""]
    assert expand_kernel_specs(("6.1.0-9-amd64", "/x/bzImage"), boot, modules) == ["6.1.0-9-amd64", "/x/bzImage"]
    oldest_first = ["6.1.0-9-amd64", "6.1.0-56-amd64", "6.12.1-amd64"]
    assert expand_kernel_specs(("all",), boot, modules) == oldest_first
    assert expand_kernel_specs(("all",), boot, modules, arch="x86_64") == oldest_first
    assert expand_kernel_specs(("6.1.0-56-amd64", "all"), boot, modules) == [
        "6.1.0-56-amd64", "6.1.0-9-amd64", "6.12.1-amd64",
    ]  # fmt: skip


def test_arm64_prefix_kept_and_native_prefix_dropped(tmp_path: Path) -> None:
    boot, modules = tmp_path / "boot", tmp_path / "modules"
    specs = ("arm64:6.1.0-57-arm64", "x86_64:6.1.0-57-amd64", "6.1.0-56-amd64")
    assert expand_kernel_specs(specs, boot, modules) == ["arm64:6.1.0-57-arm64", "6.1.0-57-amd64", "6.1.0-56-amd64"]
    # with the setting at arm64 the unprefixed one is an arm64 release
    assert expand_kernel_specs(("6.1.0-57-arm64", "x86_64:6.1.0-57-amd64"), boot, modules, arch="arm64") == [
        "arm64:6.1.0-57-arm64", "6.1.0-57-amd64",
    ]  # fmt: skip


def test_all_with_arch_arm64_lists_the_store_oldest_first(tmp_path: Path, x86_64_host: Path) -> None:
    host_boot, host_modules = tmp_path / "boot", tmp_path / "modules"
    add_kernel(host_boot, host_modules, "6.1.0-57-amd64")  # the host's kernels are not arm64's
    arm64_store(x86_64_host, "6.1.0-57-arm64", "6.1.0-9-arm64", "6.12.48+deb13-arm64")
    expected = ["arm64:6.1.0-9-arm64", "arm64:6.1.0-57-arm64", "arm64:6.12.48+deb13-arm64"]
    assert expand_kernel_specs(("all",), host_boot, host_modules, arch="arm64") == expected
    assert expand_kernel_specs(("arm64:all",), host_boot, host_modules) == expected
    assert expand_kernel_specs((), host_boot, host_modules, arch="arm64") == ["arm64:"]


def test_all_with_arch_arm64_and_an_empty_store(tmp_path: Path, x86_64_host: Path) -> None:
    assert expand_kernel_specs(("all",), tmp_path / "b", tmp_path / "m", arch="arm64") == ["arm64:"]
    arm64_store(x86_64_host)  # the store exists, holds nothing
    assert expand_kernel_specs(("all",), tmp_path / "b", tmp_path / "m", arch="arm64") == ["arm64:"]


# --- resolve_foreign_kernel and resolve_kernel_spec ---------------------------------------------------------


def test_foreign_kernels_newest_first_with_their_arch(x86_64_host: Path) -> None:
    arm64_store(x86_64_host, "6.1.0-9-arm64", "6.1.0-57-arm64")
    found = foreign_kernels(ARM64)
    assert [k.spec for k in found] == ["arm64:6.1.0-57-arm64", "arm64:6.1.0-9-arm64"]
    assert all(k.arch == "arm64" and k.foreign for k in found)


def test_resolve_foreign_kernel_by_release_and_newest(x86_64_host: Path) -> None:
    store = arm64_store(x86_64_host, "6.1.0-9-arm64", "6.1.0-57-arm64")
    newest = resolve_foreign_kernel(ARM64, None)
    assert newest.release == "6.1.0-57-arm64" and newest.arch == "arm64"
    assert newest.image == store / "boot" / "vmlinuz-6.1.0-57-arm64"
    assert newest.build_dir == store / "lib" / "modules" / "6.1.0-57-arm64" / "build"
    assert resolve_foreign_kernel(ARM64, "6.1.0-9-arm64", x86_64_host).release == "6.1.0-9-arm64"


def test_resolve_foreign_kernel_missing_release_names_setup_and_what_is_there(x86_64_host: Path) -> None:
    store = arm64_store(x86_64_host, "6.1.0-9-arm64", "6.1.0-57-arm64")
    with pytest.raises(KernelNotFoundError) as e:
        resolve_foreign_kernel(ARM64, "6.1.0-99-arm64")
    msg = str(e.value)
    assert "python -m harness arch-setup arm64 --release 6.1.0-99-arm64" in msg
    assert "have: 6.1.0-57-arm64, 6.1.0-9-arm64" in msg
    assert str(store) in msg


def test_resolve_foreign_kernel_empty_store(x86_64_host: Path) -> None:
    with pytest.raises(KernelNotFoundError) as e:
        resolve_foreign_kernel(ARM64, None)
    msg = str(e.value)
    assert "python -m harness arch-setup arm64" in msg and "--release" not in msg
    assert "have: none" in msg


def test_resolve_foreign_kernel_refuses_a_path(x86_64_host: Path) -> None:
    with pytest.raises(KernelNotFoundError, match=r"named by release.*not by path: /boot/vmlinuz-x"):
        resolve_foreign_kernel(ARM64, "/boot/vmlinuz-x")


def test_resolve_kernel_spec_takes_an_arm64_profile_or_tree_to_a_build(tmp_path: Path, x86_64_host: Path) -> None:
    """arm64:debug, arm64:debug:TREE and arm64:TREE are cross-built here (tests/test_arm64_kernel_build.py); a
    path that is no kernel tree says so before anything is built."""
    with pytest.raises(KernelNotFoundError, match=r"debug:/src/linux: /src/linux is not a kernel source tree"):
        resolve_kernel_spec("arm64:debug:/src/linux", cache_root=x86_64_host, run=_no_build)
    tree = tmp_path / "linux"
    tree.mkdir()
    with pytest.raises(KernelNotFoundError, match=r"is a directory but not a kernel source tree"):
        resolve_kernel_spec(f"arm64:{tree}", cache_root=x86_64_host, run=_no_build)


def test_resolve_kernel_spec_arm64_release_from_the_store(x86_64_host: Path) -> None:
    arm64_store(x86_64_host, "6.1.0-57-arm64")
    k = resolve_kernel_spec("arm64:", cache_root=x86_64_host, run=_no_build)
    assert (k.release, k.arch, k.spec) == ("6.1.0-57-arm64", "arm64", "arm64:6.1.0-57-arm64")
    assert resolve_kernel_spec("arm64:6.1.0-57-arm64", cache_root=x86_64_host, run=_no_build) == k
    with pytest.raises(KernelNotFoundError, match=r"arch-setup arm64 --release 6\.2"):
        resolve_kernel_spec("arm64:6.2", cache_root=x86_64_host, run=_no_build)


def test_resolve_kernel_spec_host_prefix_goes_to_the_host_lookup(x86_64_host: Path) -> None:
    with pytest.raises(KernelNotFoundError, match=r"kernel release '0\.0\.0-knh-none' is not installed"):
        resolve_kernel_spec("x86_64:0.0.0-knh-none", cache_root=x86_64_host, run=_no_build)


def _no_build(*_: object, **__: object) -> None:
    raise AssertionError("nothing is built for a foreign spec")


def test_modules_dir_for_a_foreign_kernel(x86_64_host: Path) -> None:
    arm64_store(x86_64_host, "6.1.0-57-arm64")
    k = resolve_foreign_kernel(ARM64, None)
    assert modules_dir_for(k) is None  # not depmod'ed yet
    (k.build_dir.parent / "modules.dep").write_text("")
    assert modules_dir_for(k) == k.build_dir.parent


# --- the arch setting ---------------------------------------------------------------------------------------


def test_arch_setting_host_is_the_hosts_name(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = resolve({}, environ={}, ini={})
    assert cfg.arch == "x86_64" and cfg.sources["arch"] == "default"
    assert resolve({"arch": "host"}, environ={}, ini={}).arch == "x86_64"
    assert resolve({"arch": "arm64"}, environ={}, ini={}).arch == "arm64"
    assert resolve({}, environ={"KNH_ARCH": "arm64"}, ini={}).arch == "arm64"
    assert resolve({}, environ={}, ini={"knh_arch": "x86_64"}).arch == "x86_64"
    monkeypatch.setattr(platform, "machine", lambda: "aarch64")
    assert resolve({}, environ={"KNH_ARCH": "host"}, ini={}).arch == "arm64"


@pytest.mark.parametrize(
    ("options", "env", "ini", "source"),
    [
        ({"arch": "mips"}, {}, {}, "from option --arch"),
        ({}, {"KNH_ARCH": "aarch64"}, {}, "from environment variable KNH_ARCH"),
        ({}, {}, {"knh_arch": "amd64"}, "from ini key knh_arch"),
    ],
)
def test_arch_setting_bad_value_names_its_source(
    options: dict[str, str], env: dict[str, str], ini: dict[str, str], source: str
) -> None:
    with pytest.raises(ConfigError) as e:
        resolve(options, environ=env, ini=ini)
    assert source in str(e.value) and "invalid arch" in str(e.value) and "x86_64, arm64" in str(e.value)


# --- cross builds ----------------------------------------------------------------------------------------


def test_cross_variables_nothing_for_a_host_kernel() -> None:
    def which(name: str) -> str | None:
        raise AssertionError(f"no compiler looked up for a host kernel ({name})")

    assert cross_variables(HOST_K, which=which) == ()


def test_cross_variables_for_arm64() -> None:
    asked: list[str] = []

    def which(name: str) -> str | None:
        asked.append(name)
        return f"/usr/bin/{name}"

    assert cross_variables(arm64_kernel(), which=which) == ("ARCH=arm64", "CROSS_COMPILE=aarch64-linux-gnu-")
    assert asked == ["aarch64-linux-gnu-gcc"]


def test_cross_variables_for_x86_64_on_an_arm64_host(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(platform, "machine", lambda: "aarch64")
    assert HOST_K.foreign  # an x86_64 kernel is the foreign one there; make's ARCH is kbuild's name, x86
    assert cross_variables(HOST_K, which=lambda n: f"/usr/bin/{n}") == ("ARCH=x86", "CROSS_COMPILE=x86_64-linux-gnu-")
    assert cross_variables(arm64_kernel(), which=lambda n: None) == ()


def test_cross_variables_without_the_cross_compiler() -> None:
    with pytest.raises(MissingDependencyError) as e:
        cross_variables(arm64_kernel(), which=lambda _: None)
    assert e.value.install == "apt-get install gcc-aarch64-linux-gnu libc6-dev-arm64-cross"
    assert "aarch64-linux-gnu-gcc" in e.value.what


def test_guest_machine_is_dkms_arch() -> None:
    assert guest_machine(HOST_K) == "x86_64"
    assert guest_machine(arm64_kernel()) == "aarch64"


# --- the accelerator --------------------------------------------------------------------------------------


def _never_device() -> str | None:
    raise AssertionError("no /dev/kvm check for a foreign kernel")


def _never_probe(_: Path) -> ProbeResult:
    raise AssertionError("no KVM probe for a foreign kernel")


def test_choose_accel_foreign_auto_is_tcg_without_probing() -> None:
    d = choose_accel("auto", Path("/s/vmlinuz"), device_check=_never_device, probe=_never_probe, foreign=True)
    assert d.accel == "tcg" and "another architecture" in d.reason


def test_choose_accel_foreign_tcg_requested() -> None:
    d = choose_accel("tcg", Path("/s/vmlinuz"), device_check=_never_device, probe=_never_probe, foreign=True)
    assert (d.accel, d.reason) == ("tcg", "requested")


def test_choose_accel_foreign_kvm_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"KVM.*another architecture.*--accel auto or tcg"):
        choose_accel("kvm", Path("/s/vmlinuz"), device_check=_never_device, probe=_never_probe, foreign=True)


def test_choose_accel_host_kernel_still_probes() -> None:
    d = choose_accel("auto", Path("/b"), device_check=lambda: None, probe=lambda _: ProbeResult(True, "ok", 0.1))
    assert d.accel == "kvm"


# --- the guest's module tools -------------------------------------------------------------------------------


@pytest.fixture
def fresh_module_tool() -> object:
    module_tool.cache_clear()
    yield
    module_tool.cache_clear()


@pytest.mark.usefixtures("fresh_module_tool")
def test_module_tool_busybox_in_a_foreign_root(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "bin").mkdir(parents=True)
    (root / "bin" / "busybox").write_bytes(b"\x7fELF")
    assert module_tool("insmod", root) == ("/bin/busybox", "insmod")
    assert module_tool("rmmod", root) == ("/bin/busybox", "rmmod")


@pytest.mark.usefixtures("fresh_module_tool")
def test_module_tool_prefers_usr_bin(tmp_path: Path) -> None:
    root = tmp_path / "root"
    for d in ("bin", "usr/bin"):
        (root / d).mkdir(parents=True)
        (root / d / "busybox").write_bytes(b"")
    assert module_tool("insmod", root) == ("/usr/bin/busybox", "insmod")


@pytest.mark.usefixtures("fresh_module_tool")
def test_module_tool_without_busybox_in_the_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "root"
    (root / "bin").mkdir(parents=True)
    (root / "bin" / "busybox").mkdir()  # a directory is no program
    # the host's busybox says nothing about a foreign root
    monkeypatch.setattr("harness.guest.kernel_ops.shutil.which", lambda name: "/usr/bin/busybox")
    assert module_tool("insmod", root) == ("insmod",)


@pytest.mark.usefixtures("fresh_module_tool")
def test_module_tool_host_root_uses_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("harness.guest.kernel_ops.shutil.which", lambda name: "/usr/bin/busybox")
    assert module_tool("rmmod") == ("/usr/bin/busybox", "rmmod")
    module_tool.cache_clear()
    monkeypatch.setattr("harness.guest.kernel_ops.shutil.which", lambda name: None)
    assert module_tool("rmmod", Path("/")) == ("rmmod",)


# --- the session ------------------------------------------------------------------------------------------


def test_session_boots_a_foreign_kernel_with_the_qemu_engine(tmp_path: Path) -> None:
    said: list[str] = []
    session = KernelSession(HarnessConfig(engine="vng"), arm64_kernel(), tmp_path / "runs", notify=said.append)
    assert session.engine_name == "qemu" and session.engine_name == "qemu"
    assert len(said) == 1 and "arm64 guests boot with the qemu engine" in said[0]
    host = KernelSession(HarnessConfig(engine="vng"), HOST_K, tmp_path / "runs")
    assert host.engine_name == "vng"


def test_session_guest_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from harness.build import foreign
    from harness.config import PROJECT_ROOT

    made: list[str] = []

    def fake_make_root(arch: object, **_: object) -> Path:
        made.append(getattr(arch, "name", "?"))
        return tmp_path / "arm64-root"

    monkeypatch.setattr(foreign, "make_root", fake_make_root)
    host = KernelSession(HarnessConfig(), HOST_K, tmp_path / "runs")
    assert host.guest_root() == (Path("/"), ()) and made == []
    session = KernelSession(HarnessConfig(), arm64_kernel(), tmp_path / "runs")
    monkeypatch.chdir(tmp_path)
    assert session.guest_root() == (tmp_path / "arm64-root", (PROJECT_ROOT, tmp_path))
    monkeypatch.chdir(PROJECT_ROOT)
    assert session.guest_root() == (tmp_path / "arm64-root", (PROJECT_ROOT,))
    broken = tmp_path / "broken-scripts"  # tests/test_reliability.py's guest shell outside the project
    monkeypatch.setattr("harness.session.GUEST_SCRIPTS", broken)
    assert session.guest_root() == (tmp_path / "arm64-root", (PROJECT_ROOT, broken))
    assert made == ["arm64", "arm64", "arm64"]


def test_session_kernel_spec_of_a_foreign_kernel(tmp_path: Path) -> None:
    session = KernelSession(HarnessConfig(), arm64_kernel(), tmp_path / "runs")
    assert session.spec_for_reproduction == "arm64:6.1.0-57-arm64"


def test_arches_table_is_consistent() -> None:
    for name, a in arches.ARCHES.items():
        assert a.name == name and a.qemu.startswith("qemu-system-") and a.cross_compile.endswith("-")
    assert arches.ARCH_NAMES == ("x86_64", "arm64")


def test_a_foreign_root_runs_its_own_python(tmp_path: Path) -> None:
    """A guest program in an arm64 root runs on that root's python3, never on the host's interpreter (the
    example module's sender started the host's pyenv python there: exit 127)."""
    from harness.guest.vm import GuestLaunch, guest_python

    assert guest_python(tmp_path) == "/usr/bin/python3"
    launch = GuestLaunch(("qemu",), "knh-x", "6.1.0-57-arm64", "tcg", "qemu", root=tmp_path)
    assert launch.root == tmp_path
