"""harness.build.memdebug: which kernel arguments turn on a stock kernel's built-in memory-error detectors;
the one reader of a kernel's configuration (harness.build.config_items) that decides them; and the path from
the memory_debug setting to both engines' command lines."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from harness.build.config_items import config_path, read_config, read_kernel_config
from harness.build.kernel import Kernel
from harness.build.memdebug import memory_debug_args
from harness.config import HarnessConfig
from harness.errors import ConfigError, UnreadableKernelConfig
from harness.guest import engines
from harness.guest.cmdline import BASE_KERNEL_ARGS, QemuSpec, VngSpec, qemu_argv, vng_argv
from harness.guest.engines import GuestSpec, QemuEngine, VngEngine
from harness.session import KernelSession

# The relevant lines of Debian 12's two kernel configurations.
DEBIAN_61 = {"SLUB": "y", "SLUB_DEBUG": "y", "SLAB_FREELIST_HARDENED": "y"}
DEBIAN_612 = {"SLUB": "y", "SLUB_DEBUG": "y", "KFENCE": "y", "KFENCE_SAMPLE_INTERVAL": "0"}
DEBUG_PROFILE_KERNEL = {"SLUB": "y", "SLUB_DEBUG": "y", "SLUB_DEBUG_ON": "y", "KFENCE": "n", "KASAN": "y"}


@pytest.mark.parametrize(
    ("config", "helpers", "args"),
    [
        (DEBIAN_612, ("kfence", "slub"), ("kfence.sample_interval=10", "slub_debug=FZPU")),
        (DEBIAN_612, ("kfence",), ("kfence.sample_interval=10",)),
        (DEBIAN_612, ("slub",), ("slub_debug=FZPU",)),
        (DEBIAN_612, (), ()),
        (DEBIAN_61, ("kfence", "slub"), ("slub_debug=FZPU",)),  # no KFENCE in 6.1's config
        (DEBIAN_61, ("kfence",), ()),
        (DEBUG_PROFILE_KERNEL, ("kfence", "slub"), ()),  # slub debugging already on, KFENCE off
        ({**DEBIAN_612, "KFENCE_SAMPLE_INTERVAL": "100"}, ("kfence",), ()),  # already sampling by itself
        ({"SLAB": "y", "SLUB": "n", "SLUB_DEBUG": "n"}, ("slub",), ()),  # the SLAB allocator
        ({}, ("kfence", "slub"), ()),  # no configuration found: nothing is assumed
    ],
)
def test_memory_debug_args(config: dict[str, str], helpers: tuple[str, ...], args: tuple[str, ...]) -> None:
    assert memory_debug_args(config, helpers) == args


def test_unknown_helper_is_an_error_naming_the_known_ones() -> None:
    with pytest.raises(ConfigError, match=r"unknown memory-debug helper.*kasan.*known are kfence, slub"):
        memory_debug_args(DEBIAN_612, ("kasan",))


def test_read_config(tmp_path: Path) -> None:
    text = 'CONFIG_KFENCE=y\n# CONFIG_KASAN is not set\nCONFIG_LOCALVERSION=""\nCONFIG_NR_CPUS=64\n# comment\n'
    (tmp_path / ".config").write_text(text)
    assert read_config(tmp_path / ".config") == {"KFENCE": "y", "KASAN": "n", "LOCALVERSION": "", "NR_CPUS": "64"}
    assert read_config(tmp_path / "missing") == {}


def test_read_kernel_config_from_boot_then_the_build_tree_then_nothing(tmp_path: Path) -> None:
    boot, build = tmp_path / "boot", tmp_path / "build"
    boot.mkdir()
    build.mkdir()
    kernel = Kernel("6.99.0-test", boot / "vmlinuz-6.99.0-test", build)
    assert config_path(kernel, boot) is None and read_kernel_config(kernel, boot) == {}
    (build / ".config").write_text("CONFIG_SLUB_DEBUG_ON=y\n")
    assert read_kernel_config(kernel, boot) == {"SLUB_DEBUG_ON": "y"}
    (boot / "config-6.99.0-test").write_bytes(gzip.compress(b"CONFIG_KFENCE=y\n"))  # gzip-compressed, too
    assert read_kernel_config(kernel, boot) == {"KFENCE": "y"}


def _kernel_with_config(tmp_path: Path, config: dict[str, str]) -> Kernel:
    build = tmp_path / "build"
    build.mkdir()
    (build / ".config").write_text("".join(f"CONFIG_{k}={v}\n" for k, v in config.items()))
    return Kernel("6.99.1-test", tmp_path / "bzImage", build)


def test_both_builders_put_the_arguments_they_are_given_on_the_kernel_command_line(tmp_path: Path) -> None:
    kernel = Kernel("6.99.1-test", tmp_path / "bzImage", tmp_path / "build")
    args = ("kfence.sample_interval=10", "slub_debug=FZPU")
    qemu = qemu_argv(QemuSpec(image=kernel.image, initrd=tmp_path / "i", accel="tcg", shell=tmp_path / "sh",
                              kernel_log=tmp_path / "log", tsc_khz=2_994_000, memory_debug_args=args))  # fmt: skip
    append = qemu[qemu.index("-append") + 1].split()
    assert set(args) <= set(append) and append.index("tsc=reliable") < append.index(args[0])
    vng = vng_argv(VngSpec(kernel=kernel, accel="tcg", shell=tmp_path / "sh", rw_dirs=(), memory_debug_args=args))
    append = vng[vng.index("--append") + 1].split()
    base = len(BASE_KERNEL_ARGS)
    assert append[base : base + 2] == list(args) and append[base + 2].startswith("module_blacklist=")


def test_a_config_that_exists_but_cannot_be_read_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A missing configuration is quiet (a stock kernel without /boot/config-*); one that is there but cannot be
    read or decompressed is an infrastructure error naming the file and the fix, not a silent "no helpers"."""
    boot, build = tmp_path / "boot", tmp_path / "build"
    boot.mkdir()
    build.mkdir()
    kernel = Kernel("6.99.2-test", boot / "vmlinuz-6.99.2-test", build)
    assert read_kernel_config(kernel, boot) == {}
    config = boot / "config-6.99.2-test"
    config.write_bytes(b"\x1f\x8b\x08\x00 not gzip after all")
    with pytest.raises(UnreadableKernelConfig, match=r"config-6\.99\.2-test.*fix:") as info:
        read_kernel_config(kernel, boot)
    assert info.value.infra
    config.write_text("CONFIG_KFENCE=y\n")
    real_read_bytes = Path.read_bytes

    def read_bytes(path: Path) -> bytes:
        if path == config:
            raise PermissionError(13, "Permission denied", str(path))
        return real_read_bytes(path)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    with pytest.raises(UnreadableKernelConfig, match=r"Permission denied.*fix: .*chmod a\+r") as info:
        read_kernel_config(kernel, boot)
    assert info.value.infra


