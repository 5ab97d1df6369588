import os
import shutil
import subprocess
from pathlib import Path

import pytest

from harness.build.kernel import Kernel
from harness.config import GUEST_SCRIPTS
from harness.guest.cmdline import (
    BASE_KERNEL_ARGS,
    INIT_PATH_TAIL,
    QemuSpec,
    VngSpec,
    channel_qemu_args,
    qemu_argv,
    shell_join,
    vng_argv,
)

K = Kernel("6.1.0-56-amd64", Path("/boot/vmlinuz-6.1.0-56-amd64"), Path("/lib/modules/6.1.0-56-amd64/build"))


def spec(**kw: object) -> VngSpec:
    base = dict(kernel=K, accel="tcg", shell=Path("/g/guest-shell"), rw_dirs=(Path("/r"),), name="knh-1")
    base.update(kw)
    return VngSpec(**base)  # type: ignore[arg-type]


def qemu_spec(**kw: object) -> QemuSpec:
    base = dict(image=Path("/c/vmlinux"), initrd=Path("/c/i.cpio"), accel="tcg", shell=Path("/g/sh"),
                rw_dirs=(Path("/r"),), fresh_dirs=(), kernel_log=Path("/r/k.log"),
                channel=Path("/tmp/ch.sock"))  # fmt: skip
    base.update(kw)
    return QemuSpec(**base)  # type: ignore[arg-type]


def test_tcg_argv_is_exact() -> None:
    assert vng_argv(spec(blacklist=())) == [
        "vng", "--run", "/boot/vmlinuz-6.1.0-56-amd64", "--name", "knh-1", "--memory", "1G", "--cpus", "2",
        "--shell", "/g/guest-shell", "--force-9p", "--append",
        "panic=-1 loglevel=5 log_buf_len=8M rcupdate.rcu_expedited=1",
        "--qemu-opts=-no-reboot", "--disable-kvm", "--rwdir", "/r",
    ]  # fmt: skip


def test_kvm_argv_does_not_disable_kvm() -> None:
    argv = vng_argv(spec(accel="kvm"))
    assert "--disable-kvm" not in argv
    assert "--qemu-opts=-no-reboot" in argv


def test_every_rw_dir_is_passed() -> None:
    argv = vng_argv(spec(rw_dirs=(Path("/a"), Path("/b c"))))
    assert argv[-4:] == ["--rwdir", "/a", "--rwdir", "/b c"]


def test_panic_ends_the_guest() -> None:
    assert "panic=-1" in BASE_KERNEL_ARGS


def test_shell_join_quotes_metacharacters() -> None:
    assert shell_join(["echo", "a b", "$(x)", "it's"]) == "echo 'a b' '$(x)' 'it'\"'\"'s'"


def test_blacklist_and_image_override() -> None:
    argv = vng_argv(spec(blacklist=("kvm", "ahci"), image=Path("/c/vmlinux")))
    assert argv[argv.index("--run") + 1] == "/c/vmlinux"
    assert argv[argv.index("--append") + 1] == " ".join([*BASE_KERNEL_ARGS, "module_blacklist=kvm,ahci"])


def test_boot_path_goes_first_on_the_path_of_vngs_init() -> None:
    argv = vng_argv(spec(blacklist=(), boot_path=Path("/g/vng_boot")))
    assert argv[argv.index("--append") + 1] == (
        "panic=-1 loglevel=5 log_buf_len=8M rcupdate.rcu_expedited=1 PATH=/g/vng_boot:/usr/sbin:/usr/bin:/sbin:/bin"
    )


@pytest.mark.parametrize("path", ["/g h/vng_boot", "/g:h/vng_boot", "/g'h/vng_boot", "g/vng_boot"])
def test_a_boot_path_the_kernel_command_line_cannot_carry_is_left_out(path: str) -> None:
    argv = vng_argv(spec(boot_path=Path(path)))
    assert "PATH=" not in argv[argv.index("--append") + 1]


VIRTME_INIT_DEFAULT_PATH = "/run/current-system/sw/bin:/bin:/sbin:/usr/bin:/usr/sbin:/usr/local/bin"


def guest_shell_path(path: str) -> str:
    """The PATH that guest_scripts/guest-shell's bash sees when started with `path`."""
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("no bash")
    proc = subprocess.run(["/bin/sh", str(GUEST_SCRIPTS / "guest-shell")], input='printf %s "$PATH"\n', text=True,
                          capture_output=True, env={**os.environ, "PATH": path}, timeout=30, check=True)  # fmt: skip
    return proc.stdout


def test_guest_shell_mounts_nothing_without_knh_usr_on_the_command_line() -> None:
    """guest-shell runs here on the host (its /proc/cmdline has no knh.usr=): no mount is tried, nothing printed."""
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("no bash")
    proc = subprocess.run(["/bin/sh", str(GUEST_SCRIPTS / "guest-shell")], input="echo done\n", text=True,
                          capture_output=True, timeout=30, check=True)  # fmt: skip
    assert (proc.stdout, proc.stderr) == ("done\n", "")


