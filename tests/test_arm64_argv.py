"""The qemu engine's command line for an arm64 guest: -M virt under TCG, the kernel console on the PL011
(ttyAMA0, a file), the shell on a virtio console (hvc0), the foreign root over 9p, virtio-mmio devices."""

from __future__ import annotations

import platform
from pathlib import Path

import pytest
from test_engines import launch as engines_launch  # tests/: the GuestSpec with the usual paths

from harness.arches import ARM64, X86_64
from harness.build.kernel import Kernel
from harness.errors import MissingDependencyError
from harness.guest.cmdline import QemuSpec, qemu_argv
from harness.guest.engines import GuestSpec, QemuEngine


@pytest.fixture(autouse=True)
def x86_64_host(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(platform, "machine", lambda: "x86_64")


ROOT = Path("/c/arch/arm64/root")


def arm64_spec(**kw: object) -> QemuSpec:
    base: dict[str, object] = dict(
        image=Path("/s/boot/vmlinuz-6.1.0-57-arm64"), initrd=Path("/c/initramfs.cpio"), accel="tcg",
        qemu="/usr/bin/qemu-system-aarch64", machine=ARM64.qemu_machine, tcg_cpu=ARM64.tcg_cpu,
        console=ARM64.console, kernel_console=ARM64.kernel_console, root=ROOT, kernel_log=Path("/r/k.log"),
        shell=Path("/g/sh"), rw_dirs=(Path("/r"),), fresh_dirs=(Path("/c"),), channel=Path("/t/ch.sock"),
        mapped_dirs=((Path("/work/main"), Path("/work/main")),),
    )  # fmt: skip
    base.update(kw)
    return QemuSpec(**base)  # type: ignore[arg-type]


def append_of(argv: list[str]) -> list[str]:
    return argv[argv.index("-append") + 1].split()


def pairs(argv: list[str], flag: str) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv) if a == flag]


def test_arm64_machine_cpu_and_no_vga() -> None:
    argv = qemu_argv(arm64_spec())
    assert argv[0] == "/usr/bin/qemu-system-aarch64"
    assert pairs(argv, "-M") == ["virt"]
    assert argv[argv.index("-accel") : argv.index("-accel") + 4] == ["-accel", "tcg", "-cpu", "max"]
    assert "-vga" not in argv
    assert "-nodefaults" in argv and "-no-reboot" in argv


def test_arm64_consoles() -> None:
    argv = qemu_argv(arm64_spec())
    assert pairs(argv, "-serial") == ["chardev:klog"]  # the one UART: the kernel console, a file
    assert "file,id=klog,path=/r/k.log" in pairs(argv, "-chardev")
    assert "stdio,id=con,signal=off" in pairs(argv, "-chardev")
    devices = pairs(argv, "-device")
    assert "virtio-serial-device,id=knhcon" in devices
    assert "virtconsole,bus=knhcon.0,chardev=con" in devices  # the shell on hvc0
    assert not any(d.startswith("isa-serial") for d in devices)
    append = append_of(argv)
    assert append[0] == "console=ttyAMA0" and "console=ttyS1" not in append
    assert "knh.tty=hvc0" in append and "knh.shell=/g/sh" in append


def test_arm64_root_and_shared_dirs_over_9p() -> None:
    argv = qemu_argv(arm64_spec())
    fsdevs = pairs(argv, "-fsdev")
    assert fsdevs[0] == f"local,id=hostroot,path={ROOT},security_model=none,readonly=on,multidevs=remap"
    assert "local,id=knhmap0,path=/work/main,security_model=none,readonly=on,multidevs=remap" in fsdevs
    assert "knh.map=/work/main" in append_of(argv)
    assert not any(",path=/," in f for f in fsdevs)  # the host's own root is not shared


def test_arm64_data_channel_on_virtio_mmio() -> None:
    devices = pairs(qemu_argv(arm64_spec()), "-device")
    assert "virtio-serial-device,id=knhser" in devices and "virtio-serial-pci,id=knhser" not in devices
    assert "virtserialport,bus=knhser.0,chardev=knhch,name=knh.0" in devices
    assert all("pci" not in d for d in devices)  # -M virt here: every device on virtio-mmio


def test_arm64_no_tsc_arguments() -> None:
    append = append_of(qemu_argv(arm64_spec()))
    assert not any(a.startswith(("tsc_early_khz", "tsc=")) for a in append)


def test_x86_spec_keeps_its_consoles() -> None:
    spec = QemuSpec(image=Path("/c/vmlinux"), accel="tcg", kernel_log=Path("/r/k.log"), shell=Path("/g/sh"))
    argv = qemu_argv(spec)
    append = append_of(argv)
    assert append[0] == "console=ttyS1" and "knh.tty=ttyS0" in append
    assert pairs(argv, "-serial") == ["chardev:con"]
    assert "isa-serial,chardev=klog,index=1" in pairs(argv, "-device")
    assert "-vga" in argv and "virtconsole,bus=knhcon.0,chardev=con" not in argv
    assert pairs(argv, "-fsdev")[0].startswith("local,id=hostroot,path=/,")


