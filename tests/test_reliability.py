"""Reliability of the harness itself: no leaked QEMU, dead guests, boot and command timeouts,
and the refusal to load a module into the host kernel.

Tests marked `kernel` boot real guests (with the configured kernel and accelerator)
through their own KernelSession, so the suite's shared guest is never the one that
gets crashed or starved. They boot the qemu engine whatever the run's engine (they
test the harness, not an engine, and it boots in a fraction of vng's time), except
where virtme-ng itself is the subject: its process tree (vng, virtme-run, QEMU)
must go away with a killed harness too.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from harness.config import GUEST_SCRIPTS, HarnessConfig
from harness.errors import BootError, CommandTimeout, HostKernelRefused, LostGuestError
from harness.guest.console import CommandResult
from harness.guest.kernel_ops import GuestKernel, check_not_host, host_boot_id
from harness.guest.vm import Guest
from harness.session import KernelSession, every_attempt

REPO = GUEST_SCRIPTS.parent


def processes_with(text: str) -> list[tuple[int, str]]:
    """(pid, cmdline) of every process whose command line contains `text`, except this one."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            found.append((int(entry), cmdline[:200]))
    return found


def wait_gone(text: str, seconds: float = 10.0) -> list[tuple[int, str]]:
    deadline = time.monotonic() + seconds
    while True:
        left = processes_with(text)
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.2)


@pytest.fixture
def private_session(knh_kernel_session: KernelSession, tmp_path: Path) -> Iterator[KernelSession]:
    """A KernelSession of its own (same kernel and settings, the qemu engine) that may be crashed."""
    config = replace(knh_kernel_session.config, engine="qemu", accel=knh_kernel_session.accel().accel)
    session = KernelSession(config, knh_kernel_session.kernel, tmp_path / "runs")
    try:
        yield session
    finally:
        session.close()


# -- (a) Ctrl-C or a crashed pytest leaves no QEMU process ---------------------

BOOTER = textwrap.dedent("""
    import signal, sys, time
    from pathlib import Path
    from harness.config import resolve
    from harness.build.kernel_build import resolve_kernel_spec
    from harness.session import KernelSession

    # Ctrl-C semantics even when the test run itself ignores SIGINT (started in the background)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    spec, engine, accel, boot_timeout, results, run_root = sys.argv[1:7]
    cfg = resolve({"engine": engine, "accel": accel, "boot_timeout": boot_timeout, "results_dir": results},
                  environ={})
    session = KernelSession(cfg, resolve_kernel_spec(spec), Path(run_root), notify=lambda m: print(m, flush=True))
    guest = session.guest()
    print("GUEST", guest.launch.name, guest.pid, flush=True)
    time.sleep(3600)  # no cleanup on purpose: the signal must not leave QEMU behind
""")


# one_kernel per case, its cost the case's seconds under TCG here (medians of five serial runs of both kernels):
# a qemu-engine boot to the prompt and the harness's start cost about 4 s
AFTER_BOOT, DURING_BOOT = pytest.mark.one_kernel(cost=4), pytest.mark.one_kernel(cost=1.3)
KILLS = [
    pytest.param("qemu", signal.SIGINT, "ready", id="qemu-SIGINT-after-boot", marks=AFTER_BOOT),
    pytest.param("qemu", signal.SIGKILL, "ready", id="qemu-SIGKILL-after-boot", marks=AFTER_BOOT),
    pytest.param("qemu", signal.SIGTERM, "ready", id="qemu-SIGTERM-after-boot", marks=pytest.mark.one_kernel(cost=3.5)),
    pytest.param("qemu", signal.SIGKILL, "booting", id="qemu-SIGKILL-during-boot", marks=DURING_BOOT),
    # virtme-ng starts QEMU as a grandchild: its tree must go too
    pytest.param("vng", signal.SIGKILL, "booting", id="vng-SIGKILL-during-boot", marks=DURING_BOOT),
    pytest.param("vng", signal.SIGKILL, "ready", id="vng-SIGKILL-after-boot",
                 marks=[pytest.mark.full, pytest.mark.one_kernel(cost=8)]),
]


