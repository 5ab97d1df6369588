from pathlib import Path

import pytest

from harness.errors import ConfigError
from harness.guest.accel import ProbeResult, choose_accel, interpret_probe, probe_argv

IMG = Path("/boot/vmlinuz-x")


def never_probe(_: Path) -> ProbeResult:
    raise AssertionError("probe must not run")


def test_tcg_requested_skips_probe() -> None:
    d = choose_accel("tcg", IMG, device_check=lambda: None, probe=never_probe)
    assert (d.accel, d.reason) == ("tcg", "requested")


def test_auto_uses_kvm_only_when_probe_boots() -> None:
    ok = choose_accel("auto", IMG, device_check=lambda: None, probe=lambda _: ProbeResult(True, "booted", 0.8))
    assert ok.accel == "kvm"
    bad = choose_accel("auto", IMG, device_check=lambda: None, probe=lambda _: ProbeResult(False, "MSR", 0.1))
    assert bad.accel == "tcg" and "MSR" in bad.reason and "TCG" in bad.notice()


def test_auto_without_device_does_not_probe() -> None:
    d = choose_accel("auto", IMG, device_check=lambda: "/dev/kvm does not exist", probe=never_probe)
    assert d.accel == "tcg" and "/dev/kvm does not exist" in d.reason


def test_forced_kvm_that_does_not_work_is_an_error() -> None:
    with pytest.raises(ConfigError, match="failed to set MSR"):
        choose_accel("kvm", IMG, device_check=lambda: None,
                     probe=lambda _: ProbeResult(False, "failed to set MSR 0x10a", 0.1))  # fmt: skip


def test_bad_choice() -> None:
    with pytest.raises(ConfigError):
        choose_accel("hvf", IMG)


def test_interpret_probe_output() -> None:
    assert interpret_probe("[0.9] Kernel panic - not syncing: VFS: Unable to mount root fs", 1.0).works
    r = interpret_probe("qemu-system-x86_64: error: failed to set MSR 0x10a to 0x69\n", 0.1)
    assert not r.works and "failed to set MSR 0x10a" in r.reason
    assert "no kernel output" in interpret_probe("", 15.0).reason


def test_probe_boots_the_default_machine_under_kvm_with_no_root() -> None:
    argv = probe_argv("/usr/bin/qemu-system-x86_64", IMG)
    assert argv[:5] == ["/usr/bin/qemu-system-x86_64", "-accel", "kvm", "-cpu", "host"]  # QEMU's PC machine: no -M
    assert argv[argv.index("-m") + 1] == "256M" and argv[argv.index("-smp") + 1] == "1"
    assert "-no-reboot" in argv and argv[argv.index("-serial") + 1] == "chardev:con"
    assert argv[-4:] == ["-kernel", str(IMG), "-append", "console=ttyS0 panic=-1 root=/dev/knh-no-root loglevel=4"]
    assert not {"-initrd", "-fsdev", "-device", "-name"} & set(argv)  # no initramfs, 9p, channel
