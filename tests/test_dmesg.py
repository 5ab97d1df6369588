"""Tests for harness.kernel_log.dmesg against golden kernel logs and hand-made snippets."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.config import DEFAULT_ALLOWLIST
from harness.errors import ConfigError
from harness.kernel_log.dmesg import (
    AllowEntry,
    AllowlistError,
    KernelLine,
    LineStream,
    Splat,
    decode_taint,
    find_splats,
    iter_lines,
    iter_numbered_lines,
    iter_splats,
    load_allowlist,
    parse_allowlist,
    parse_line,
    parse_lines,
    scan_splats,
    unexpected_taint,
)

DATA = Path(__file__).parent / "data" / "dmesg"
SHIPPED_ALLOWLIST = DEFAULT_ALLOWLIST


def golden(name: str) -> str:
    return (DATA / name).read_text(encoding="utf-8")


# ---------------------------------------------------------------------------
# Line parsing
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (
            "[   12.345678] knetlink: hello",
            KernelLine(None, 12.345678, "knetlink: hello", "[   12.345678] knetlink: hello"),
        ),
        (
            "<6>[    3.105612] Init OK!",
            KernelLine(6, 3.105612, "Init OK!", "<6>[    3.105612] Init OK!"),
        ),
        (
            # A userspace message written to /dev/kmsg: facility 1, level 5.
            "<13>[    9.000001] virtme-init: hi",
            KernelLine(5, 9.000001, "virtme-init: hi", "<13>[    9.000001] virtme-init: hi"),
        ),
        ("<4>no timestamp", KernelLine(4, None, "no timestamp", "<4>no timestamp")),
        (
            "[ 1081.418714][    C3] irq 4: nobody cared",
            KernelLine(None, 1081.418714, "irq 4: nobody cared", "[ 1081.418714][    C3] irq 4: nobody cared", "C3"),
        ),
        (
            "<4>[    1.000000][  T123]  dump_stack_lvl+0x44/0x5c",
            KernelLine(
                4, 1.0, " dump_stack_lvl+0x44/0x5c", "<4>[    1.000000][  T123]  dump_stack_lvl+0x44/0x5c", "T123"
            ),
        ),
        (
            "6,1042,39566544,-,caller=T141;Init OK!",
            KernelLine(6, 39.566544, "Init OK!", "6,1042,39566544,-,caller=T141;Init OK!", "T141"),
        ),
        (
            "4,7,1500,c;\\x5c tab\\x09 euro\\xe2\\x82\\xac",
            KernelLine(4, 0.0015, "\\ tab\t euro\u20ac", "4,7,1500,c;\\x5c tab\\x09 euro\\xe2\\x82\\xac"),
        ),
        ("just some output\r\n", KernelLine(None, None, "just some output", "just some output")),
        ("[    2.453501] link:", KernelLine(None, 2.453501, "link:", "[    2.453501] link:")),
        ("[    2.453501] ", KernelLine(None, 2.453501, "", "[    2.453501] ")),
        (
            '  comm "knl_send", pid 150',
            KernelLine(None, None, '  comm "knl_send", pid 150', '  comm "knl_send", pid 150'),
        ),
        ("", KernelLine(None, None, "", "")),
    ],
)
def test_parse_line(raw: str, expected: KernelLine) -> None:
    assert parse_line(raw) == expected


def test_parse_line_keeps_trailing_blanks_of_the_message() -> None:
    assert parse_line("[    2.452911] link: x \r\n").text == "link: x "


def test_kmsg_dictionary_lines_are_skipped_and_numbering_kept() -> None:
    numbered = list(iter_numbered_lines(golden("warning_kmsg.log")))
    assert [n for n, _ in numbered[:6]] == [1, 2, 3, 6, 7, 8]
    assert not any("SUBSYSTEM=" in line.text or "DEVICE=" in line.text for _, line in numbered)
    assert numbered[0][1].text == "rcu: \tRCU event tracing is enabled."
    assert numbered[1][1].caller == "T141"


def test_leading_blank_lines_are_kept_outside_kmsg() -> None:
    lines = parse_lines(golden("kmemleak.log"))
    assert lines[5].text == '  comm "knl_send", pid 150, jiffies 4294902110 (age 12.348s)'
    assert len(lines) == 24


def test_parse_lines_accepts_str_bytes_and_iterables() -> None:
    text = "[    1.000000] a\r\n<4>[    2.000000] b\n"
    expected = [
        KernelLine(None, 1.0, "a", "[    1.000000] a"),
        KernelLine(4, 2.0, "b", "<4>[    2.000000] b"),
    ]
    assert parse_lines(text) == expected
    assert parse_lines(text.encode()) == expected
    assert parse_lines(text.splitlines(keepends=True)) == expected
    assert parse_lines(expected) == expected
    assert list(iter_lines(iter(["x"]))) == [KernelLine(None, None, "x", "x")]


def test_parse_lines_bytes_with_invalid_utf8() -> None:
    assert parse_lines(b"[    1.000000] bad \xff byte\n")[0].text == "bad \ufffd byte"


def test_line_stream() -> None:
    stream = LineStream(iter_numbered_lines("a\nb\nc\n"))
    assert not stream.at_end()
    assert stream.peek().text == "a"
    assert stream.peek(2).text == "c"
    assert stream.at_end(3)
    assert stream.line_number(1) == 2
    assert stream.pop().text == "a"
    assert stream.pop_numbered() == (2, KernelLine(None, None, "b", "b"))
    assert stream.line_number() == 3
    assert [n for n, _ in stream] == [3]
    assert stream.at_end()
    with pytest.raises(IndexError):
        stream.peek()
    with pytest.raises(IndexError):
        stream.pop()


def test_line_stream_is_lazy() -> None:
    consumed: list[int] = []

    def source() -> Iterator[tuple[int, KernelLine]]:
        for i in range(1, 1000):
            consumed.append(i)
            yield i, KernelLine(None, None, str(i), str(i))

    stream = LineStream(source())
    stream.peek(2)
    assert consumed == [1, 2, 3]


# ---------------------------------------------------------------------------
# Splats in golden logs
# ---------------------------------------------------------------------------

WARNING_FP = "warning:format_decode:vsnprintf:sprintf:knl_format_msg"
SOFT_LOCKUP_FP = "soft-lockup:knl_wait_ready:knl_selftest:knl_rcv_msg:netlink_rcv_skb"

GOLDEN_SPLATS: dict[str, list[tuple[str, int, int, str]]] = {
    # name: [(kind, first line, block length, fingerprint)]
    "clean_boot.log": [],
    "warning.log": [("warning", 5, 44, WARNING_FP)],
    "warning_kmsg.log": [("warning", 8, 44, WARNING_FP)],
    "null_deref.log": [
        ("null-deref", 5, 55, "null-deref:knl_handle_get:knl_rcv_msg:netlink_rcv_skb:knl_rcv"),
    ],
    "panic.log": [("gpf", 3, 52, "gpf:knl_table_remove:knl_del_entry:knl_rcv_msg:netlink_rcv_skb")],
    "soft_lockup.log": [("soft-lockup", 3, 37, SOFT_LOCKUP_FP), ("soft-lockup", 40, 37, SOFT_LOCKUP_FP)],
    "rcu_stall.log": [
        (
            "rcu-stall",
            3,
            41,
            "rcu-stall:native_queued_spin_lock_slowpath:_raw_spin_lock:knl_table_lookup:knl_rcv_msg",
        ),
    ],
    "hung_task.log": [("hung-task", 3, 30, "hung-task:-:__mutex_lock:knl_rcv_msg:netlink_rcv_skb")],
    "ubsan.log": [("ubsan", 4, 30, "ubsan:-:knl_count_attrs:knl_rcv_msg:netlink_rcv_skb")],
    "kmemleak.log": [
        ("kmemleak", 4, 1, "kmemleak:-"),
        ("kmemleak", 5, 19, "kmemleak:-:knl_store_msg:knl_rcv_msg:netlink_rcv_skb"),
    ],
}


def test_every_golden_log_has_expectations() -> None:
    assert sorted(GOLDEN_SPLATS) == sorted(p.name for p in DATA.glob("*.log"))


@pytest.mark.parametrize("name", sorted(GOLDEN_SPLATS))
def test_golden_splats(name: str) -> None:
    splats = find_splats(golden(name))
    assert [(s.kind, s.line_no, len(s.lines), s.fingerprint) for s in splats] == GOLDEN_SPLATS[name]


@pytest.mark.parametrize("name", sorted(GOLDEN_SPLATS))
def test_golden_splats_same_from_parsed_lines(name: str) -> None:
    """KernelLine input numbers lines by position; apart from that it agrees."""
    from_text = find_splats(golden(name))
    from_lines = find_splats(parse_lines(golden(name)))
    assert [(s.kind, s.lines, s.fingerprint) for s in from_lines] == [
        (s.kind, s.lines, s.fingerprint) for s in from_text
    ]


def test_warning_block_boundaries() -> None:
    (splat,) = find_splats(golden("warning.log"))
    assert splat.lines[0] == "------------[ cut here ]------------"
    assert splat.lines[2] == "WARNING: CPU: 0 PID: 123 at lib/vsprintf.c:2714 format_decode+0x4a1/0x530"
    assert splat.lines[-1] == "---[ end trace 0000000000000000 ]---"


def test_oops_block_keeps_register_summary_but_not_later_lines() -> None:
    (splat,) = find_splats(golden("null_deref.log"))
    assert splat.lines[0] == "BUG: kernel NULL pointer dereference, address: 0000000000000000"
    assert "Oops: 0002 [#1] PREEMPT SMP NOPTI" in splat.lines
    assert splat.lines[-1] == "note: knl_send[131] exited with irqs disabled"


def test_panic_after_oops_is_the_same_incident() -> None:
    (splat,) = find_splats(golden("panic.log"))
    assert "Kernel panic - not syncing: Fatal exception" in splat.lines
    assert splat.lines[-1] == "---[ end Kernel panic - not syncing: Fatal exception ]---"


def test_same_warning_at_other_addresses_and_times_has_same_fingerprint() -> None:
    text = golden("warning.log")

    def shift_time(m: re.Match[str]) -> str:
        return f"[{float(m.group(1)) + 1234.5:12.6f}]"

    def other_address(m: re.Match[str]) -> str:
        return f"{int(m.group(0), 16) ^ 0x5A5A5A0:016x}"

    def other_offsets(m: re.Match[str]) -> str:
        return f"+0x{int(m.group(1), 16) + 3:x}/0x{int(m.group(2), 16) + 64:x}"

    moved = re.sub(r"\[\s*(\d+\.\d+)\]", shift_time, text)
    moved = re.sub(r"\b[0-9a-f]{16}\b", other_address, moved)
    moved = re.sub(r"\+0x([0-9a-f]+)/0x([0-9a-f]+)", other_offsets, moved)
    moved = moved.replace("PID: 123", "PID: 4567").replace("CPU: 0", "CPU: 3")
    assert moved != text
    (original,) = find_splats(text)
    (relocated,) = find_splats(moved)
    assert relocated.lines != original.lines
    assert relocated.fingerprint == original.fingerprint == WARNING_FP


def test_different_call_path_changes_the_fingerprint() -> None:
    text = golden("warning.log").replace("knl_format_msg+", "knl_format_err+")
    (splat,) = find_splats(text)
    assert splat.fingerprint == "warning:format_decode:vsnprintf:sprintf:knl_format_err"


def test_summary() -> None:
    (splat,) = find_splats(golden("warning.log"))
    summary = splat.summary()
    lines = summary.split("\n")
    assert lines[0] == f"warning at log line 5 [{WARNING_FP}]"
    assert lines[1] == "  ------------[ cut here ]------------"
    assert len(lines) == 1 + 15 + 1
    assert lines[-1] == "  ... (29 more lines)"
    assert splat.summary(100).count("\n") == 44


# ---------------------------------------------------------------------------
# Splats in snippets
# ---------------------------------------------------------------------------

LIST_ADD_BUG = (
    (
        "[   10.000001] list_add corruption. prev->next should be next (ffff888003e2c0c8),"
        " but was ffff888003e2c0d8. (prev=ffff888003e2c0c0).\n"
    )
    + """\
