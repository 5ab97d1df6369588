"""harness.build.memdebug: which kernel arguments turn on a stock kernel's built-in memory-error detectors,
and that both engines' command lines carry them."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from harness.build.config_items import config_path, read_config, read_kernel_config
from harness.build.kernel import Kernel
from harness.build.memdebug import DEFAULT_HELPERS, helpers_from_env, memory_debug_args
from harness.errors import ConfigError, UnreadableKernelConfig
from harness.guest.cmdline import QemuSpec, VngSpec, qemu_argv, vng_argv

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


@pytest.mark.parametrize(
    ("value", "helpers"),
    [("", DEFAULT_HELPERS), ("auto", DEFAULT_HELPERS), ("off", ()), ("none", ()), ("all", ("kfence", "slub")),
     ("slub", ("slub",)), ("kfence, slub", ("kfence", "slub")), ("SLUB kfence", ("slub", "kfence"))],
)  # fmt: skip
def test_helpers_from_env(value: str, helpers: tuple[str, ...]) -> None:
    assert helpers_from_env({"KNH_MEMORY_DEBUG": value} if value else {}) == helpers


def test_helpers_from_env_rejects_unknown_names_with_the_choices() -> None:
    with pytest.raises(ConfigError, match=r"KNH_MEMORY_DEBUG='kasan': unknown helper.*auto, off, all"):
        helpers_from_env({"KNH_MEMORY_DEBUG": "kasan"})


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


def test_both_engines_boot_with_the_arguments(tmp_path: Path) -> None:
    kernel = _kernel_with_config(tmp_path, DEBIAN_612)
    qemu = qemu_argv(QemuSpec(kernel=kernel, image=kernel.image, initrd=tmp_path / "i", accel="tcg",
                              shell=tmp_path / "sh", rw_dirs=(), fresh_dirs=(), kernel_log=tmp_path / "log",
                              memory_debug=("kfence", "slub")))  # fmt: skip
    append = qemu[qemu.index("-append") + 1].split()
    assert "kfence.sample_interval=10" in append and "slub_debug=FZPU" in append
    vng = vng_argv(VngSpec(kernel=kernel, accel="tcg", shell=tmp_path / "sh", rw_dirs=(), memory_debug=("slub",)))
    append = vng[vng.index("--append") + 1].split()
    assert "slub_debug=FZPU" in append and not any(a.startswith("kfence.") for a in append)
    off = vng_argv(VngSpec(kernel=kernel, accel="tcg", shell=tmp_path / "sh", rw_dirs=(), memory_debug=()))
    assert "slub_debug" not in off[off.index("--append") + 1]


def test_specs_take_the_helpers_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    kernel = _kernel_with_config(tmp_path, DEBIAN_612)
    monkeypatch.setenv("KNH_MEMORY_DEBUG", "slub")
    assert VngSpec(kernel=kernel, accel="tcg", shell=tmp_path / "sh", rw_dirs=()).memory_debug == ("slub",)
    monkeypatch.setenv("KNH_MEMORY_DEBUG", "off")
    argv = vng_argv(VngSpec(kernel=kernel, accel="tcg", shell=tmp_path / "sh", rw_dirs=()))
    assert "kfence" not in argv[argv.index("--append") + 1]


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
