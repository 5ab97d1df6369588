"""Engines: one interface, one registry keyed by the configured names, argv from a launch spec."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest

from harness.build.kernel import Kernel
from harness.config import ENGINES, GUEST_SCRIPTS, HarnessConfig
from harness.errors import ConfigError, MissingDependencyError
from harness.guest import engines
from harness.guest.engines import REGISTRY, GuestSpec, QemuEngine, VngEngine, engine_for, under_usr
from harness.session import KernelSession

K = Kernel("6.1.0-56-amd64", Path("/boot/vmlinuz-6.1.0-56-amd64"), Path("/lib/modules/6.1.0-56-amd64/build"))


def launch(tmp_path: Path, **kw: object) -> GuestSpec:
    base: dict[str, object] = dict(
        kernel=K, name="knh-1", accel="tcg", run_dir=tmp_path / "run", shell=Path("/g/guest-shell"),
        cache=Path("/c"), rw_dirs=(Path("/r"),), channel=Path("/tmp/x/ch.sock"), cwd=Path("/w"),
    )  # fmt: skip
    base.update(kw)
    return GuestSpec(**base)  # type: ignore[arg-type]


def vng_engine(vmlinux: Path | None = Path("/c/vmlinux"), prefixes: tuple[Path, ...] = ()) -> VngEngine:
    return VngEngine(executable=lambda: "/venv/bin/vng", vmlinux=lambda kernel, cache: vmlinux,
                     cached_prefixes=lambda: prefixes)  # fmt: skip


def qemu_engine(
    vmlinux: Path | None = Path("/c/vmlinux"), qemu: str | None = "/usr/bin/qemu-system-x86_64"
) -> QemuEngine:
    return QemuEngine(
        which=lambda name: qemu if name == "qemu-system-x86_64" else None,
        vmlinux=lambda kernel, cache: vmlinux,
        initramfs=lambda kernel, init, cache: cache / f"initramfs-{kernel.release}.cpio",
        tsc_khz=lambda: 2_994_000,
    )


def test_registry_keys_are_the_configured_engine_names() -> None:
    assert tuple(REGISTRY) == ENGINES
    assert all(engine.name == name for name, engine in REGISTRY.items())


def test_unknown_engine_names_the_known_ones() -> None:
    assert engine_for("qemu") is REGISTRY["qemu"]
    with pytest.raises(ConfigError, match="unknown engine 'kvmtool': use one of vng, qemu"):
        engine_for("kvmtool")


def test_vng_engine_argv_from_a_launch_spec(tmp_path: Path) -> None:
    argv = vng_engine().argv(launch(tmp_path))
    append = argv[argv.index("--append") + 1]
    assert argv[: argv.index("--append")] == [
        "/venv/bin/vng", "--run", "/c/vmlinux", "--name", "knh-1", "--memory", "1G", "--cpus", "2",
        "--shell", "/g/guest-shell", "--force-9p",
    ]  # fmt: skip
    assert append.startswith("panic=-1 loglevel=5 log_buf_len=8M rcupdate.rcu_expedited=1")
    assert "module_blacklist=" in append
    assert argv[argv.index("--append") + 2 :] == [
        "--qemu-opts=-no-reboot", "--disable-kvm", "--rwdir", "/r",
        "--qemu-opts=-device", "--qemu-opts=virtio-serial-pci,id=knhser",
        "--qemu-opts=-chardev", "--qemu-opts=socket,id=knhch,path=/tmp/x/ch.sock,server=on,wait=off",
        "--qemu-opts=-device", "--qemu-opts=virtserialport,bus=knhser.0,chardev=knhch,name=knh.0",
        "--qemu-opts=-fsdev",
        "--qemu-opts=local,id=knhusr,path=/usr,security_model=none,readonly=on,multidevs=remap",
        "--qemu-opts=-device", "--qemu-opts=virtio-9p-pci,fsdev=knhusr,mount_tag=knhusr",
    ]  # fmt: skip
    assert "knh.usr=knhusr" in append.split()


def test_vng_engine_without_the_cached_usr_shares_nothing_more(tmp_path: Path) -> None:
    argv = dataclasses.replace(vng_engine(), cached_usr=False).argv(launch(tmp_path))
    assert not any("knhusr" in a for a in argv)
    assert not any(a.startswith("knh.usr=") for a in argv[argv.index("--append") + 1].split())


@pytest.mark.parametrize("shared", ["rw", "mapped"])
def test_vng_engine_leaves_the_cached_usr_out_when_a_shared_directory_is_under_usr(tmp_path: Path,
                                                                                     shared: str) -> None:  # fmt: skip
    """The cached /usr is mounted over /usr after virtme-ng's own mounts: a directory shared below it would be
    hidden (a tree kernel's modules at /lib/modules/<release>, which is /usr/lib/modules on a merged-/usr host)."""
    inside = {"rw": {"rw_dirs": (Path("/usr/src/results"),)},
              "mapped": {"tree_modules": Path("/m/lib/modules/x")}}[shared]
    if shared == "mapped" and not under_usr(Path("/lib/modules")):
        pytest.skip("/lib is not /usr/lib on this host")
    argv = vng_engine().argv(launch(tmp_path, **inside))
    assert not any("knhusr" in a for a in argv)
    assert "knhusr" in " ".join(vng_engine().argv(launch(tmp_path)))  # outside /usr: shared


def test_vng_engine_shares_the_harness_python_again_cached_at_its_own_paths(tmp_path: Path) -> None:
    """A pyenv interpreter and a virtual environment outside /usr: two more cached shares, knhcache0 and
    knhcache1, named in order by knh.cache= for guest-shell."""
    argv = vng_engine(prefixes=(Path("/opt/pyenv/3.11"), Path("/p/.venv"))).argv(launch(tmp_path, cwd=Path("/p")))
    assert "knh.cache=/opt/pyenv/3.11,/p/.venv" in argv[argv.index("--append") + 1].split()
    opts = [a.removeprefix("--qemu-opts=") for a in argv if a.startswith("--qemu-opts=")]
    assert "local,id=knhcache0,path=/opt/pyenv/3.11,security_model=none,readonly=on,multidevs=remap" in opts
    assert "virtio-9p-pci,fsdev=knhcache1,mount_tag=knhcache1" in opts
    assert "local,id=knhcache1,path=/p/.venv,security_model=none,readonly=on,multidevs=remap" in opts


def test_vng_engine_shares_no_python_directory_whose_path_the_guest_shell_would_split_or_expand(
        tmp_path: Path) -> None:  # fmt: skip
    prefixes = (Path("/opt/py,3"), Path("/opt/py[3]"), Path("/opt/py*"), Path("/opt/py 3"), Path("/opt/py3"))
    argv = vng_engine(prefixes=prefixes).argv(launch(tmp_path))
    assert "knh.cache=/opt/py3" in argv[argv.index("--append") + 1].split()
    assert [a for a in argv if "id=knhcache" in a] == [
        "--qemu-opts=local,id=knhcache0,path=/opt/py3,security_model=none,readonly=on,multidevs=remap"]


@pytest.mark.parametrize(("prefix", "why"), [
    ("/", "the root"), ("/usr", "the cached /usr has it"), ("/usr/lib/python3", "the cached /usr has it"),
    ("/c", "the harness cache"), ("/w/..", "holds the working directory"),
    ("/r/venv", "inside a shared directory"), ("/r", "a shared directory"), ("/w", "the working directory"),
])  # fmt: skip
def test_vng_engine_caches_no_python_directory_that_the_host_writes_or_that_hides_a_share(
        tmp_path: Path, prefix: str, why: str) -> None:  # fmt: skip
    argv = vng_engine(prefixes=(Path(os.path.realpath(prefix)),)).argv(launch(tmp_path))
    assert not any("knhcache" in a or a.startswith("knh.cache=") for a in " ".join(argv).split()), why


def test_the_default_python_directories_are_the_interpreters_installation_and_environment() -> None:
    import sys

    assert engines.python_prefixes() == tuple(dict.fromkeys(
        Path(os.path.realpath(p)) for p in (sys.base_prefix, sys.prefix)))  # fmt: skip
    assert VngEngine().cached_prefixes is engines.python_prefixes


def test_vng_engine_puts_its_boot_tools_on_inits_path(tmp_path: Path) -> None:
    engine = vng_engine()
    assert engine.boot_path == GUEST_SCRIPTS / "vng_boot"
    tools = sorted(p.name for p in engine.boot_path.iterdir() if os.access(p, os.X_OK))
    assert tools == ["systemd-tmpfiles", "udevadm"]
    append = engine.argv(launch(tmp_path))
    assert f"PATH={GUEST_SCRIPTS / 'vng_boot'}:" in append[append.index("--append") + 1]
    without = dataclasses.replace(engine, boot_path=None).argv(launch(tmp_path))
    assert "PATH=" not in without[without.index("--append") + 1]


def test_vng_engine_boots_the_bzimage_without_a_vmlinux_and_maps_tree_modules(tmp_path: Path) -> None:
    argv = vng_engine(vmlinux=None).argv(launch(tmp_path, accel="kvm", tree_modules=Path("/m/lib/modules/x")))
    assert argv[argv.index("--run") + 1] == "/boot/vmlinuz-6.1.0-56-amd64"
    assert "--disable-kvm" not in argv
    assert "--rodir=/lib/modules/6.1.0-56-amd64=/m/lib/modules/x" in argv


def test_qemu_engine_argv_from_a_launch_spec(tmp_path: Path) -> None:
    spec = launch(tmp_path, tree_modules=Path("/m/lib/modules/x"))
    argv = qemu_engine().argv(spec)
    assert argv[:9] == ["/usr/bin/qemu-system-x86_64", "-name", "knh-1", "-M", "microvm",
                        "-accel", "tcg", "-cpu", "max"]  # fmt: skip
    assert argv[argv.index("-kernel") + 1 : argv.index("-append")] == [
        "/c/vmlinux", "-initrd", "/c/initramfs-6.1.0-56-amd64.cpio"]  # fmt: skip
    assert f"file,id=klog,path={tmp_path}/run/kernel.log" in argv and (tmp_path / "run").is_dir()
    assert "local,id=knhro0,path=/c,security_model=none,readonly=on,multidevs=remap" in argv  # the cache, uncached
    assert "local,id=knhmap0,path=/m/lib/modules/x,security_model=none,readonly=on,multidevs=remap" in argv
    assert "virtio-serial-device,id=knhser" in argv
    append = argv[argv.index("-append") + 1].split()
    assert append[:2] == ["console=ttyS1", "rdinit=/init"] and "tsc_early_khz=2994000" in append
    assert {"knh.shell=/g/guest-shell", "knh.cwd=/w", "knh.rw=/r", "knh.fresh=/c",
            "knh.map=/lib/modules/6.1.0-56-amd64"} <= set(append)  # fmt: skip


def test_qemu_engine_boots_the_bzimage_without_a_vmlinux(tmp_path: Path) -> None:
    argv = qemu_engine(vmlinux=None).argv(launch(tmp_path, accel="kvm"))
    assert argv[argv.index("-kernel") + 1] == "/boot/vmlinuz-6.1.0-56-amd64"
    assert ["-accel", "kvm", "-cpu", "host"] == argv[5:9]
    assert "tsc_early_khz" not in argv[argv.index("-append") + 1]


def test_qemu_engine_without_qemu_says_how_to_install_it(tmp_path: Path) -> None:
    with pytest.raises(MissingDependencyError, match="apt-get install qemu-system-x86"):
        qemu_engine(qemu=None).argv(launch(tmp_path))


@dataclasses.dataclass
class RecordingEngine:
    name: str
    seen: list[GuestSpec] = dataclasses.field(default_factory=list)

    def argv(self, spec: GuestSpec) -> list[str]:
        self.seen.append(spec)
        return [f"boot-with-{self.name}", spec.name]


@pytest.mark.parametrize("name", ENGINES)
def test_session_launch_goes_through_the_registry(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fakes = {n: RecordingEngine(n) for n in ENGINES}
    monkeypatch.setattr(engines, "REGISTRY", fakes)
    cfg = HarnessConfig(accel="tcg", engine=name, results_dir=tmp_path / "results", memory="2G", cpus=3)
    result = KernelSession(cfg, K, tmp_path / "runs").launch("knh-7", tmp_path / "runs" / "knh-7")
    assert (result.argv, result.engine, result.accel) == ((f"boot-with-{name}", "knh-7"), name, "tcg")
    (spec,) = fakes[name].seen
    assert (spec.kernel, spec.accel, spec.memory, spec.cpus) == (K, "tcg", "2G", 3)
    assert spec.rw_dirs == ((tmp_path / "results").resolve(),) and spec.channel == result.channel
    assert not any(fake.seen for n, fake in fakes.items() if n != name)


def test_doctor_says_whether_vng_guests_skip_the_coldplug(monkeypatch: pytest.MonkeyPatch) -> None:
    from harness.cli import doctor

    assert doctor._vng_boot_path().ok
    monkeypatch.setattr(doctor, "VngEngine", lambda: VngEngine(boot_path=Path("/opt/my harness/vng_boot")))
    check = doctor._vng_boot_path()
    assert not check.ok and not check.required and "coldplug" in check.detail and "blanks" in check.fix
