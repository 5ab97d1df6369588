"""One type for what the splat allowlist lets through: a splat of the kernel log and an object of a
kmemleak reading are both an `Allowed`, and both reports name the entry the same way."""

from __future__ import annotations

from pathlib import Path

from harness.kernel_log.dmesg import Allowed, parse_allowlist, scan_splats
from harness.kernel_log.kmemleak import LeakReading, judge_leaks, parse_kmemleak

DATA = Path(__file__).resolve().parent / "data"
ALLOWLIST = """\
# a splat, then a leaked object of the kernel's
WARNING: CPU: \\d+ PID: \\d+ at lib/vsprintf\\.c ## vsprintf warns on %pZ on purpose
unreferenced object 0x[0-9a-f]+ \\(size 64\\): from kmalloc_trace\\+ ## a kmalloc the test frees later
"""


def test_a_splat_and_a_leaked_object_let_through_name_their_entry_alike() -> None:
    entries = parse_allowlist(ALLOWLIST, source="allow.txt")
    splats = scan_splats((DATA / "dmesg" / "warning.log").read_text(), entries)
    leaks = judge_leaks(LeakReading(("leak",), tuple(parse_kmemleak((DATA / "kmemleak" / "kmemleak-6.1.txt")
                                                                    .read_text())), (5.0,)), entries)  # fmt: skip
    (splat,), (leak,) = splats.allowed, leaks.allowed
    assert isinstance(splat, Allowed) and isinstance(leak, Allowed)
    assert splat.why == "vsprintf warns on %pZ on purpose (allow.txt:2)"
    assert leak.why == "a kmalloc the test frees later (allow.txt:3)"
    assert splat.why in splats.summary() and leak.why in leaks.kernel_message()
