"""Security: require_cap, read-only counters, and what the guest may touch on the host.

With require_cap=1 a sender without CAP_NET_ADMIN gets an EPERM ack and
nothing is logged; root (and only a holder of the capability) is served.
The stat_* counters cannot be set, not even by root, neither through sysfs
nor at insmod.
The guest sees the host filesystem read-only except the results directory; a vng guest's /usr is the
host's, cached, and keeps the guest's writes to itself.
(The host-kernel refusal is tested without a guest in tests/test_reliability.py.)
"""

from __future__ import annotations

import os
import secrets
import sys
import time
from pathlib import Path

import pytest
from knetlink_stats import STAT_NAMES, module_stats, param_path, read_param  # tests/kernel/knetlink_stats.py

from harness.build.module_build import BuiltModule
from harness.config import GUEST_SCRIPTS, default_cache_root
from harness.errors import ModuleLoadError
from harness.guest.cmdline import CACHED_DIR_TAG, CACHED_USR_TAG
from harness.guest.engines import GuestSpec, cacheable, python_prefixes
from harness.guest.kernel_ops import GuestKernel
from harness.guest.vm import Guest
from harness.knetlink.fixtures import KnetlinkModule, LinkLogWindow
from harness.knetlink.senders import CSender, PySender
from harness.session import KernelSession

NOBODY = "--reuid=65534 --regid=65534 --clear-groups"
REPO = GUEST_SCRIPTS.parent


def guest_copy(guest: Guest, binary: Path) -> str:
    """A copy of the sender in the guest's own /tmp: the build cache under /root is not readable by nobody."""
    dst = f"/tmp/knl_send-{secrets.token_hex(3)}"
    guest.run(f"install -m 755 {binary} {dst}", check=True)
    return dst


def send_as(guest: Guest, setpriv: str, sender: str, proto: int, message: str) -> tuple[int, str]:
    result = guest.run(f"setpriv {setpriv} {sender} -p {proto} -- {message}")
    return result.status, result.output.strip()


@pytest.mark.module_params(require_cap=1)
def test_require_cap_unprivileged_gets_eperm_root_served(kmod: KnetlinkModule, kernel_log: LinkLogWindow,
                                                         c_sender: CSender, guest: Guest) -> None:  # fmt: skip
    assert read_param(guest, "require_cap") == "Y"
    sender = guest_copy(guest, c_sender.binary)
    p = kmod.proto

    # nobody, no capabilities
    status, out = send_as(guest, f"{NOBODY} --inh-caps=-all", sender, p, "from-nobody")
    assert (status, out) == (1, "ack seq=1 error=1"), out
    # root without CAP_NET_ADMIN in its bounding set: it is the capability that counts, not the uid
    status, out = send_as(guest, "--bounding-set=-net_admin", sender, p, "from-root-without-cap")
    assert (status, out) == (1, "ack seq=1 error=1"), out
    # nobody holding CAP_NET_ADMIN (ambient) is served
    status, out = send_as(guest, f"{NOBODY} --inh-caps=+net_admin --ambient-caps=+net_admin", sender, p,
                          "from-nobody-with-cap")  # fmt: skip
    assert (status, out) == (0, "ack seq=1 error=0"), out
    # root is served
    result = c_sender.send("from-root")
    assert [(a.seq, a.error) for a in result.acks] == [(1, 0)], result.output

    kernel_log.assert_links(["from-nobody-with-cap", "from-root"])
    assert not any("from-nobody" in t and "with-cap" not in t for t in kernel_log.texts())
    assert module_stats(guest) == {"received": 4, "printed": 2, "acked": 4, "errors": 2}

    # require_cap is 0644: switching it off at run time serves everybody again
    guest.run("echo 0 > /sys/module/knetlink/parameters/require_cap", check=True)
    status, out = send_as(guest, f"{NOBODY} --inh-caps=-all", sender, p, "nobody-after-switch")
    assert (status, out) == (0, "ack seq=1 error=0"), out
    assert kernel_log.links()[-1] == b"nobody-after-switch"


def test_require_cap_off_by_default(kmod: KnetlinkModule, kernel_log: LinkLogWindow, c_sender: CSender,
                                    guest: Guest) -> None:  # fmt: skip
    assert read_param(guest, "require_cap") == "N"
    sender = guest_copy(guest, c_sender.binary)
    status, out = send_as(guest, f"{NOBODY} --inh-caps=-all", sender, kmod.proto, "nobody-default")
    assert (status, out) == (0, "ack seq=1 error=0"), out
    kernel_log.assert_links(["nobody-default"])


def test_stat_counters_are_read_only_even_for_root(kmod: KnetlinkModule, py_sender: PySender,
                                                   guest: Guest) -> None:  # fmt: skip
    assert [(a.seq, a.error) for a in py_sender.send("counted", seq=9)] == [(9, 0)]
    counted = {"received": 1, "printed": 1, "acked": 1, "errors": 0}
    assert module_stats(guest) == counted
    paths = [param_path(f"stat_{name}") for name in STAT_NAMES]
    modes = guest.run(["stat", "-c", "%n %a", *paths], check=True).output.split()
    assert modes == [word for path in paths for word in (path, "444")], modes
    for path in paths:
        refused = guest.run(f"echo 1000 > {path}")
        assert refused.status != 0 and "Permission denied" in refused.output, (path, refused)
    assert module_stats(guest) == counted