def test_bare_arm64_boot_without_kernel_log() -> None:
    spec = QemuSpec(image=Path("/s/Image"), accel="tcg", qemu="qemu-system-aarch64", name=None,
                    machine="virt", console="hvc0", kernel_console="ttyAMA0", kernel_args=("panic=-1",))  # fmt: skip
    assert qemu_argv(spec) == [
        "qemu-system-aarch64", "-M", "virt", "-accel", "tcg", "-cpu", "max", "-m", "1G", "-smp", "2",
        "-nodefaults", "-no-reboot", "-display", "none", "-net", "none",
        "-chardev", "stdio,id=con,signal=off", "-serial", "chardev:con",
        "-kernel", "/s/Image", "-append", "console=ttyAMA0 panic=-1",
    ]  # fmt: skip


# --- the engine ---------------------------------------------------------------------------------------------

K_ARM = Kernel("6.1.0-57-arm64", Path("/s/boot/vmlinuz-6.1.0-57-arm64"), Path("/s/lib/modules/6.1.0-57-arm64/build"),
               arch="arm64")  # fmt: skip
K_X86 = Kernel("6.1.0-57-amd64", Path("/boot/vmlinuz-6.1.0-57-amd64"), Path("/lib/modules/6.1.0-57-amd64/build"))


def engine(asked: list[str], *, have: tuple[str, ...] = ("qemu-system-aarch64", "qemu-system-x86_64")) -> QemuEngine:
    def which(name: str) -> str | None:
        asked.append(f"which {name}")
        return f"/usr/bin/{name}" if name in have else None

    def vmlinux(kernel: Kernel, cache: Path) -> Path | None:
        asked.append("vmlinux")
        return cache / "vmlinux"

    def tsc() -> int | None:
        asked.append("tsc")
        return 2_994_000

    return QemuEngine(which=which, vmlinux=vmlinux, tsc_khz=tsc,
                      initramfs=lambda kernel, init, cache: cache / f"initramfs-{kernel.release}.cpio",
                      kernel_config=lambda kernel: {})  # fmt: skip


def launch(tmp_path: Path, kernel: Kernel, **kw: object) -> GuestSpec:
    return engines_launch(tmp_path, kernel=kernel, **kw)


def test_qemu_engine_spec_for_arm64(tmp_path: Path) -> None:
    asked: list[str] = []
    g = launch(tmp_path, K_ARM, root=ROOT, shared_dirs=(Path("/work/main"),))
    spec = engine(asked).spec(g)
    assert asked == ["which qemu-system-aarch64"]  # neither the vmlinux (PVH, x86 only) nor the TSC
    assert spec.qemu == "/usr/bin/qemu-system-aarch64"
    assert (spec.machine, spec.tcg_cpu, spec.console, spec.kernel_console) == ("virt", "max", "hvc0", "ttyAMA0")
    assert spec.image == K_ARM.image and spec.tsc_khz is None
    assert spec.initrd == Path("/c/initramfs-6.1.0-57-arm64.cpio")
    assert spec.root == ROOT and spec.mapped_dirs == ((Path("/work/main"), Path("/work/main")),)
    assert spec.kernel_log is not None and spec.kernel_log.parent == tmp_path / "run" and g.run_dir.is_dir()
    argv = qemu_argv(spec)
    assert pairs(argv, "-M") == ["virt"] and "console=ttyAMA0" in append_of(argv)


def test_qemu_engine_spec_for_x86_is_unchanged(tmp_path: Path) -> None:
    asked: list[str] = []
    spec = engine(asked).spec(launch(tmp_path, K_X86))
    assert asked == ["which qemu-system-x86_64", "vmlinux", "tsc"]
    assert (spec.machine, spec.console, spec.kernel_console, spec.root) == ("microvm", "ttyS0", "ttyS1", Path("/"))
    assert spec.image == Path("/c/vmlinux") and spec.tsc_khz == 2_994_000


def test_qemu_engine_arm64_without_its_qemu(tmp_path: Path) -> None:
    with pytest.raises(MissingDependencyError) as e:
        engine([], have=("qemu-system-x86_64",)).spec(launch(tmp_path, K_ARM))
    assert e.value.install == "apt-get install qemu-system-arm" and e.value.what == "qemu-system-aarch64"


def test_mapped_dirs_with_shared_dirs(tmp_path: Path) -> None:
    assert launch(tmp_path, K_ARM).mapped_dirs == ()
    shared = launch(tmp_path, K_ARM, shared_dirs=(Path("/work/main"), Path("/home/u/w")))
    assert shared.mapped_dirs == ((Path("/work/main"), Path("/work/main")), (Path("/home/u/w"), Path("/home/u/w")))
    both = launch(tmp_path, K_ARM, shared_dirs=(Path("/work/main"),), tree_modules=Path("/c/mods"))
    assert both.mapped_dirs == (
        (Path("/work/main"), Path("/work/main")),
        (Path("/lib/modules/6.1.0-57-arm64"), Path("/c/mods")),
    )
    tree_only = launch(tmp_path, K_X86, tree_modules=Path("/c/mods"))
    assert tree_only.mapped_dirs == ((Path("/lib/modules/6.1.0-57-amd64"), Path("/c/mods")),)


def test_arch_data_used_by_the_engine() -> None:
    assert (X86_64.qemu, X86_64.qemu_machine, X86_64.console, X86_64.kernel_console) == (
        "qemu-system-x86_64", "microvm", "ttyS0", "ttyS1",
    )  # fmt: skip
    assert (ARM64.qemu, ARM64.qemu_package, ARM64.qemu_machine) == ("qemu-system-aarch64", "qemu-system-arm", "virt")
