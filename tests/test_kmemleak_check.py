"""The harness's own kmemleak scan: what a reading after a module's unload means for the test.

Pure parts on the golden reports of tests/data/kmemleak (6.1 captured from the debug kernel,
6.12 in that kernel's format): objects through the unloaded module fail the test, the kernel's are
reported without failing, the allowlist lets either through, and the "N new suspected memory
leaks" line of the same check is replaced by the reading (one leak, one failure). The guest side
(GuestKernel) and the check (check_window) run against fakes of the guest: the order of the
guest commands, the wait for kmemleak's minimum object age, and that a kernel without kmemleak
pays no guest command.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from elf_objects import gcc_object  # tests/elf_objects.py
from fake_guest import FakeKernel  # tests/fake_guest.py

from harness.config import HarnessConfig
from harness.errors import KernelCheckError
from harness.guest.kernel_ops import GuestKernel, LogMark
from harness.guest.vm import CommandResult
from harness.kernel_log.dmesg import parse_allowlist, parse_lines
from harness.kernel_log.kmemleak import (
    CLEAR,
    KMEMLEAK_PATH,
    MIN_AGE_S,
    SCAN,
    SCAN_OFF,
    SCANS,
    LeakReading,
    ModuleSymbols,
    UnloadedModule,
    allow_text,
    judge_leaks,
    leak_reading,
    may_have_kmemleak,
    parse_kmemleak,
    symbolize,
    without_kmemleak_splats,
    write_argv,
)
from harness.kernel_watch import Policy, Window, check_window, judge, with_leaks
from harness.pytest_plugin.runstate import RunState

DATA = Path(__file__).resolve().parent / "data"
LEAK_SYMBOLS = {  # where the leak module's functions were in the captures (as in test_debug_splats.py)
    "6.1": ModuleSymbols("leak", ((0xFFFFFFFFA0000001, 0xB2, "leak_alloc"), (0xFFFFFFFFA0008000, 0x2F, "leak_init"))),
    "6.12": ModuleSymbols("leak", ((0xFFFFFFFFC0400000, 0xB2, "leak_alloc"), (0xFFFFFFFFC0406000, 0x40, "leak_init"))),
}
SCAN_LINE = "[   60.000000] kmemleak: 3 new suspected memory leaks (see /sys/kernel/debug/kmemleak)\n"


def reading(kernel: str, modules: tuple[str, ...] = ("leak",)) -> LeakReading:
    objects = parse_kmemleak((DATA / "kmemleak" / f"kmemleak-{kernel}.txt").read_text())
    return LeakReading(modules, tuple(symbolize(o, [LEAK_SYMBOLS[kernel]]) for o in objects), (5.2, 6.1))


# ---- pure: the verdict on a reading --------------------------------------------------------------------


@pytest.mark.parametrize("kernel", ["6.1", "6.12"])
def test_the_modules_objects_fail_with_kind_function_and_fingerprint(kernel: str) -> None:
    verdict = judge_leaks(reading(kernel), ())
    assert not verdict.ok and verdict.failures and all(o.touches("leak") for o in verdict.failures)
    message = verdict.message()
    assert message.startswith(f"kmemleak: {len(verdict.failures)} object")
    assert "leaked by module leak (unreferenced after its unload; 2 scans after the rmmod, 11.3 s)" in message
    assert "kmemleak [kmemleak:-:leak_alloc:leak_init:do_one_initcall]: unreferenced object 0x" in message
    assert "from leak_alloc [leak], leak_init [leak]" in message
    assert "leak_alloc+0x" in message  # the entry itself, its frames named from the .ko


def test_the_kernels_objects_are_reported_and_never_fail() -> None:
    verdict = judge_leaks(reading("6.12"), ())
    assert len(verdict.failures) == 2 and len(verdict.kernel) == 1
    kernel_only = judge_leaks(LeakReading(("leak",), verdict.kernel, (5.0, 5.0)), ())
    assert kernel_only.ok and kernel_only.message() == ""
    report = kernel_only.kernel_message()
    assert "1 object whose allocation does not pass through leak (reported, not failing" in report
    assert "kernel leak [kmemleak:-:alloc_vmap_area:__get_vm_area_node:" in report and "kworker/u8:1" in report


def test_the_allowlist_matches_heading_and_backtrace_of_either_kind() -> None:
    obj = judge_leaks(reading("6.12"), ()).kernel[0]
    assert allow_text(obj).startswith("unreferenced object 0xffff8881030c5e00 (size 192): from kmemleak_alloc+")
    allow = parse_allowlist(r"^unreferenced object \S+ \(size \d+\): from .*\balloc_vmap_area\b ## vmap areas of "
                            "kernel threads, known\n", "allow.txt")  # fmt: skip
    verdict = judge_leaks(reading("6.12"), allow)
    assert not verdict.kernel and len(verdict.failures) == 2 and len(verdict.allowed) == 1
    assert "allowed kmemleak [kmemleak:-:alloc_vmap_area:" in verdict.kernel_message()
    assert "vmap areas of kernel threads, known (allow.txt:1)" in verdict.kernel_message()
    ours = judge_leaks(reading("6.12"), parse_allowlist(r"^unreferenced .* leak_alloc\+ ## a known leak"))
    assert ours.ok and len(ours.allowed) == 2 and len(ours.kernel) == 1


def test_objects_of_any_module_unloaded_since_the_last_scan_are_the_tests() -> None:
    assert judge_leaks(reading("6.1", ("other", "leak")), ()).failures
    assert judge_leaks(reading("6.1", ("other",)), ()).ok


def test_a_reading_replaces_the_scans_kmemleak_line_one_leak_one_failure() -> None:
    lines = parse_lines("[   59.000000] knh-mark:x:1\n" + SCAN_LINE)
    plain = judge(lines, 0x3000, 0x3000, (), "OE")
    assert not plain.ok and [s.kind for s in plain.splats.failures] == ["kmemleak"]  # no reading: a splat
    verdict = with_leaks(plain, reading("6.1"), ())
    assert not verdict.ok and verdict.splats.ok and verdict.leaks is not None
    message = verdict.message()
    assert message.count("new suspected memory leaks") == 0 and message.count("kmemleak [") == 1
    kernel_only = with_leaks(plain, LeakReading(("leak",), judge_leaks(reading("6.12"), ()).kernel, ()), ())
    assert kernel_only.ok  # a kernel-only leak does not fail as the module's fault
    assert with_leaks(plain, None, ()) is plain


def test_without_kmemleak_splats_keeps_every_other_splat() -> None:
    text = SCAN_LINE + "[   61.000000] WARNING: CPU: 0 PID: 1 at lib/x.c:1 f+0x1/0x2\n"
    report = judge(parse_lines(text), 0, 0, parse_allowlist("^WARNING ## fine"), "OE").splats
    assert [s.kind for s in report.failures] == ["kmemleak"] and len(report.allowed) == 1
    rest = without_kmemleak_splats(report)
    assert rest.ok and len(rest.allowed) == 1


def test_only_a_kernel_configured_with_kmemleak_or_unknown_is_asked() -> None:
    assert may_have_kmemleak({"DEBUG_KMEMLEAK": "y"}) and may_have_kmemleak({})
    assert not may_have_kmemleak({"DEBUG_KMEMLEAK": "n", "KFENCE": "y"}) and not may_have_kmemleak({"SLUB": "y"})


def test_summary_records_the_modules_leaks_as_splats_and_every_object_with_its_attribution(tmp_path: Path) -> None:
    state = RunState(HarnessConfig(), (), tmp_path)
    allow = parse_allowlist(r"^unreferenced .* alloc_vmap_area ## known")
    state.record_leaks("t.py::test", "6.12-x", "teardown", judge_leaks(reading("6.12"), allow))
    assert [(s["kind"], s["allowed"]) for s in state.splats] == [("kmemleak", False), ("kmemleak", False)]
    assert state.splats[0]["fingerprint"] == "kmemleak:-:leak_alloc:leak_init:do_one_initcall"
    (entry,) = state.kmemleak
    assert entry["modules"] == ["leak"] and entry["scans_s"] == [5.2, 6.1]
    assert [(o["attributed"], o["allowed"]) for o in entry["objects"]] == [
        ("module", False), ("module", False), ("kernel", True)]  # fmt: skip
    assert entry["objects"][2]["reason"] == "known" and state.anything_recorded()


# ---- the guest side, on a fake guest --------------------------------------------------------------------


class FakeGuest:
    """Answers the guest commands of GuestKernel; `kmemleak` says whether the debugfs file is there.
    A `cp` of the kmemleak file writes `report` to its destination, as the guest would."""

    def __init__(self, *, kmemleak: bool, report: str = "", sections: str = "") -> None:
        self.kmemleak = kmemleak
        self.report = report
        self.sections = sections
        self.commands: list[str] = []
        self.alive = True

    def run(self, command: Any, *, timeout: float | None = None, check: bool = False) -> CommandResult:
        text = " ".join(command) if isinstance(command, list) else str(command)
        self.commands.append(text)
        out, status = "", 0
        if "boot_id" in text:
            out = "11111111-2222-3333-4444-555555555555\n"
        elif KMEMLEAK_PATH in text and text.startswith("sh -c"):
            status = 0 if self.kmemleak else 2
        elif text.startswith("grep -r . /sys/module/"):
            out = self.sections
        elif text.startswith(f"cp {KMEMLEAK_PATH} "):
            Path(text.split()[-1]).write_text(self.report)
        assert status == 0 or not check, text
        return CommandResult(text, status, out, 0.0)

    def kmemleak_commands(self) -> list[str]:
        return [c for c in self.commands if KMEMLEAK_PATH in c or c.startswith(("grep -r", "cp "))]


def test_a_kernel_without_kmemleak_pays_no_guest_command(tmp_path: Path) -> None:
    guest = FakeGuest(kmemleak=True)  # even a guest that has the file is not asked when the config says no
    ops = GuestKernel(guest, tmp_path)  # type: ignore[arg-type]
    name = ops.insmod(tmp_path / "leak.ko")
    ops.rmmod(name)
    assert ops.find_leaks() is None and guest.kmemleak_commands() == []


def test_the_guest_is_asked_once_and_a_kernel_without_the_file_scans_nothing(tmp_path: Path) -> None:
    guest = FakeGuest(kmemleak=False)
    ops = GuestKernel(guest, tmp_path, kmemleak=True)  # type: ignore[arg-type]
    for _ in range(2):
        ops.rmmod(ops.insmod(tmp_path / "leak.ko"))
    assert ops.find_leaks() is None
    assert guest.kmemleak_commands() == [" ".join(write_argv(SCAN_OFF))]


@pytest.fixture
def leak_ko(tmp_path: Path) -> Path:
    """An ELF object with leak_alloc in .text and leak_init in .init.text, like the leak module's .ko."""
    return gcc_object(tmp_path, "leak.ko", "__attribute__((noinline)) int leak_alloc(int x) { return x * 3 + 1; }\n"
                      '__attribute__((section(".init.text"))) int leak_init(void) { return leak_alloc(2); }\n')


