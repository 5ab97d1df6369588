"""Debug-kernel reports (KASAN, UBSAN, lockdep, ODEBUG, sleeping in atomic context, kmemleak) of 6.1 and
6.12 parse as splats: kind, heading, the module's functions, a fingerprint without addresses.

Golden logs: tests/data/dmesg/debug/<report>-<kernel>.log, the reports of the modules under
tests/modules (slab_oob, array_oob, lock_order, timer_freed, sleep_in_atomic how=alloc):
6.1's are captured from the debug kernel (`python -m harness exec --kernel debug ... -- sh -c
'rmmod MODULE; dmesg'`), 6.12's follow that kernel's report formats (UBSAN between a
[ cut here ] marker and ---[ end trace ]---, ODEBUG with the object's address, CPU lines with
UID). tests/data/kmemleak/kmemleak-<kernel>.txt: /sys/kernel/debug/kmemleak after the leak
module's rmmod and a scan (6.1's captured).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from elf_objects import gcc_object  # tests/elf_objects.py

from harness.formats.elf import ko_functions
from harness.kernel_log.dmesg import Splat, find_splats, parse_allowlist, scan_splats
from harness.kernel_log.frames import ModuleFrame, module_frames, names_module_function
from harness.kernel_log.kmemleak import (
    CLEAR,
    KMEMLEAK_PATH,
    SCAN,
    ModuleSymbols,
    module_symbols,
    parse_kmemleak,
    parse_sections,
    scan_delay,
    sections_argv,
    split_by_module,
    symbolize,
    write_argv,
)

DATA = Path(__file__).resolve().parent / "data"
DEBUG_LOGS = DATA / "dmesg" / "debug"
KERNELS = sorted({p.stem.split("-", 1)[1] for p in DEBUG_LOGS.glob("*.log")})

# report -> (kind, heading start, module, the module's functions innermost first)
EXPECTED: dict[str, tuple[str, str, str, list[str]]] = {
    "kasan": ("kasan", "BUG: KASAN: slab-out-of-bounds in slab_oob_read+", "slab_oob",
              ["slab_oob_read", "slab_oob_init"]),
    "ubsan": ("ubsan", "UBSAN: array-index-out-of-bounds in ", "array_oob", ["array_oob_read", "array_oob_init"]),
    "lockdep": ("lockdep", "WARNING: possible circular locking dependency detected", "lock_order",
                ["lock_order_ba", "lock_order_init", "lock_order_ab"]),
    "odebug": ("odebug", "ODEBUG: free active (active state 0) ", "timer_freed",
               ["timer_freed_release", "timer_freed_exit", "timer_freed_fn"]),
    "sleep": ("sleep-in-atomic", "BUG: sleeping function called from invalid context at ", "sleep_in_atomic",
              ["sleep_in_atomic_locked", "sleep_in_atomic_init"]),
}  # fmt: skip

# Fingerprints: the same on both kernels but for ODEBUG (6.1's kfree tail-calls __kmem_cache_free).
FINGERPRINTS: dict[str, str] = {
    "kasan": "kasan:slab_oob_read:slab_oob_read:slab_oob_init:do_one_initcall",
    "ubsan": "ubsan:-:array_oob_read:array_oob_init:do_one_initcall",
    "lockdep": "lockdep:-:check_noncircular:__lock_acquire:lock_acquire",
    "odebug-6.1": "odebug:debug_print_object:__kmem_cache_free:timer_freed_release:timer_freed_exit",
    "odebug-6.12": "odebug:debug_print_object:kfree:timer_freed_release:timer_freed_exit",
    "sleep": "sleep-in-atomic:-:sleep_in_atomic_locked:sleep_in_atomic_init:do_one_initcall",
}

CASES = [(report, kernel) for kernel in KERNELS for report in EXPECTED]


def the_splat(report: str, kernel: str) -> Splat:
    path = DEBUG_LOGS / f"{report}-{kernel}.log"
    splats = find_splats(path.read_text())
    assert len(splats) == 1, f"{path.name}: {[s.summary(3) for s in splats]}"
    return splats[0]


def test_golden_logs_of_both_kernels_are_there() -> None:
    assert KERNELS == ["6.1", "6.12"]
    assert {p.name for p in DEBUG_LOGS.glob("*.log")} == {f"{r}-{k}.log" for r, k in CASES}


@pytest.mark.parametrize(("report", "kernel"), CASES)
def test_report_is_one_splat_with_kind_heading_and_fingerprint(report: str, kernel: str) -> None:
    kind, heading, _, _ = EXPECTED[report]
    fingerprint = FINGERPRINTS.get(f"{report}-{kernel}") or FINGERPRINTS[report]
    splat = the_splat(report, kernel)
    assert splat.kind == kind
    assert splat.heading.startswith(heading)
    assert splat.fingerprint == fingerprint
    assert "0x" not in splat.fingerprint and "ffff" not in splat.fingerprint


@pytest.mark.parametrize(("report", "kernel"), CASES)
def test_report_names_the_modules_functions_innermost_first(report: str, kernel: str) -> None:
    _, _, module, functions = EXPECTED[report]
    splat = the_splat(report, kernel)
    assert [f.function for f in module_frames(splat, module)] == functions
    assert names_module_function(splat, module, functions[0])
    assert not names_module_function(splat, "other_module", functions[0])


@pytest.mark.parametrize(("report", "kernel"), CASES)
def test_report_block_takes_the_whole_report_and_nothing_after(report: str, kernel: str) -> None:
    text = (DEBUG_LOGS / f"{report}-{kernel}.log").read_text()
    after = "[   99.000000] knetlink: a later unrelated line\n"
    (splat,) = find_splats(text + after)
    assert "knetlink: a later unrelated line" not in splat.lines
    assert any(line.startswith((" </TASK>", "---[ end trace", "=====")) for line in splat.lines[-12:])


def test_two_reports_in_a_row_stay_two_splats() -> None:
    log = "".join((DEBUG_LOGS / f"{r}-6.12.log").read_text() for r in ("ubsan", "kasan", "odebug", "lockdep", "sleep"))
    assert [s.kind for s in find_splats(log)] == ["ubsan", "kasan", "odebug", "lockdep", "sleep-in-atomic"]


def test_ubsan_after_a_cut_here_marker_is_one_report() -> None:
    """6.5+ prints UBSAN between a [ cut here ] marker and ---[ end trace ]---: one splat, not two."""
    log = (DEBUG_LOGS / "ubsan-6.12.log").read_text()
    assert "[ cut here ]" in log
    (splat,) = find_splats(log)
    assert splat.lines[0].endswith("[ cut here ]------------") and splat.lines[-1] == "---[ end trace ]---"


def test_allowlist_entries_match_the_report_headings() -> None:
    entries = parse_allowlist("ODEBUG: free active .*object type: timer_list ## known in the test kernel\n")
    report = scan_splats((DEBUG_LOGS / "odebug-6.12.log").read_text(), entries)
    assert report.ok and len(report.allowed) == 1


def test_module_frames_skip_unreliable_and_padding_frames_and_read_build_ids() -> None:
    lines = [
        "Call Trace:",
        " <TASK>",
        " ? stale_fn+0x10/0x20 [mod_a]",
        " __pfx_real_fn+0x10/0x10 [mod_a]",
        " real_fn.cold+0x5/0x9 [mod_a]",
        " other_fn+0x1/0x2 [mod-b 1a2b3c4d]",
        " real_fn+0x7/0x9 [mod_a]",
        " kernel_fn+0x1/0x2",
        " </TASK>",
    ]
    assert module_frames(lines) == [ModuleFrame("real_fn", "mod_a"), ModuleFrame("other_fn", "mod_b")]
    assert module_frames(lines, "mod-b") == [ModuleFrame("other_fn", "mod_b")]


# ---- kmemleak ----------------------------------------------------------------------------------


# Where the leak module's functions were when it allocated: what module_symbols built from the .ko
# and the guest's /sys/module/leak/sections (read before the rmmod) in the 6.1 capture.
LEAK_SYMBOLS = {
    "6.1": ModuleSymbols("leak", ((0xFFFFFFFFA0000001, 0xB2, "leak_alloc"), (0xFFFFFFFFA0008000, 0x2F, "leak_init"))),
    "6.12": ModuleSymbols("leak", ((0xFFFFFFFFC0400000, 0xB2, "leak_alloc"), (0xFFFFFFFFC0406000, 0x40, "leak_init"))),
}


@pytest.mark.parametrize("kernel", ["6.1", "6.12"])
def test_kmemleak_report_after_rmmod_names_the_module_once_symbolized(kernel: str) -> None:
    objects = parse_kmemleak((DATA / "kmemleak" / f"kmemleak-{kernel}.txt").read_text())
    assert objects and all(obj.comm for obj in objects)
    # The module is gone: its frames are bare addresses, nothing names it yet.
    assert split_by_module(objects, "leak")[0] == []
    assert any(frame.startswith("0xffffffff") for frame in objects[0].frames)

    named = [symbolize(obj, [LEAK_SYMBOLS[kernel]]) for obj in objects]
    ours, others = split_by_module(named, "leak")
    assert ours and all(obj.size == 64 and obj.comm == "insmod" for obj in ours)
    assert [f.function for f in ours[0].module_frames] == ["leak_alloc", "leak_init"]
    assert "leak_alloc [leak], leak_init [leak]" in ours[0].summary()
    splat = ours[0].splat
    assert splat.kind == "kmemleak" and ":leak_alloc:leak_init" in splat.fingerprint
    offset = {"6.1": "0x5e", "6.12": "0x2a"}[kernel]
    assert any(line.endswith(f"leak_alloc+{offset}/0xb2 [leak]") for line in splat.lines), splat.lines
    if kernel == "6.12":
        assert len(ours) == 2 and len(others) == 1 and others[0].comm == "kworker/u8:1"
        assert not others[0].touches("leak") and others[0].age_s is None


def test_module_symbols_from_an_elf_object_and_section_addresses(tmp_path: Path) -> None:
    obj = gcc_object(tmp_path, "m.o",
                     "__attribute__((noinline, section(\".text.unlikely\"))) int m_alloc(int x) { return x * 3 + 1; }\n"
                     "__attribute__((section(\".init.text\"))) int m_init(void) { return m_alloc(2); }\n"
                     "int init_module(void) __attribute__((alias(\"m_init\")));\n")  # fmt: skip
    functions = {name: (section, size) for section, _, size, name in ko_functions(obj)}
    assert functions["m_alloc"][0] == ".text.unlikely" and functions["m_init"][0] == ".init.text"
    output = ("/sys/module/m/sections/.text.unlikely:0xffffffffa0000000\n"
              "/sys/module/m/sections/.init.text:0xffffffffa0008000\n"
              "/sys/module/m/sections/.bss:0xffffffffa0002000\n")  # fmt: skip
    sections = parse_sections(output)
    assert sections[".init.text"] == 0xFFFFFFFFA0008000 and sections[".bss"] == 0xFFFFFFFFA0002000
    symbols = module_symbols("m", obj, sections)
    assert symbols.lookup(0xFFFFFFFFA0000001) == f"m_alloc+0x1/0x{functions['m_alloc'][1]:x} [m]"
    assert (symbols.lookup(0xFFFFFFFFA0008000) or "").startswith("m_init+0x0/")  # not its alias init_module
    assert symbols.lookup(0xFFFFFFFFA0100000) is None and symbols.lookup(0x1000) is None
    assert sections_argv("m-x") == ["grep", "-r", ".", "/sys/module/m_x/sections"]


def test_ko_functions_rejects_what_is_not_an_elf_object(tmp_path: Path) -> None:
    bad = tmp_path / "x.ko"
    bad.write_bytes(b"not an elf")
    with pytest.raises(ValueError, match="not a 64-bit little-endian ELF"):
        ko_functions(bad)


def test_kmemleak_verbose_dmesg_lines_and_the_age_of_older_kernels() -> None:
    text = (
        "[   20.000001] kmemleak: unreferenced object 0xffff888004c3a400 (size 32):\n"
        '[   20.000002] kmemleak:   comm "insmod", pid 150, jiffies 4294902110 (age 12.348s)\n'
        "[   20.000003] kmemleak:   backtrace:\n"
        "[   20.000004] kmemleak:     [<00000000c3d4e5f6>] leak_alloc+0x3c/0x90 [leak]\n"
        "[   20.000005] knetlink: unrelated\n"
    )
    from harness.kernel_log.dmesg import parse_lines

    (obj,) = parse_kmemleak(line.text for line in parse_lines(text))
    assert (obj.address, obj.size, obj.pid, obj.age_s) == (0xFFFF888004C3A400, 32, 150, 12.348)
    assert obj.frames == ("leak_alloc+0x3c/0x90 [leak]",)


def test_kmemleak_empty_report() -> None:
    assert parse_kmemleak("") == [] and parse_kmemleak("\n") == []


def test_kmemleak_commands_and_the_wait_for_young_objects() -> None:
    assert write_argv(SCAN) == ["sh", "-c", f"echo scan > {KMEMLEAK_PATH}"]
    assert write_argv(CLEAR)[-1].startswith("echo clear > ")
    with pytest.raises(ValueError, match="not a kmemleak command"):
        write_argv("dump=0xffff")
    assert scan_delay(loaded_at=100.0, now=101.0) == pytest.approx(4.5)
    assert scan_delay(loaded_at=100.0, now=110.0) == 0.0