@pytest.mark.kernel
# one_kernel (each case's mark, in KILLS): QEMU's cleanup after a signal to the harness is the same whatever the
# guest kernel
@pytest.mark.parametrize(("engine", "sig", "when"), KILLS)
def test_killed_harness_leaves_no_qemu(knh_kernel_session: KernelSession, tmp_path: Path, engine: str, sig: int,
                                       when: str) -> None:  # fmt: skip
    cfg = knh_kernel_session.config
    script = tmp_path / "booter.py"
    script.write_text(BOOTER)
    # the outer run's kernel as a --kernel value (a release, or `debug`, a tree, an image: cached builds)
    argv = [sys.executable, str(script), knh_kernel_session.spec_for_reproduction, engine,
            knh_kernel_session.accel().accel, str(cfg.boot_timeout), str(cfg.results_dir.resolve()),
            str(tmp_path / "runs")]  # fmt: skip
    proc = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    name = None
    transcript = []
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + cfg.boot_timeout * 2 + 60
        for line in proc.stdout:
            transcript.append(line)
            if " as knh-" in line and name is None:
                name = line.split(" as ", 1)[1].split(",", 1)[0].strip()
                if when == "booting":
                    time.sleep(1.0)  # QEMU is starting or booting now
                    break
            if line.startswith("GUEST "):
                name = line.split()[1]
                break
            assert time.monotonic() < deadline, "".join(transcript)
        assert name and name.startswith("knh-"), "".join(transcript)
        assert processes_with(name), f"no process for {name} before the signal: the test would prove nothing"
        proc.send_signal(sig)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    left = wait_gone(name, 10.0) if name else []
    for pid, _ in left:  # clean up before failing, so one failure does not leak into the machine
        os.kill(pid, signal.SIGKILL)
    assert left == [], f"{engine}: after {signal.Signals(sig).name} ({when}) still running: {left}"


# -- (b) a dead guest ----------------------------------------------------------------


@pytest.mark.kernel
@pytest.mark.one_kernel(cost=6.5)  # the harness's reading of a panic and its fresh guest (two boots)
def test_panicked_guest_raises_lost_guest_with_panic_text_then_fresh_guest(private_session: KernelSession) -> None:
    guest = private_session.guest()
    name = guest.launch.name
    with pytest.raises(LostGuestError) as info:
        guest.run("echo c > /proc/sysrq-trigger", timeout=120)
    message = str(info.value)
    assert "sysrq triggered crash" in message, message  # the panic text from the guest kernel console
    assert "Kernel panic" in message, message
    assert not guest.alive
    assert wait_gone(name) == []

    fresh = private_session.guest()
    assert fresh is not guest and fresh.launch.name != name
    assert fresh.run("echo alive", check=True).output.strip() == "alive"
    assert private_session.stats.boots == 2


# -- (c) boot timeout and retry ------------------------------------------------------------


@pytest.mark.kernel
@pytest.mark.one_kernel(cost=1.3)  # the timeout hits before the kernel has printed anything
def test_boot_timeout_is_killed_and_retried_once(knh_kernel_session: KernelSession, tmp_path: Path) -> None:
    config: HarnessConfig = replace(knh_kernel_session.config, engine="qemu", boot_timeout=0.5, boot_retries=1,
                                    accel=knh_kernel_session.accel().accel)  # fmt: skip
    notes: list[str] = []
    session = KernelSession(config, knh_kernel_session.kernel, tmp_path / "runs", notify=notes.append)
    try:
        with pytest.raises(BootError) as info:
            session.guest()
        message = str(info.value)
        assert "did not boot" in message and "no guest shell prompt within 0 s" in message, message
        assert session.stats.retries == 1 and session.stats.boots == 0
        run_dirs = sorted(p for p in (tmp_path / "runs" / knh_kernel_session.kernel.label).iterdir())
        assert len(run_dirs) == 2, run_dirs  # both attempts kept their logs
        for d in run_dirs:
            assert (d / "console.log").exists() and (d / "argv.txt").exists(), list(d.iterdir())
            assert wait_gone(d.name) == [], f"QEMU of the timed-out attempt {d.name} survived"
        assert sum("attempt 1/2" in n for n in notes) == 1 and sum("attempt 2/2" in n for n in notes) == 1, notes
        # the next user gets the same error at once instead of two more slow boots
        with pytest.raises(BootError):
            session.guest()
        assert len(list((tmp_path / "runs" / knh_kernel_session.kernel.label).iterdir())) == 2
    finally:
        session.close()


