"""The guest launcher's child setup (harness.guest.vm._child_setup), in a real forked child."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

# A parent that ignores the hangup signals (as under nohup, or `cmd &` in a script) starts a child
# through _child_setup; the child reports the signals it ignores (SigIgn of /proc/self/status).
PROGRAM = """
import signal, subprocess, sys
from harness.guest import vm
for sig in vm.HANGUP_SIGNALS:
    signal.signal(sig, signal.SIG_IGN)
log = sys.argv[1]
out = subprocess.run(["grep", "SigIgn", "/proc/self/status"], capture_output=True, text=True,
                     preexec_fn=lambda: vm._child_setup(log), check=True).stdout
print(out.split()[1])
"""


def test_child_setup_gives_the_guest_tree_default_hangup_signals(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-c", PROGRAM, str(tmp_path / "kernel.log")], capture_output=True,
                         text=True, check=True).stdout  # fmt: skip
    ignored = int(out.strip(), 16)
    for sig in (signal.SIGHUP, signal.SIGINT, signal.SIGQUIT):
        assert not ignored & (1 << (sig - 1)), f"{sig.name} ignored in the guest launcher's child: {out}"
    assert (tmp_path / "kernel.log").exists()  # stderr went to the guest kernel console file


# The orphan guard (PR_SET_PDEATHSIG) with an option number the kernel refuses: the child says so.
GUARD_PROGRAM = """
import subprocess, sys
from harness.guest import vm
if sys.argv[2] == "refused":
    vm._PR_SET_PDEATHSIG = 0x7FFFFFFF
subprocess.run(["true"], preexec_fn=lambda: vm._child_setup(sys.argv[1]), check=True)
"""


def _child_log(tmp_path: Path, case: str) -> str:
    log = tmp_path / f"kernel-{case}.log"
    subprocess.run([sys.executable, "-c", GUARD_PROGRAM, str(log), case], check=True)
    return log.read_text()


def test_a_refused_orphan_guard_is_written_to_the_guest_kernel_console_file(tmp_path: Path) -> None:
    text = _child_log(tmp_path, "refused")
    assert "prctl(PR_SET_PDEATHSIG" in text and "Invalid argument" in text, text
    assert "outlive" in text, text


def test_the_orphan_guard_in_place_writes_nothing(tmp_path: Path) -> None:
    assert _child_log(tmp_path, "ok") == ""