@pytest.mark.parametrize("name", STAT_NAMES)
def test_stat_counter_cannot_be_set_at_insmod(name: str, built_module: BuiltModule, guest_kernel: GuestKernel) -> None:
    assert not guest_kernel.loaded("knetlink"), "knetlink is loaded already: the refusal could not be seen"
    try:
        with pytest.raises(ModuleLoadError) as refused:
            guest_kernel.insmod(built_module.module(), {f"stat_{name}": "1000"})
    finally:
        if guest_kernel.loaded("knetlink"):
            guest_kernel.rmmod("knetlink")
    assert f"knetlink: stat_{name} is read-only" in refused.value.kernel_lines, str(refused.value)


def test_host_filesystem_is_read_only_except_results(guest: Guest, guest_kernel: GuestKernel) -> None:
    token = secrets.token_hex(6)
    # under the repository (the host root as the guest sees it)
    in_repo = REPO / f".knh-guest-write-{token}"
    wrote = guest.run(f"echo {token} > {in_repo} && cat {in_repo}")
    try:
        assert not in_repo.exists(), "a file written in the guest under the repository reached the host"
    finally:
        in_repo.unlink(missing_ok=True)
    # either the write failed (read-only mount) or it landed in the guest's throwaway overlay
    print(f"guest write under the repo: status {wrote.status}, output {wrote.output.strip()!r}")

    # the results directory is shared read-write
    shared = guest_kernel.scratch / f"guest-write-{token}.txt"
    try:
        guest.run(f"echo {token} > {shared}", check=True)
        assert shared.read_text().strip() == token
        shared.write_text(f"host-{token}\n")
        assert guest.run(["cat", str(shared)], check=True).output.strip() == f"host-{token}"
    finally:
        shared.unlink(missing_ok=True)


def test_vng_guest_sees_the_hosts_usr_cached_and_keeps_its_writes(guest: Guest, knh_kernel_session: KernelSession,
                                                                  tmp_path: Path) -> None:  # fmt: skip
    """On virtme-ng the host's /usr is a second, cached 9p share under a tmpfs overlay (CACHED_USR_TAG): the
    guest reads the host's files there, and what it writes there stays in the guest."""
    if knh_kernel_session.engine_name != "vng":
        pytest.skip("the cached /usr is virtme-ng's (the qemu engine's whole root is cached)")
    mounts = guest.run(["cat", "/proc/mounts"], check=True).output.splitlines()
    usr = [m.split() for m in mounts if m.split()[1:2] == ["/usr"]]
    assert usr and usr[-1][2] == "overlay" and "lowerdir=/run/knh-usr/lower" in usr[-1][3], usr
    lower = [m.split() for m in mounts if m.split()[1:2] == ["/run/knh-usr/lower"]]
    assert lower and lower[-1][:3] == [CACHED_USR_TAG, "/run/knh-usr/lower", "9p"], lower
    # 6.12 shows the cache mode as cache=0xf, 6.1 by its name; cache=none shows nothing
    options = lower[-1][3].split(",")
    assert any(o.startswith("cache=") or o in ("loose", "fscache") for o in options), f"/usr uncached: {lower}"
    # the host's /usr as it is
    assert guest.run(["cat", "/usr/lib/os-release"], check=True).output == Path("/usr/lib/os-release").read_text()
    # a write stays in the guest
    token = secrets.token_hex(6)
    name = f"/usr/share/knh-guest-write-{token}"
    guest.run(f"echo {token} > {name}", check=True)
    assert guest.run(["cat", name], check=True).output.strip() == token
    assert not Path(name).exists(), "a file written in the guest's /usr reached the host"


def test_vng_guest_sees_the_harness_python_outside_usr_cached(guest: Guest, knh_kernel_session: KernelSession) -> None:
    """On virtme-ng the harness's interpreter and environment, where they are not under /usr (a pyenv or uv
    Python, the virtual environment), are cached 9p shares under tmpfs overlays at their own paths
    (CACHED_DIR_TAG): the example's pyroute2 sender starts seconds sooner. The guest reads the host's files."""
    if knh_kernel_session.engine_name != "vng":
        pytest.skip("the cached shares are virtme-ng's (the qemu engine's whole root is cached)")
    launch = GuestSpec(kernel=knh_kernel_session.kernel, name="x", accel="tcg", run_dir=Path("/nonexistent"),
                       shell=GUEST_SCRIPTS / "guest-shell", cache=default_cache_root(),
                       rw_dirs=(knh_kernel_session.results_dir,), cwd=Path(os.getcwd()))  # fmt: skip
    wanted = [d for d in python_prefixes() if cacheable(d, launch)]
    if not wanted:
        pytest.skip(f"the harness's Python is under /usr or holds a shared directory: {python_prefixes()}")
    deadline = time.monotonic() + 60  # guest-shell mounts them in the background while the shell starts
    while True:
        mounts = [m.split() for m in guest.run(["cat", "/proc/mounts"], check=True).output.splitlines()]
        if all(m[1] != str(wanted[-1]) for m in mounts) and time.monotonic() < deadline:
            time.sleep(0.5)
            continue
        break
    for i, directory in enumerate(wanted):
        over = [m for m in mounts if m[1:2] == [str(directory)]]
        assert over and over[-1][2] == "overlay" and f"lowerdir=/run/knh-cache/{i}/lower" in over[-1][3], over
        lower = [m for m in mounts if m[1:2] == [f"/run/knh-cache/{i}/lower"]]
        assert lower and lower[-1][:3] == [f"{CACHED_DIR_TAG}{i}", f"/run/knh-cache/{i}/lower", "9p"], lower
    config = Path(sys.base_prefix) / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}" / "os.py"
    assert guest.run(["cat", str(config)], check=True).output == config.read_text()