[   10.000002] ------------[ cut here ]------------
[   10.000003] kernel BUG at lib/list_debug.c:30!
[   10.000004] invalid opcode: 0000 [#1] PREEMPT SMP NOPTI
[   10.000005] CPU: 0 PID: 139 Comm: knl_send Tainted: G           OE      6.1.0 #1
[   10.000006] RIP: 0010:__list_add_valid.cold+0x3a/0x3c
[   10.000007] Call Trace:
[   10.000008]  <TASK>
[   10.000009]  knl_table_insert+0x51/0x90 [knetlink]
[   10.000010]  knl_rcv_msg+0xc4/0x130 [knetlink]
[   10.000011]  netlink_rcv_skb+0x51/0x100
[   10.000012]  </TASK>
[   10.000013] Modules linked in: knetlink(OE)
[   10.000014] ---[ end trace 0000000000000000 ]---
[   10.000015] RIP: 0010:__list_add_valid.cold+0x3a/0x3c
[   10.000016] knetlink: after
"""
)

REFCOUNT_WARN = """\
[   11.000001] ------------[ cut here ]------------
[   11.000002] refcount_t: underflow; use-after-free.
[   11.000003] WARNING: CPU: 1 PID: 140 at lib/refcount.c:28 refcount_warn_saturate+0xba/0x110
[   11.000004] Modules linked in: knetlink(OE)
[   11.000005] RIP: 0010:refcount_warn_saturate+0xba/0x110
[   11.000006] Call Trace:
[   11.000007]  <TASK>
[   11.000008]  ? __warn+0x81/0x130
[   11.000009]  knl_entry_put+0x3c/0x50 [knetlink]
[   11.000010]  knl_del_entry+0x4a/0x80 [knetlink]
[   11.000011]  knl_rcv_msg+0xc4/0x130 [knetlink]
[   11.000012]  </TASK>
[   11.000013] irq event stamp: 2301
[   11.000014] hardirqs last  enabled at (2309): [<ffffffff810f6a2e>] __up_console_sem+0x5e/0x70
[   11.000015] softirqs last disabled at (2216): [<ffffffff81e0012a>] __irq_exit_rcu+0x9a/0xd0
[   11.000016] ---[ end trace 0000000000000000 ]---
"""

LOCKDEP = """\
[   12.000000] ======================================================
[   12.000001] WARNING: possible circular locking dependency detected
[   12.000002] 6.1.0 #1 Tainted: G           OE
[   12.000003] ------------------------------------------------------
[   12.000004] knl_send/150 is trying to acquire lock:
[   12.000005] ffffffffc0a04120 (knl_table_lock){+.+.}-{3:3}, at: knl_rcv_msg+0x49/0x130 [knetlink]
[   12.000006]
[   12.000007] -> #1 (cb_lock){++++}-{3:3}:
[   12.000008]        down_read+0x3e/0x50
[   12.000009]        genl_rcv+0x15/0x40
[   12.000010]
[   12.000011] stack backtrace:
[   12.000012] CPU: 0 PID: 150 Comm: knl_send Tainted: G           OE      6.1.0 #1
[   12.000013] Call Trace:
[   12.000014]  <TASK>
[   12.000015]  dump_stack_lvl+0x58/0x74
[   12.000016]  check_noncircular+0x107/0x120
[   12.000017]  __lock_acquire+0x1228/0x1e90
[   12.000018]  lock_acquire+0xc2/0x2b0
[   12.000019]  </TASK>
[   12.000020] knetlink: after
"""


def test_list_corruption_bug_is_one_splat() -> None:
    (splat,) = find_splats(LIST_ADD_BUG)
    assert splat.kind == "list-corruption"
    assert splat.line_no == 1
    assert splat.lines[-1] == "RIP: 0010:__list_add_valid.cold+0x3a/0x3c"
    assert splat.fingerprint == "list-corruption:__list_add_valid:knl_table_insert:knl_rcv_msg:netlink_rcv_skb"


def test_refcount_warning_kind_and_irq_stamp_tail() -> None:
    (splat,) = find_splats(REFCOUNT_WARN)
    assert splat.kind == "refcount"
    assert len(splat.lines) == 16
    assert splat.fingerprint == "refcount:refcount_warn_saturate:knl_entry_put:knl_del_entry:knl_rcv_msg"


def test_lockdep_report() -> None:
    (splat,) = find_splats(LOCKDEP)
    assert (splat.kind, splat.line_no, len(splat.lines)) == ("lockdep", 2, 19)
    assert splat.fingerprint == "lockdep:-:check_noncircular:__lock_acquire:lock_acquire"


@pytest.mark.parametrize(
    ("line", "kind"),
    [
        ("BUG: KASAN: slab-out-of-bounds in knl_parse+0x1a/0x40 [knetlink]", "kasan"),
        ("BUG: KFENCE: use-after-free read in knl_parse+0x1a/0x40 [knetlink]", "kfence"),
        ("UBSAN: shift-out-of-bounds in net/netlink/af_netlink.c:10:3", "ubsan"),
        ("watchdog: BUG: soft lockup - CPU#0 stuck for 22s! [kworker/0:1:12]", "soft-lockup"),
        ("NMI watchdog: Watchdog detected hard LOCKUP on cpu 1", "hard-lockup"),
        ("rcu: INFO: rcu_sched detected stalls on CPUs/tasks:", "rcu-stall"),
        ("rcu: INFO: rcu_preempt self-detected stall on CPU", "rcu-stall"),
        ("INFO: task kworker/u4:2:61 blocked for more than 241 seconds.", "hung-task"),
        ("BUG: sleeping function called from invalid context at kernel/locking/mutex.c:580", "sleep-in-atomic"),
        ("BUG: scheduling while atomic: knl_send/150/0x00000002", "sleep-in-atomic"),
        ("WARNING: possible recursive locking detected", "lockdep"),
        ("WARNING: suspicious RCU usage", "lockdep"),
        ("BUG: kernel NULL pointer dereference, address: 0000000000000008", "null-deref"),
        ("Unable to handle kernel NULL pointer dereference at virtual address 0000000000000000", "null-deref"),  # arm64
        ("list_del corruption, ffff888003e2c0c0->next is LIST_POISON1 (dead000000000100)", "list-corruption"),
        ("refcount_t: addition on 0; use-after-free.", "refcount"),
        (
            "Kernel panic - not syncing: stack-protector: Kernel stack is corrupted in: knl_fill+0x9c/0xa0 [knetlink]",
            "stack-protector",
        ),
        ("Kernel panic - not syncing: VFS: Unable to mount root fs on unknown-block(0,0)", "panic"),
        ("general protection fault, probably for non-canonical address 0xdffffc0000000001: 0000 [#1]", "gpf"),
        ("Unable to handle kernel paging request at virtual address ffff800008a3b000", "unable-to-handle"),
        ("Oops: 0000 [#1] PREEMPT SMP NOPTI", "oops"),
        ("invalid opcode: 0000 [#1] PREEMPT SMP NOPTI", "oops"),
        ("kernel BUG at mm/slub.c:435!", "bug"),
        ("BUG: unable to handle page fault for address: ffffc90000a3f000", "bug"),
        ("BUG: Bad page state in process knl_send  pfn:03e2c", "bug"),
        ("WARNING: CPU: 0 PID: 1 at net/core/dev.c:10932 netdev_run_todo+0x2b0/0x2c0", "warning"),
        ("kmemleak: 3 new suspected memory leaks (see /sys/kernel/debug/kmemleak)", "kmemleak"),
        ("unreferenced object 0xffff888004c3a400 (size 64):", "kmemleak"),
        ("------------[ cut here ]------------", "cut-here"),
    ],
)
def test_denylist_kinds(line: str, kind: str) -> None:
    splats = find_splats([f"[    7.000000] {line}"])
    assert [s.kind for s in splats] == [kind]


@pytest.mark.parametrize(
    "line",
    [
        "knetlink: loading out-of-tree module taints kernel.",
        "rcu: Preemptible hierarchical RCU implementation.",
        "kmemleak: Kernel memory leak detector initialized (mem pool available: 15647)",
        "kmemleak: Automatic memory scanning thread started",
        "link:BUG: this is only a payload",
        "link:WARNING: CPU: 0 PID: 1 at x.c:1 f+0x1/0x2",
        "ACPI: PM-Timer IO Port: 0x608",
        "Spectre V2 : Mitigation: Retpolines",
    ],
)
def test_ordinary_lines_are_not_splats(line: str) -> None:
    assert find_splats([f"[    7.000000] {line}"]) == []


def test_site_from_kasan_heading() -> None:
    text = """\
==================================================================
BUG: KASAN: slab-out-of-bounds in knl_parse+0x1a/0x40 [knetlink]
Write of size 1 at addr ffff888004a1c0c8 by task knl_send/123

Call Trace:
 <TASK>
 dump_stack_lvl+0x4c/0x70
 print_report+0xd3/0x620
 kasan_report+0xc1/0xf0
 knl_parse+0x1a/0x40 [knetlink]
 knl_rcv_msg+0x77/0x130 [knetlink]
 netlink_rcv_skb+0x51/0x100
 </TASK>

Allocated by task 123:
 kasan_save_stack+0x22/0x50
 __kmalloc+0x5e/0x170
==================================================================
after
"""
    (splat,) = find_splats(text)
    assert (splat.kind, splat.line_no, len(splat.lines)) == ("kasan", 2, 17)
    assert splat.fingerprint == "kasan:knl_parse:knl_parse:knl_rcv_msg:netlink_rcv_skb"


def test_kmemleak_verbose_dmesg_report() -> None:
    text = """\
[   20.000001] kmemleak: unreferenced object 0xffff888004c3a400 (size 64):
[   20.000002] kmemleak:   comm "knl_send", pid 150, jiffies 4294902110
[   20.000003] kmemleak:   backtrace:
[   20.000004] kmemleak:     [<00000000c3d4e5f6>] kmalloc_trace+0x26/0x90
[   20.000005] kmemleak:     [<00000000c3d4e5f6>] knl_store_msg+0x3c/0x90 [knetlink]
[   20.000006] kmemleak:     [<00000000d4e5f607>] knl_rcv_msg+0xb1/0x130 [knetlink]
[   20.000007] knetlink: after
"""
    (splat,) = find_splats(text)
    assert (splat.kind, len(splat.lines), splat.fingerprint) == ("kmemleak", 6, "kmemleak:-:knl_store_msg:knl_rcv_msg")


def test_heading_without_trace_does_not_swallow_the_log() -> None:
    lines = ["[    1.000000] BUG: Bad page state in process knl_send  pfn:03e2c"]
    lines += [f"[    1.{i:06d}] ordinary line {i}" for i in range(1, 300)]
    lines += ["[    2.000000] WARNING: CPU: 0 PID: 1 at x.c:1 f+0x1/0x2"]
    splats = find_splats(lines)
    assert [(s.kind, s.line_no, len(s.lines)) for s in splats] == [("bug", 1, 1), ("warning", 301, 1)]
    assert splats[1].fingerprint == "warning:f"


def test_standalone_report_starts_a_new_block_before_a_trace() -> None:
    text = """\
rcu: INFO: rcu_preempt detected stalls on CPUs/tasks:
rcu: 	All QSes seen, last rcu_preempt kthread activity 21002 (4294693440-4294672438), jiffies_till_next_fqs=3
INFO: task knl_send:152 blocked for more than 120 seconds.
task:knl_send        state:D stack:0     pid:152   ppid:1      flags:0x00000002
Call Trace:
 <TASK>
 __schedule+0x2e5/0x8a0
 knl_rcv_msg+0x49/0x130 [knetlink]
 </TASK>
"""
    splats = find_splats(text)
    assert [(s.kind, s.line_no, len(s.lines)) for s in splats] == [("rcu-stall", 1, 2), ("hung-task", 3, 7)]


def test_truncated_log_ends_the_block() -> None:
    text = "\n".join(golden("warning.log").splitlines()[:20])
    (splat,) = find_splats(text)
    assert (splat.line_no, len(splat.lines)) == (5, 16)
    assert splat.fingerprint == "warning:format_decode"


def test_old_style_trace_without_task_markers() -> None:
    text = """\
WARNING: CPU: 0 PID: 1 at net/core/dev.c:10 knl_old+0x1/0x2
Call Trace:
 knl_caller+0x10/0x20
 ? unreliable+0x1/0x2
 knl_outer+0x10/0x20
RIP: 0033:0x7f0000000000
 do_syscall_64+0x3a/0x90
ordinary line
"""
    (splat,) = find_splats(text)
    assert len(splat.lines) == 7
    assert splat.fingerprint == "warning:knl_old:knl_caller:knl_outer:do_syscall_64"


def test_iter_splats_is_lazy_and_accepts_a_stream() -> None:
    stream = LineStream.from_log(golden("soft_lockup.log"))
    splats = iter_splats(stream)
    first = next(splats)
    assert first.line_no == 3
    assert stream.line_number() == 40
    assert [s.line_no for s in splats] == [40]


# ---------------------------------------------------------------------------
# Allowlist
# ---------------------------------------------------------------------------


GOLDEN_HEADINGS = {
    "hung_task.log": ["INFO: task knl_send:152 blocked for more than 120 seconds."],
    "kmemleak.log": [
        "kmemleak: 1 new suspected memory leaks (see /sys/kernel/debug/kmemleak)",
        "unreferenced object 0xffff888004c3a400 (size 64):",
    ],
    "null_deref.log": ["BUG: kernel NULL pointer dereference, address: 0000000000000000"],
    "panic.log": [
        "general protection fault, probably for non-canonical address 0xdead000000000122: 0000 [#1] PREEMPT SMP NOPTI"
    ],
    "rcu_stall.log": ["rcu: INFO: rcu_preempt detected stalls on CPUs/tasks:"],
    "ubsan.log": ["UBSAN: array-index-out-of-bounds in /work/main/module/knetlink.c:212:23"],
    "warning.log": ["WARNING: CPU: 0 PID: 123 at lib/vsprintf.c:2714 format_decode+0x4a1/0x530"],
    "warning_kmsg.log": ["WARNING: CPU: 0 PID: 123 at lib/vsprintf.c:2714 format_decode+0x4b1/0x550"],
    "soft_lockup.log": [
        "watchdog: BUG: soft lockup - CPU#1 stuck for 26s! [knl_send:144]",
        "watchdog: BUG: soft lockup - CPU#1 stuck for 52s! [knl_send:144]",
    ],
}


@pytest.mark.parametrize("name", sorted(GOLDEN_HEADINGS))
def test_splat_heading_is_the_line_that_names_the_report(name: str) -> None:
    assert [s.heading for s in iter_splats(golden(name))] == GOLDEN_HEADINGS[name]


def test_cut_here_heading_skips_the_marker_and_the_warn_message() -> None:
    (splat,) = find_splats(golden("warning.log"))
    assert splat.lines[:2] == ("------------[ cut here ]------------", "Please remove unsupported %pZ in format string")
    assert splat.heading == splat.lines[2]


def test_shipped_allowlist_is_valid_and_empty() -> None:
    assert load_allowlist(SHIPPED_ALLOWLIST) == ()


def test_shipped_example_entry_allows_only_its_heading() -> None:
    example = [ln for ln in SHIPPED_ALLOWLIST.read_text().splitlines() if ln.startswith("#   ^")]
    assert len(example) == 1
    (entry,) = parse_allowlist(example[0].removeprefix("#"))
    assert entry.reason == "known QEMU virtio quirk, not ours"
    virtio = golden("warning.log").replace("at lib/vsprintf.c:2714", "at drivers/virtio/virtio_ring.c:2714")
    assert scan_splats(virtio, [entry]).ok
    assert not scan_splats(golden("warning.log"), [entry]).ok


def test_allowlist_line_starting_with_hashes_is_a_comment() -> None:
    assert parse_allowlist("## section: printk quirks\n   ## indented\n") == ()


def test_parse_allowlist() -> None:
    text = "# comment\n\n   # indented comment\n^WARNING: .* at lib/vsprintf\\.c:\\d+ ##  printf quirk  \nfoo##bar\n"
    entries = parse_allowlist(text, source="list.txt")
    assert [(e.pattern.pattern, e.reason, e.source, e.line_no) for e in entries] == [
        (r"^WARNING: .* at lib/vsprintf\.c:\d+", "printf quirk", "list.txt", 4),
        ("foo", "bar", "list.txt", 5),
    ]


def test_allowlist_suppresses_with_reason(tmp_path: Path) -> None:
    path = tmp_path / "allow.txt"
    path.write_text("# ours\nWARNING: .* at lib/vsprintf\\.c:\\d+ ## format_decode warns on %pZ on purpose\n")
    allowlist = load_allowlist(path)
    text = golden("warning.log") + golden("hung_task.log")
    report = scan_splats(text, allowlist)
    assert [s.kind for s in report.failures] == ["hung-task"]
    assert not report.ok
    (allowed,) = report.allowed
    assert allowed.splat.fingerprint == WARNING_FP
    assert allowed.reason == "format_decode warns on %pZ on purpose"
    assert allowed.entry.source == str(path)
    assert allowed.entry.line_no == 2
    assert f"{path}:2" in report.summary()
    assert "format_decode warns on %pZ on purpose" in report.summary()
    assert [s.kind for s in find_splats(text, allowlist)] == ["hung-task"]
    assert [s.kind for s in find_splats(text)] == ["warning", "hung-task"]


@pytest.mark.parametrize(
    "regex",
    [
        r"^\s*knl_format_msg\+",  # a call-trace frame of the module
        r"\s*knl_rcv_msg\+0x8e/0x130 \[knetlink\]",
        r"Modules linked in: knetlink",
        r"Modules linked in:",
        r"RIP: 0010:format_decode",  # a register line
        r"Please remove unsupported %pZ",  # the WARN message before the heading
        r"-+\[ cut here \]-+",  # the marker before the heading
        r"lib/vsprintf\.c",  # in the heading, but not from its start
    ],
)
def test_allowlist_entry_outside_the_heading_does_not_allow(regex: str) -> None:
    (entry,) = parse_allowlist(f"{regex} ## not the heading")
    for name in ("warning.log", "warning_kmsg.log"):
        report = scan_splats(golden(name), [entry])
        assert [s.fingerprint for s in report.failures] == [WARNING_FP], name
        assert report.allowed == ()


@pytest.mark.parametrize("name", sorted(GOLDEN_HEADINGS))
def test_allowlist_entry_matching_the_heading_allows(name: str) -> None:
    entries = parse_allowlist("".join(f"{re.escape(h)} ## heading of {name}\n" for h in GOLDEN_HEADINGS[name]))
    report = scan_splats(golden(name), entries)
    assert report.ok
    assert [a.splat.heading for a in report.allowed] == GOLDEN_HEADINGS[name]


def test_allowlist_entry_matches() -> None:
    splat = Splat("warning", 1, ("------------[ cut here ]------------", "WARNING: x", " f+0x1/0x2"), "warning:-")
    assert AllowEntry(re.compile("WARNING: x"), "why").matches(splat)
    assert AllowEntry(re.compile(r".*: x$"), "why").matches(splat)
    assert not AllowEntry(re.compile(r"f\+0x"), "why").matches(splat)
    assert not AllowEntry(re.compile(r"\s*f\+0x"), "why").matches(splat)
    assert not AllowEntry(re.compile("x"), "why").matches(splat)


@pytest.mark.parametrize(
    ("text", "line_no", "problem"),
    [
        ("# ok\nWARNING: foo\n", 2, "missing '## <reason>'; fix: "),
        ("\nWARNING: foo ##   \n", 2, "empty reason after '##'; fix: "),
        ("ok ## fine\n\n\nfoo(bar ## unbalanced\n", 4, "invalid regex 'foo(bar'"),
        ("BUG: [a-## bad class\n", 1, "invalid regex 'BUG: [a-'"),
    ],
    ids=["no-reason", "empty-reason", "unbalanced-paren", "open-class"],
)
def test_malformed_allowlist(tmp_path: Path, text: str, line_no: int, problem: str) -> None:
    path = tmp_path / "bad.txt"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_allowlist(path)
    message = str(info.value)
    assert message.startswith(f"{path}:{line_no}: {problem}")
    assert "; fix: " in message
    assert isinstance(info.value, AllowlistError)
    assert (info.value.source, info.value.line_no) == (str(path), line_no)


def test_missing_allowlist_file_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / "no-such-allowlist.txt"
    with pytest.raises(ConfigError) as info:
        load_allowlist(path)
    assert str(info.value).startswith(f"{path}: cannot read the splat allowlist: No such file or directory; fix: ")
    assert "--splat-allowlist" in str(info.value)


@pytest.mark.parametrize("kind", ["directory", "not-utf8"])
def test_unreadable_allowlist_file_names_the_path(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "allow.txt"
    if kind == "directory":
        path.mkdir()
    else:
        path.write_bytes(b"WARNING: \xff ## latin-1\n")
    with pytest.raises(ConfigError, match=f"^{re.escape(str(path))}: cannot read the splat allowlist: .*; fix: "):
        load_allowlist(path)


# ---------------------------------------------------------------------------
# Taint
# ---------------------------------------------------------------------------


def test_decode_taint_none() -> None:
    assert decode_taint(0) == []


def test_decode_taint_letters() -> None:
    flags = decode_taint((1 << 0) | (1 << 9) | (1 << 12) | (1 << 13))
    assert [(f.bit, f.letter) for f in flags] == [(0, "P"), (9, "W"), (12, "O"), (13, "E")]
    assert str(flags[1]) == "W (bit 9): kernel issued warning"


def test_all_known_taint_bits() -> None:
    flags = decode_taint((1 << 20) - 1)
    assert "".join(f.letter for f in flags) == "PFSRMBUDAWCIOELKXTNJ"
    assert [f.bit for f in flags] == list(range(20))
    assert flags[18].description == "an in-kernel test has been run"


def test_unknown_taint_bits() -> None:
    flags = decode_taint((1 << 25) | (1 << 7))
    assert [(f.bit, f.letter, f.description) for f in flags] == [
        (7, "D", "kernel died recently, i.e. there was an OOPS or BUG"),
        (25, "?", "unknown taint bit 25"),
    ]


def test_negative_taint_is_rejected() -> None:
    with pytest.raises(ValueError):
        decode_taint(-1)


T_O, T_E, T_W, T_D, T_L = 1 << 12, 1 << 13, 1 << 9, 1 << 7, 1 << 14


@pytest.mark.parametrize(
    ("before", "after", "allowed", "letters"),
    [
        (0, T_O | T_E, "OE", ""),
        (0, T_O | T_E | T_W, "OE", "W"),
        (T_W, T_O | T_E | T_W, "OE", ""),
        (0, T_O | T_E, "", "OE"),
        (0, T_D | T_W | T_L | T_O, "OE", "DWL"),
        (T_O | T_E, T_O | T_E | (1 << 30), "OE", "?"),
        (T_W, 0, "OE", ""),
    ],
)
def test_unexpected_taint(before: int, after: int, allowed: str, letters: str) -> None:
    assert "".join(f.letter for f in unexpected_taint(before, after, allowed)) == letters


def test_unexpected_taint_default_allows_module_loading() -> None:
    assert unexpected_taint(0, T_O | T_E) == []
    assert [f.letter for f in unexpected_taint(0, T_O | T_E | T_W)] == ["W"]


def test_lost_guest_error_names_the_panic_even_when_the_trace_outgrows_the_tail(tmp_path: Path) -> None:
    from harness.errors import LostGuestError
    from harness.guest.vm import console_splats

    frames = [f"[    1.874947]  ? some_function_{i}+0x44/0x240" for i in range(60)]
    log = tmp_path / "kernel.log"
    log.write_text("\n".join([
        "[    1.874000] sysrq: Trigger a crash",
        "[    1.874100] Kernel panic - not syncing: sysrq triggered crash",
        "[    1.874628] CPU: 0 PID: 131 Comm: bash Not tainted 6.1.0-56-amd64 #1  Debian 6.1.192-2",
        "[    1.874865] Call Trace:",
        "[    1.874947]  <TASK>",
        "[    1.874947]  panic+0x118/0x2f4",
        "[    1.874947]  sysrq_handle_crash+0x16/0x20",
        *frames,
        "[    1.874947]  </TASK>",
        "[    1.874947] Kernel Offset: disabled",
    ]) + "\n")  # fmt: skip
    message = str(LostGuestError("guest console closed", kernel_log=log, splats=console_splats(log)))
    assert "sysrq triggered crash" not in message.split("(last lines) ---")[1]  # beyond the tail ...
    assert "--- kernel splats on the guest kernel console ---\npanic at log line 2" in message  # ... but named
    assert "Kernel panic - not syncing: sysrq triggered crash" in message