def launch_spec(tmp_path: Path, kernel: Kernel, **kw: object) -> GuestSpec:
    base: dict[str, object] = dict(kernel=kernel, name="knh-9", accel="tcg", run_dir=tmp_path / "run",
                                   shell=tmp_path / "sh", cache=tmp_path / "cache")  # fmt: skip
    base.update(kw)
    return GuestSpec(**base)  # type: ignore[arg-type]


def engine_argvs(tmp_path: Path, launch: GuestSpec, config: dict[str, str] | None = None) -> dict[str, list[str]]:
    """The kernel arguments of both engines for `launch`; `config`: the kernel's configuration (None: read it)."""
    read = {} if config is None else {"kernel_config": lambda kernel: config}
    vng = VngEngine(executable=lambda: "vng", vmlinux=lambda k, cache: None, **read)  # type: ignore[arg-type]
    qemu = QemuEngine(which=lambda name: "/usr/bin/qemu", vmlinux=lambda k, cache: None,
                      initramfs=lambda k, init, cache: cache / "i.cpio", tsc_khz=lambda: None, **read)  # type: ignore[arg-type]  # fmt: skip
    argvs = {"vng": vng.argv(launch), "qemu": qemu.argv(launch)}
    return {name: argv[argv.index("--append" if name == "vng" else "-append") + 1].split()
            for name, argv in argvs.items()}  # fmt: skip


def debug_args_of(kernel_args: list[str]) -> set[str]:
    return {a for a in kernel_args if a.startswith(("kfence.", "slub_debug="))}


@pytest.mark.parametrize(
    ("helpers", "wanted"),
    [(("slub",), {"slub_debug=FZPU"}), (("kfence", "slub"), {"kfence.sample_interval=10", "slub_debug=FZPU"}),
     ((), set())],
)  # fmt: skip
def test_both_engines_turn_on_the_launchs_helpers_the_kernel_has(
    tmp_path: Path, helpers: tuple[str, ...], wanted: set[str]
) -> None:
    kernel = Kernel("6.99.4-test", tmp_path / "bzImage", tmp_path / "build")
    launch = launch_spec(tmp_path, kernel, memory_debug=helpers)
    for name, kernel_args in engine_argvs(tmp_path, launch, DEBIAN_612).items():
        assert debug_args_of(kernel_args) == wanted, name


def test_the_memory_debug_setting_reaches_the_launch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """HarnessConfig.memory_debug -> KernelSession.launch -> GuestSpec: the environment is read once, by the
    settings, not by a spec's default."""
    seen: list[GuestSpec] = []

    class Recording:
        name = "vng"

        def argv(self, launch: GuestSpec) -> list[str]:
            seen.append(launch)
            return ["boot"]

    monkeypatch.setattr(engines, "REGISTRY", {"vng": Recording()})
    monkeypatch.setenv("KNH_MEMORY_DEBUG", "all")
    cfg = HarnessConfig(accel="tcg", results_dir=tmp_path / "results", memory_debug=("slub",))
    kernel = Kernel("6.99.4-test", tmp_path / "bzImage", tmp_path / "build")
    KernelSession(cfg, kernel, tmp_path / "runs").launch("knh-9", tmp_path / "runs" / "knh-9")
    assert [launch.memory_debug for launch in seen] == [("slub",)]


def test_an_unreadable_config_stops_the_launch_even_with_the_helpers_off(tmp_path: Path) -> None:
    build = tmp_path / "build"
    build.mkdir()
    (build / ".config").write_bytes(gzip.compress(b"CONFIG_KFENCE=y\n")[:20])  # cut short
    launch = launch_spec(tmp_path, Kernel("6.99.5-test", tmp_path / "bzImage", build), memory_debug=())
    with pytest.raises(UnreadableKernelConfig, match=rf"{build}/\.config"):
        engine_argvs(tmp_path, launch)
