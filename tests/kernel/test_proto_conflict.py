"""Protocol 21 is NETLINK_CRYPTO today: with crypto_user loaded, insmod must say "in use".

The message on 31 goes through the C sender: one short process, where a Python sender bound to 31
would cost a Python start in the guest (1-3 s under TCG) and the next test's sender on 21 another."""

from collections.abc import Iterator

import pytest

from harness.build.module_build import BuiltModule
from harness.errors import ModuleLoadError
from harness.guest.kernel_ops import GuestKernel
from harness.guest.vm import Guest
from harness.knetlink.senders import C_SENDER, CSender


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
        sent = CSender(guest, built_module.directory / C_SENDER, 31).send("after conflict")
        assert (sent.status, [(a.seq, a.error) for a in sent.acks]) == (0, [(1, 0)]), sent.output
    finally:
        guest_kernel.rmmod("knetlink")