REPORT_6_1 = (DATA / "kmemleak" / "kmemleak-6.1.txt").read_text()  # frames 0xffffffffa000005f, 0xffffffffa0008023
SECTIONS = ("/sys/module/leak/sections/.text:0xffffffffa000005e\n"
            "/sys/module/leak/sections/.init.text:0xffffffffa0008022\n")  # fmt: skip


def _program(command: str) -> str:
    """The program a guest command runs, after its log mark (`echo MARK > /dev/kmsg && ...`), a busybox
    applet by its name."""
    words = command.split(" && ", 1)[-1].split()
    return words[1] if words[0].endswith("busybox") else words[0]


def test_clear_before_insmod_sections_before_rmmod_then_scans_read_and_clear(
    tmp_path: Path, leak_ko: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = [1000.0]
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        clock[0] += seconds

    monkeypatch.setattr("harness.guest.kernel_ops.time.monotonic", lambda: clock[0])
    monkeypatch.setattr("harness.guest.kernel_ops.time.sleep", sleep)
    guest = FakeGuest(kmemleak=True, report=REPORT_6_1, sections=SECTIONS)
    ops = GuestKernel(guest, tmp_path / "scratch", kmemleak=True)  # type: ignore[arg-type]
    name = ops.insmod(leak_ko, {"count": "1"})
    ops.rmmod(name)
    found = ops.find_leaks()

    clear, scan = " ".join(write_argv(CLEAR)), " ".join(write_argv(SCAN))
    assert guest.kmemleak_commands()[:2] == [" ".join(write_argv(SCAN_OFF)), clear]
    order = [_program(c) if not c.startswith("sh -c") else c for c in guest.commands
             if not c.startswith("echo knh-mark") or " && " in c]  # fmt: skip
    assert order.index(clear) < order.index("insmod") < order.index("grep") < order.index("rmmod")
    assert guest.kmemleak_commands()[-(SCANS + 2):] == [scan] * SCANS + [
        f"cp {KMEMLEAK_PATH} {guest.commands[-2].split()[-1]}", clear]  # fmt: skip
    assert sleeps == [pytest.approx(MIN_AGE_S + 0.5)]  # the last scan waits for objects allocated before the rmmod
    assert found is not None and found.modules == ("leak",) and len(found.scans_s) == SCANS
    (obj,) = found.objects
    assert obj.touches("leak") and [f.function for f in obj.module_frames] == ["leak_alloc", "leak_init"]
    assert ops.find_leaks() is None  # nothing unloaded since: no scan
    assert not list((tmp_path / "scratch").iterdir())  # the copy is gone


def test_a_ko_that_cannot_be_read_fails_the_check_instead_of_blaming_the_kernel(tmp_path: Path) -> None:
    gone = UnloadedModule("leak", tmp_path / "missing.ko", ((".text", 0xFFFFFFFFA0000000),), 0.0)
    with pytest.raises(KernelCheckError, match="cannot name the frames of an unloaded module"):
        leak_reading(REPORT_6_1, [gone], [1.0])


# ---- the check: the window after an unload ----------------------------------------------------------------


def after_unload(found: LeakReading | None, log: str) -> FakeKernel:
    """GuestKernel stand-in for check_window: an unload happened, the scan found `found`, and the kernel log
    since the mark holds `log` (the scan's own line among it)."""
    return FakeKernel(taint=0x3000).unloaded(found, log)


def check(ops: FakeKernel, allowlist: str = "") -> Any:
    session = SimpleNamespace(current_guest=ops.guest, decode_inputs=lambda: ({}, {}, None))
    window = Window(session, ops, LogMark("knh-mark:x:1"), 0x3000, 0, unloads=0)  # type: ignore[arg-type]
    return check_window(window, Policy(parse_allowlist(allowlist), "OE", 0))


def test_after_an_unload_the_scan_runs_before_the_log_is_read_and_replaces_its_line() -> None:
    ops = after_unload(reading("6.1"), SCAN_LINE)
    verdict = check(ops)
    assert ops.calls == ["find_leaks", "lines_since"]
    assert not verdict.ok and verdict.splats.ok and not verdict.guest_suspect
    assert "leaked by module leak" in verdict.message() and "new suspected" not in verdict.message()


def test_a_kernel_only_leak_passes_the_check_and_is_reported() -> None:
    kernel = judge_leaks(reading("6.12"), ()).kernel
    verdict = check(after_unload(LeakReading(("leak",), kernel, (5.0, 5.0)), SCAN_LINE))
    assert verdict.ok and verdict.leaks is not None and "kworker/u8:1" in verdict.leaks.kernel_message()


def test_without_kmemleak_the_kmemleak_line_of_a_scan_stays_a_splat() -> None:
    verdict = check(after_unload(None, SCAN_LINE))
    assert not verdict.ok and verdict.leaks is None and verdict.splats.failures[0].kind == "kmemleak"


def test_summary_json_lists_the_readings_and_only_the_modules_leaks_break_the_run(tmp_path: Path) -> None:
    from harness.pytest_plugin.report import breakage, summary_dict

    state = RunState(HarnessConfig(), (), tmp_path)
    kernel = judge_leaks(reading("6.12"), ()).kernel
    state.record_leaks("t.py::test_a", "6.12-x", "teardown", judge_leaks(LeakReading(("leak",), kernel, (5.0,)), ()))
    summary = summary_dict(state)
    assert [o["attributed"] for r in summary["kmemleak"] for o in r["objects"]] == ["kernel"]
    assert not breakage(summary)  # a kernel-only leak is reported, never a failure of the run
    state.record_leaks("t.py::test_b", "6.12-x", "teardown", judge_leaks(reading("6.12"), ()))
    assert breakage(summary_dict(state)) and len(summary_dict(state)["kmemleak"]) == 2


# ---- the watch: a pytest run on a fake session whose module unload leaves a kmemleak reading -------------

LEAKING_SESSION_CONFTEST = """
from pathlib import Path

import pytest
from fake_guest import session_fixture

from harness.kernel_log.kmemleak import LeakReading, ModuleSymbols, parse_kmemleak, symbolize

SYMBOLS = ModuleSymbols("leak", ((0xFFFFFFFFC0400000, 0xB2, "leak_alloc"), (0xFFFFFFFFC0406000, 0x40, "leak_init")))
OBJECTS = [symbolize(o, [SYMBOLS]) for o in parse_kmemleak(Path(REPORT).read_text())]
SCAN_LINE = "[   60.000000] kmemleak: 3 new suspected memory leaks (see /sys/kernel/debug/kmemleak)"

knh_kernel_session = session_fixture()


def unloaded(guest_kernel, objects):
    guest_kernel.unloaded(LeakReading(("leak",), tuple(objects), (5.0, 6.0)), SCAN_LINE)


@pytest.fixture
def leaking(guest_kernel):
    yield
    unloaded(guest_kernel, [o for o in OBJECTS if o.touches("leak")])


@pytest.fixture
def kernel_leaking(guest_kernel):
    yield
    unloaded(guest_kernel, [o for o in OBJECTS if not o.touches("leak")])
"""


def test_the_watch_fails_the_unloading_test_once_and_reports_a_kernel_leak(pytester: pytest.Pytester) -> None:
    report = DATA / "kmemleak" / "kmemleak-6.12.txt"
    pytester.makeconftest(LEAKING_SESSION_CONFTEST.replace("REPORT", repr(str(report))))
    pytester.makepyfile(test_leaks="def test_module_leak(leaking):\n    pass\n\n"
                                   "def test_kernel_leak(kernel_leaking):\n    pass\n")  # fmt: skip
    results = pytester.path / "results"
    result = pytester.runpytest("-p", "no:cacheprovider", "-rA", "--results-dir", str(results))
    result.assert_outcomes(passed=2, errors=1)
    out = result.stdout.str()
    assert out.count("leaked by module leak") == 1 and "new suspected memory leaks" not in out, out
    assert "ERROR at teardown of test_module_leak" in out and "from leak_alloc [leak], leak_init [leak]" in out
    assert "kmemleak" in out and "kernel leak [kmemleak:-:alloc_vmap_area:" in out  # test_kernel_leak's report
    assert "kernel leaks (reported, not failing): 1" in out, out
    summary = json.loads(next(results.glob("*/summary.json")).read_text())
    assert [r["test"].split("::")[-1].split("[")[0] for r in summary["kmemleak"]] == ["test_module_leak",
                                                                                      "test_kernel_leak"]
    assert [s["test"].split("::")[-1].split("[")[0] for s in summary["splats"]] == ["test_module_leak"] * 2
