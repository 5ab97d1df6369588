"""The splat parser (harness.kernel_log.dmesg) and the module-frame reader (harness.kernel_log.frames) read
a call trace with one table of line regexes: a line of the log ends the trace for both or for neither."""

from __future__ import annotations

import pytest

from harness.kernel_log.dmesg import scan_splats
from harness.kernel_log.frames import module_frames

# x86-64 register lines as __show_regs and show_ip print them inside a trace (a task's user registers at the
# bottom of a syscall's trace, an interrupted task's registers in an IRQ's): part of the trace.
REGISTER_LINES = (
    "RIP: 0033:0x7f3b2c1e4f3d",
    "Code: 5b 41 5c c3 66 0f 1f 84 00 00 00 00 00 f3 0f 1e fa 48 89 f8 48 89 f7 48 89 d6",
    "RSP: 002b:00007ffd7b6c1e58 EFLAGS: 00000246 ORIG_RAX: 0000000000000139",
    "RAX: ffffffffffffffda RBX: 000055d0c6f1a7c0 RCX: 00007f3b2c1e4f3d",
    "RDX: 0000000000000000 RSI: 000055d0c5f8e260 RDI: 0000000000000003",
    "RBP: 000055d0c5f8e260 R08: 0000000000000000 R09: 000055d0c6f1a7c0",
    "R10: 0000000000000003 R11: 0000000000000246 R12: 0000000000000000",
    "R13: 000055d0c6f1a780 R14: 0000000000000000 R15: 0000000000000000",
    "FS:  00007f3b2c0d6740(0000) GS:ffff88803ec00000(0000) knlGS:0000000000000000",
    "CS:  0010 DS: 0000 ES: 0000 CR0: 0000000080050033",
    "CR2: 000055d0c5f8f000 CR3: 0000000004b0a000 CR4: 00000000000006f0",
    "DR0: 0000000000000000 DR1: 0000000000000000 DR2: 0000000000000000",
    "DR3: 0000000000000000 DR6: 00000000fffe0ff0 DR7: 0000000000000400",
    "PKRU: 55555554",
)
# Messages of their own that start like a register name: the trace ended before them.
OTHER_LINES = (
    "FS-Cache: Loaded",  # fscache's init
    "FS-Cache: Netfs 'nfs' registered for caching",  # a module that uses fscache, at its load (before 5.17)
)


def warning_then(line: str) -> list[str]:
    """A WARNING whose call trace has no <TASK> markers (arm64, kernels before 5.16), `line` inside it."""
    return [
        "WARNING: CPU: 0 PID: 1 at m.c:1 warn_site+0x1/0x2 [m]",
        "Call Trace:",
        " caller_a+0x10/0x20 [m]",
        line,
        " after_b+0x10/0x20 [m]",
        " do_one_initcall+0x4c/0x310",
    ]


def trace_goes_on(line: str) -> tuple[bool, bool]:
    """(the splat parser reads the frame after `line` as a call-trace frame, the frame reader does)."""
    block = warning_then(line)
    (splat,) = scan_splats(block).failures
    in_fingerprint = "after_b" in splat.fingerprint.split(":")
    in_trace = [f.function for f in module_frames(block)] == ["caller_a", "after_b", "warn_site"]
    return in_fingerprint, in_trace


@pytest.mark.parametrize("line", REGISTER_LINES)
def test_a_register_line_is_part_of_the_trace_for_both(line: str) -> None:
    assert trace_goes_on(line) == (True, True)


@pytest.mark.parametrize("line", OTHER_LINES)
def test_a_message_named_like_a_register_ends_the_trace_for_both(line: str) -> None:
    assert trace_goes_on(line) == (False, False)
