from pathlib import Path

from harness.cmdline import BASE_KERNEL_ARGS, VngSpec, shell_join, vng_argv
from harness.kernel import Kernel

K = Kernel("6.1.0-56-amd64", Path("/boot/vmlinuz-6.1.0-56-amd64"), Path("/lib/modules/6.1.0-56-amd64/build"))


def spec(**kw: object) -> VngSpec:
    base = dict(kernel=K, accel="tcg", shell=Path("/g/guest-shell"), rw_dirs=(Path("/r"),), name="knh-1")
    base.update(kw)
    return VngSpec(**base)  # type: ignore[arg-type]


def test_tcg_argv_is_exact() -> None:
    assert vng_argv(spec()) == [
        "vng", "--run", "/boot/vmlinuz-6.1.0-56-amd64", "--name", "knh-1", "--memory", "1G", "--cpus", "2",
        "--shell", "/g/guest-shell", "--force-9p", "--append", "panic=-1 loglevel=7 log_buf_len=8M",
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