def test_guest_shell_takes_inits_boot_path_off_again() -> None:
    argv = vng_argv(spec(boot_path=GUEST_SCRIPTS / "vng_boot"))
    init_path = next(a for a in argv[argv.index("--append") + 1].split() if a.startswith("PATH=")).removeprefix("PATH=")
    # virtme-ng's init appends its own default PATH to the one it was given
    assert guest_shell_path(f"{init_path}:{VIRTME_INIT_DEFAULT_PATH}") == VIRTME_INIT_DEFAULT_PATH
    assert guest_shell_path("/usr/bin:/bin") == "/usr/bin:/bin"  # the qemu engine's fast-init: untouched


def test_vng_boot_udevadm_skips_only_the_coldplug_and_the_settle() -> None:
    udevadm = GUEST_SCRIPTS / "vng_boot" / "udevadm"
    for args in (["trigger", "--type=devices", "--action=add"], ["settle", "--timeout=300"]):
        proc = subprocess.run([str(udevadm), *args], capture_output=True, text=True, timeout=30, check=False)
        assert (proc.returncode, proc.stdout, proc.stderr) == (0, "", ""), args
    real = next((p for p in ("/usr/bin/udevadm", "/bin/udevadm", "/usr/sbin/udevadm", "/sbin/udevadm")
                 if os.access(p, os.X_OK)), None)  # fmt: skip
    if real is None:
        pytest.skip("no udevadm on this host to pass other commands to")
    ours = subprocess.run([str(udevadm), "--version"], capture_output=True, text=True, timeout=30, check=False)
    theirs = subprocess.run([real, "--version"], capture_output=True, text=True, timeout=30, check=False)
    assert ours.returncode == theirs.returncode == 0 and ours.stdout == theirs.stdout != ""


def test_vng_boot_systemd_tmpfiles_only_opens_tmp_and_run_lock_to_everyone(tmp_path: Path) -> None:
    log = tmp_path / "calls"
    for tool in ("mkdir", "chmod"):  # stand-ins that record their arguments instead of touching the host
        (tmp_path / tool).write_text(f'#!/bin/sh\necho {tool} "$@" >> {log}\n')
        (tmp_path / tool).chmod(0o755)
    tool = GUEST_SCRIPTS / "vng_boot" / "systemd-tmpfiles"
    proc = subprocess.run(["/bin/sh", str(tool), "--create", "--boot", "--exclude-prefix=/dev"], capture_output=True,
                          text=True, timeout=30, check=False, env={"PATH": str(tmp_path)})  # fmt: skip
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "", "")
    assert log.read_text().splitlines() == ["mkdir -p /run/lock", "chmod 1777 /tmp /run/lock"]
    assert INIT_PATH_TAIL.split(":")[-1] == "/bin"  # the initramfs's busybox applets are found after it


def test_qemu_engine_argv() -> None:
    argv = qemu_argv(qemu_spec(fresh_dirs=(Path("/c"),), channel=Path("/tmp/x/ch.sock"), name="knh-2"))
    assert argv[:4] == ["qemu-system-x86_64", "-name", "knh-2", "-M"]
    assert ["-accel", "tcg", "-cpu", "max"] == argv[5:9]
    assert "-no-reboot" in argv and "file,id=klog,path=/r/k.log" in argv
    assert "isa-serial,chardev=klog,index=1" in argv  # ttyS1: microvm makes only ttyS0 from -serial
    assert "local,id=knhrw0,path=/r,security_model=none,multidevs=remap" in argv
    assert "local,id=knhro0,path=/c,security_model=none,readonly=on,multidevs=remap" in argv
    assert "socket,id=knhch,path=/tmp/x/ch.sock,server=on,wait=off" in argv
    append = argv[argv.index("-append") + 1].split()
    assert append[:2] == ["console=ttyS1", "rdinit=/init"]
    assert {"panic=-1", "knh.shell=/g/sh", "knh.rw=/r", "knh.fresh=/c"} <= set(append)


def test_qemu_engine_is_microvm_with_mmio_devices_and_an_early_clock_under_tcg() -> None:
    tcg, kvm = (qemu_argv(qemu_spec(accel=accel, tsc_khz=2_994_000)) for accel in ("tcg", "kvm"))
    assert tcg[tcg.index("-M") + 1] == "microvm"
    devices = [tcg[i + 1].split(",")[0] for i, a in enumerate(tcg) if a == "-device"]
    assert devices == ["isa-serial", "virtio-9p-device", "virtio-9p-device", "virtio-serial-device", "virtserialport"]
    assert {"tsc_early_khz=2994000", "tsc=reliable"} <= set(tcg[tcg.index("-append") + 1].split())
    # KVM has kvm-clock; the host's "cpu MHz" figure is only a stand-in for TCG
    assert "tsc_early_khz" not in kvm[kvm.index("-append") + 1] and "tsc=reliable" not in kvm[kvm.index("-append") + 1]