@pytest.mark.kernel
@pytest.mark.one_kernel(cost=7.5)  # the guest shell is the harness's (two boots that fail)
def test_broken_guest_shell_fails_boot_with_cause(knh_kernel_session: KernelSession, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """A guest whose shell cannot start: QEMU exits at once; both attempts fail and the error says so.
    The scenario is built on the qemu engine's /init."""
    # a copy of guest_scripts outside /tmp (the guest mounts its own tmpfs there)
    # (a directory of its own: xdist workers running this test for other kernels share tmp_path's name)
    scripts = Path(tempfile.mkdtemp(prefix="knh-broken-", dir="/var/tmp"))
    try:
        (scripts / "fast-init").write_bytes((GUEST_SCRIPTS / "fast-init").read_bytes())
        (scripts / "guest-shell").write_text("#!/bin/sh\necho 'knh-test: this guest shell refuses to start'\nexit 3\n")
        (scripts / "guest-shell").chmod(0o755)
        import harness.session

        monkeypatch.setattr(harness.session, "GUEST_SCRIPTS", scripts)
        config = replace(knh_kernel_session.config, engine="qemu", boot_timeout=120, boot_retries=1,
                         accel=knh_kernel_session.accel().accel)  # fmt: skip
        session = KernelSession(config, knh_kernel_session.kernel, tmp_path / "runs")
        try:
            with pytest.raises(BootError) as info:
                session.guest()
        finally:
            session.close()
        message = str(info.value)
        assert "did not boot" in message, message
        assert "QEMU exited" in message or "console closed" in message, message
        assert "this guest shell refuses to start" in message, message
        assert session.stats.retries == 1
    finally:
        shutil.rmtree(scripts)


# -- (d) command timeout ------------------------------------------------------------------


def test_command_timeout_then_guest_still_usable(guest: Guest) -> None:
    start = time.monotonic()
    with pytest.raises(CommandTimeout) as info:
        guest.run("sleep 30", timeout=1)
    assert "timed out after 1.0 s" in str(info.value)
    assert "interrupted; the guest is usable" in str(info.value)
    assert time.monotonic() - start < 30
    assert guest.alive
    assert guest.run("echo still here", check=True).output.strip() == "still here"


# -- the host kernel is never a target ------------------------------------------------------


class _FakeGuest:
    """Stands in for a Guest whose 'kernel' answers with a given boot_id; records every command."""

    def __init__(self, boot_id: str) -> None:
        self.boot_id = boot_id
        self.commands: list[str] = []

    def run(self, command: object, *, timeout: float | None = None, check: bool = False) -> CommandResult:
        text = " ".join(command) if isinstance(command, list) else str(command)
        self.commands.append(text)
        out = self.boot_id + "\n" if "boot_id" in text else ""
        return CommandResult(text, 0, out, 0.0)


def test_check_not_host_refuses_the_host_boot_id() -> None:
    host = host_boot_id()
    with pytest.raises(HostKernelRefused, match="host kernel"):
        check_not_host(host, host)
    with pytest.raises(HostKernelRefused, match="cannot read"):
        check_not_host("", host)
    check_not_host("00000000-0000-0000-0000-000000000000", host)  # a different kernel: allowed


def test_insmod_refused_when_the_target_is_the_host(tmp_path: Path) -> None:
    fake = _FakeGuest(host_boot_id())
    ops = GuestKernel(fake, tmp_path)  # type: ignore[arg-type]
    with pytest.raises(HostKernelRefused):
        ops.insmod(tmp_path / "knetlink.ko", {"proto": "31"})
    with pytest.raises(HostKernelRefused):
        ops.ensure_not_host()
    assert not any("insmod" in c for c in fake.commands), fake.commands


def test_insmod_allowed_on_another_kernel(tmp_path: Path) -> None:
    fake = _FakeGuest("11111111-2222-3333-4444-555555555555")
    ops = GuestKernel(fake, tmp_path)  # type: ignore[arg-type]
    ops.ensure_not_host()  # no exception
    assert fake.commands == ["cat /proc/sys/kernel/random/boot_id"]


def test_a_boot_whose_attempts_all_failed_says_what_each_ended_with() -> None:
    """The retry can fail otherwise than the first attempt (a guest shell that cannot start, then a kernel that
    died of something else under TCG): the error keeps the last attempt's text and adds each earlier one's."""
    first = BootError("guest a did not boot: QEMU exited",
                      console_tail="booting\n\nknh-test: this guest shell refuses to start\n")  # fmt: skip
    second = BootError("guest b did not boot: QEMU exited", console_tail="Oops: int3\n")
    error = every_attempt([first, second])
    assert isinstance(error, BootError) and str(error).startswith(str(second))
    assert "--- earlier boot attempts ---\nattempt 1: guest a did not boot: QEMU exited\n    booting\n" \
           "    knh-test: this guest shell refuses to start" in str(error)  # fmt: skip
    assert error.console_tail == second.console_tail
    assert every_attempt([first]) is first
