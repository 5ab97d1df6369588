"""The load/unload check's pure parts: memory readings, the outcome of a row, the table, the exit status."""

from __future__ import annotations

from harness.cli.base import EXIT_GUEST_DIED, EXIT_HARNESS, EXIT_KERNEL_SPLAT
from harness.cli.commands import CHECK_STATUS
from harness.guest.kernel_ops import parse_usage
from harness.loadcheck import CheckRow, format_table, parse_meminfo


def test_meminfo_in_kb() -> None:
    text = "MemTotal:        1000 kB\nMemAvailable:     800 kB\nSlab:  120 kB\nSUnreclaim: 40 kB\nHugePages_Total: 0\n"
    assert parse_meminfo(text) == {"MemTotal": 1000, "MemAvailable": 800, "Slab": 120, "SUnreclaim": 40,
                                   "HugePages_Total": 0}  # fmt: skip


def test_the_worst_outcome_wins_and_every_problem_is_kept() -> None:
    row = CheckRow("6.1")
    assert (row.status, row.outcome) == ("PASS", "pass")
    row.fail("fail", "cycle 2: x still loaded")
    row.fail("splat", "WARNING in x_exit")
    row.fail("fail", "slab grew")
    assert (row.status, row.outcome) == ("FAIL", "splat")
    assert row.problems == ["cycle 2: x still loaded", "WARNING in x_exit", "slab grew"]
    excluded = CheckRow("6.1")
    excluded.fail("skip", "dkms.conf of x: BUILD_EXCLUSIVE_KERNEL")
    assert excluded.status == "SKIP"


def test_exit_status_per_outcome() -> None:
    assert CHECK_STATUS == {"pass": 0, "skip": 0, "fail": 1, "splat": EXIT_KERNEL_SPLAT, "harness": EXIT_HARNESS,
                            "died": EXIT_GUEST_DIED}  # fmt: skip


def test_table_aligns_columns_and_lists_problems_after_it() -> None:
    ok = CheckRow("6.12.1", build="makefile, 0 warnings", load="crc8+drv", cycles="10/10", splats="0",
                  taint="none", slab="+4 kB", kmemleak="n/a")  # fmt: skip
    bad = CheckRow("6.1.0", build="makefile, 2 warnings")
    bad.fail("fail", "rmmod drv failed: reference count 1")
    lines = format_table([ok, bad]).splitlines()
    assert lines[0].split() == ["kernel", "build", "load", "cycles", "splats", "new", "taint", "slab", "kmemleak",
                                "verdict"]  # fmt: skip
    assert lines[1].index("crc8+drv") == lines[0].index("load") and lines[1].endswith("PASS")
    assert lines[2].endswith("FAIL") and lines[3] == "6.1.0: rmmod drv failed: reference count 1"


def test_usage_of_a_busy_module() -> None:
    assert parse_usage("refcnt 2\nholder videodev\nholder v4l2loopback\n") == (2, ["videodev", "v4l2loopback"])
    assert parse_usage("cat: /sys/module/x/refcnt: No such file or directory\nrefcnt \n") == (None, [])