def test_host_tsc_khz(tmp_path: Path) -> None:
    from harness.guest.accel import host_tsc_khz

    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: x\ncpu MHz\t\t: 2994.374\n")
    assert host_tsc_khz(cpuinfo) == 2_994_374
    cpuinfo.write_text("processor\t: 0\n")
    assert host_tsc_khz(cpuinfo) is None
    assert host_tsc_khz(tmp_path / "missing") is None


def test_commas_in_host_paths_are_escaped_for_qemu() -> None:
    argv = qemu_argv(qemu_spec(rw_dirs=(Path("/r,1"),), kernel_log=Path("/r,1/k.log"), channel=Path("/t,x/ch.sock")))
    assert "file,id=klog,path=/r,,1/k.log" in argv
    assert "local,id=knhrw0,path=/r,,1,security_model=none,multidevs=remap" in argv
    assert "socket,id=knhch,path=/t,,x/ch.sock,server=on,wait=off" in argv


def test_vng_channel_and_mapped_dirs() -> None:
    argv = vng_argv(spec(channel=Path("/t/ch.sock"), mapped_dirs=((Path("/lib/modules/r"), Path("/m")),),
                         extra_args=("--verbose",)))  # fmt: skip
    opts = [a.removeprefix("--qemu-opts=") for a in argv if a.startswith("--qemu-opts=")]
    assert opts == ["-no-reboot", *channel_qemu_args(Path("/t/ch.sock"), transport="pci")]
    assert argv[-2:] == ["--rodir=/lib/modules/r=/m", "--verbose"]


def test_a_bare_qemu_boot_leaves_out_shell_dirs_channel_and_initramfs() -> None:
    argv = qemu_argv(QemuSpec(image=Path("/c/vmlinux"), accel="tcg", name=None, kernel_args=("panic=-1",)))
    assert argv == [
        "qemu-system-x86_64", "-M", "microvm", "-accel", "tcg", "-cpu", "max", "-m", "1G", "-smp", "2",
        "-nodefaults", "-no-reboot", "-display", "none", "-vga", "none", "-net", "none",
        "-chardev", "stdio,id=con,signal=off", "-serial", "chardev:con",
        "-kernel", "/c/vmlinux", "-append", "console=ttyS0 panic=-1",
    ]  # fmt: skip


def test_qemu_default_machine_takes_the_channel_on_pci() -> None:
    argv = qemu_argv(qemu_spec(machine=None, channel=Path("/t/ch.sock")))
    assert "-M" not in argv and "virtio-serial-pci,id=knhser" in argv


def test_shared_dirs_need_a_shell() -> None:
    with pytest.raises(ValueError, match="guest shell"):
        QemuSpec(image=Path("/c/vmlinux"), accel="tcg", rw_dirs=(Path("/r"),))


def test_one_place_knows_qemus_machine_options() -> None:
    """The KVM probe, the benchmark's raw boot and the qemu engine share qemu_argv; the machine names are
    the architecture table's data (harness/arches.py), which writes no option."""
    harness = Path(__file__).resolve().parent.parent / "harness"
    writers = sorted(
        str(p.relative_to(harness))
        for p in harness.rglob("*.py")
        if any(opt in p.read_text() for opt in ('"-nodefaults"', '"-accel"', '"-serial"', '"-M"'))
    )
    assert writers == ["guest/cmdline.py"]
    machines = sorted(str(p.relative_to(harness)) for p in harness.rglob("*.py") if '"microvm"' in p.read_text())
    assert machines == ["arches.py"]


def test_argv_reads_neither_the_environment_nor_the_kernel_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The builders are pure: a kernel whose .config has KFENCE and SLUB debugging switched off, and
    KNH_MEMORY_DEBUG=all, change nothing; the memory-debug arguments are the caller's input."""
    build = tmp_path / "build"
    build.mkdir()
    (build / ".config").write_text("CONFIG_KFENCE=y\nCONFIG_KFENCE_SAMPLE_INTERVAL=0\nCONFIG_SLUB_DEBUG=y\n")
    configured = Kernel(K.release, K.image, build)
    monkeypatch.setenv("KNH_MEMORY_DEBUG", "all")
    vng = vng_argv(spec(kernel=configured, blacklist=()))
    assert vng[vng.index("--append") + 1] == "panic=-1 loglevel=5 log_buf_len=8M rcupdate.rcu_expedited=1"
    qemu = qemu_argv(qemu_spec(shell=None, rw_dirs=()))
    assert qemu[qemu.index("-append") + 1] == " ".join(["console=ttyS1", "rdinit=/init", *BASE_KERNEL_ARGS])
