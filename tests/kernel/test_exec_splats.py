"""`python -m harness exec` reports what the kernel did: a WARNING during the
command is printed and turns the exit status into 253.

Each test runs exec as a subprocess (the way a developer or `git bisect run`
does) with tests/modules/warn_nth, a module that WARNs on the Nth write to
its `poke` parameter, on the same kernel, engine and accelerator as the run.
The last test runs pytest the same way: the same WARNING fails a test.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from inner_runs import same_kernel_options  # tests/kernel/inner_runs.py

from harness.cli.base import EXIT_KERNEL_SPLAT
from harness.config import GUEST_SCRIPTS
from harness.session import KernelSession

pytestmark = pytest.mark.kernel

REPO = GUEST_SCRIPTS.parent
WARN_NTH = Path(__file__).resolve().parent.parent / "modules" / "warn_nth"
POKE = "/sys/module/warn_nth/parameters/poke"


def poke_script(times: int, then_exit: int = 0) -> list[str]:
    """argv writing `times` times to warn_nth's poke parameter, then exiting with `then_exit`."""
    loop = f'i=0; while [ "$i" -lt {times} ]; do echo 1 > {POKE} || exit 99; i=$((i + 1)); done'
    return ["sh", "-c", f"{loop}; cat {POKE}; exit {then_exit}"]


def same_guest_options(session: KernelSession) -> list[str]:
    """Options that give a harness subprocess this session's kernel, accelerator and guest, with warn_nth, on
    the inner runs' engine (these runs test exec's kernel checks, not an engine)."""
    cfg = session.config
    return [*same_kernel_options(session),
            "--boot-timeout", str(cfg.boot_timeout), "--results-dir", str(cfg.results_dir.resolve()),
            "--guest-memory", cfg.memory, "--guest-cpus", str(cfg.cpus),
            "--module-dir", str(WARN_NTH)]  # its own Makefile's default goal  # fmt: skip


def run(session: KernelSession, argv: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    cfg = session.config
    timeout = 2 * cfg.boot_timeout * (cfg.boot_retries + 1) + 300
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False)


def run_exec(session: KernelSession, *extra: str, command: list[str]) -> subprocess.CompletedProcess[str]:
    """`python -m harness exec` with warn_nth, on this session's kernel, engine and accelerator."""
    argv = [sys.executable, "-m", "harness", "exec", "-q", *same_guest_options(session), *extra, "--", *command]
    return run(session, argv, REPO)


def source_line(path: Path, statement: str) -> int:
    """The line number of `statement` in `path` (found, never assumed: the decoded frame must name it)."""
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if statement in line)


def explain(proc: subprocess.CompletedProcess[str]) -> str:
    return f"exit {proc.returncode}\n--- stdout ---\n{proc.stdout}\n--- stderr ---\n{proc.stderr}"


def test_warning_on_the_40th_poke_exits_253_and_prints_the_splat(knh_kernel_session: KernelSession) -> None:
    proc = run_exec(knh_kernel_session, command=poke_script(40))
    assert proc.returncode == EXIT_KERNEL_SPLAT, explain(proc)
    assert proc.stdout.splitlines()[-1] == "40", explain(proc)
    assert "WARNING: CPU:" in proc.stderr and "warn_nth_poke_set" in proc.stderr, explain(proc)
    assert "the command's own status was 0" in proc.stderr, explain(proc)
    line = source_line(WARN_NTH / "warn_nth.c", "WARN_ON(count == READ_ONCE(warn_at));")
    assert f"tests/modules/warn_nth/warn_nth.c:{line} (warn_nth_poke_set)" in proc.stderr, explain(proc)


@pytest.mark.full  # each boots a guest of its own; the quick tier keeps the 253 case
def test_39_pokes_do_not_warn_and_exit_0(knh_kernel_session: KernelSession) -> None:
    proc = run_exec(knh_kernel_session, "--dmesg", command=poke_script(39))
    assert proc.returncode == 0, explain(proc)
    assert proc.stdout.splitlines()[1] == "--- guest kernel log since the module load ---", explain(proc)
    assert "warn_nth: loaded, warns on poke write 40" in proc.stdout, explain(proc)
    assert "Linux version" not in proc.stdout, "--dmesg printed the log from boot\n" + explain(proc)
    assert "WARNING" not in proc.stderr + proc.stdout, explain(proc)


@pytest.mark.full  # each boots a guest of its own; the quick tier keeps the 253 case
def test_ignore_splats_keeps_the_commands_status_but_prints_the_splat(knh_kernel_session: KernelSession) -> None:
    proc = run_exec(knh_kernel_session, "--ignore-splats", command=poke_script(40))
    assert proc.returncode == 0, explain(proc)
    assert "WARNING: CPU:" in proc.stderr and "warn_nth_poke_set" in proc.stderr, explain(proc)
    assert "--ignore-splats: exiting with the command's own status 0" in proc.stderr, explain(proc)


@pytest.mark.full  # each boots a guest of its own; the quick tier keeps the 253 case
def test_a_failing_command_without_splat_keeps_its_status(knh_kernel_session: KernelSession) -> None:
    proc = run_exec(knh_kernel_session, command=poke_script(1, then_exit=3))
    assert proc.returncode == 3, explain(proc)
    assert proc.stdout.splitlines()[-1] == "1" and "kernel splat" not in proc.stderr, explain(proc)


@pytest.mark.full  # each boots a guest of its own; the quick tier keeps the 253 case
def test_warning_on_the_40th_poke_fails_a_pytest_run(knh_kernel_session: KernelSession, tmp_path: Path) -> None:
    test_file = tmp_path / "test_poke.py"
    test_file.write_text(f"def test_forty_pokes(kmod, guest):\n    assert guest.run({poke_script(40)!r}).status == 0\n")
    argv = [sys.executable, "-m", "pytest", str(test_file), "-q", "-p", "no:cacheprovider",
            *same_guest_options(knh_kernel_session)]  # fmt: skip
    proc = run(knh_kernel_session, argv, tmp_path)
    assert proc.returncode == 1, explain(proc)
    assert "1 failed" in proc.stdout and "[warning:warn_nth_poke_set:" in proc.stdout, explain(proc)


def test_an_oops_in_init_is_decoded_to_the_dereferencing_line(knh_kernel_session: KernelSession) -> None:
    """crashy with oops_init=1 writes through NULL in its init: exec exits 253 and names crashy.c at the
    write, from the RIP frame decoded with the .ko's debug info."""
    crashy = REPO / "tests" / "modules" / "crashy"
    options = [*same_guest_options(knh_kernel_session)[:-2], "--module-dir", str(crashy),
               "--module-param", "oops_init=1"]  # fmt: skip
    proc = run(knh_kernel_session, [sys.executable, "-m", "harness", "exec", "-q", *options, "--", "true"], REPO)
    assert proc.returncode == EXIT_KERNEL_SPLAT, explain(proc)
    line = source_line(crashy / "crashy.c", "*crashy_null = 1;")
    assert "--- module frames decoded (addr2line) ---" in proc.stderr, explain(proc)
    assert "crashy_init+0x" in proc.stderr and f"tests/modules/crashy/crashy.c:{line} (crashy_init)" in proc.stderr, (
        explain(proc))  # fmt: skip
