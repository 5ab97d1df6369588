"""Protocol 21 is NETLINK_CRYPTO today: with crypto_user loaded, insmod must say "in use"."""

from collections.abc import Iterator

import pytest

from harness.build.module_build import BuiltModule
from harness.errors import ModuleLoadError
from harness.guest.kernel_ops import GuestKernel
from harness.guest.vm import Guest
from harness.knetlink.senders import PySender


@pytest.fixture
def crypto_user(guest: Guest) -> Iterator[None]:
    loaded = guest.run(["modprobe", "crypto_user"])
    if loaded.status != 0:
        pytest.fail(f"modprobe crypto_user failed: {loaded.output}")
    yield
    guest.run(["modprobe", "-r", "crypto_user"])


def test_taken_protocol_fails_clearly_and_31_works(
    crypto_user: None, built_module: BuiltModule, guest_kernel: GuestKernel, guest: Guest
) -> None:
    ko = built_module.module()
    with pytest.raises(ModuleLoadError) as info:
        guest_kernel.insmod(ko, {"proto": "21"})
    err = info.value
    assert "in use" in err.output.lower() or "busy" in err.output.lower(), err.output
    assert "Cannot allocate memory" not in err.output
    assert any("21" in line and "knetlink" in line for line in err.kernel_lines), err.kernel_lines

    guest_kernel.insmod(ko, {"proto": "31"})
    try:
        sender = PySender(guest, 31, stderr=guest.paths.run_dir / "nl_send.stderr")
        assert [a.error for a in sender.send("after conflict")] == [0]
        sender.release()
    finally:
        guest_kernel.rmmod("knetlink")
