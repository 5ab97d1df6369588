"""A guest that logged a splat is discarded by the harness, not dead, and is scanned first.

After a splat of a fatal kind (KASAN, an oops) the next test gets a fresh guest. On a kernel with
kmemleak whose guest still answers, the modules built here that are still loaded are unloaded and
scanned before the discard, as after a normal unload, so a module that both over-reads and leaks
has both bugs reported. The report says the harness discarded the guest; a guest that really died
(panic, QEMU gone) is reported as dead. The check runs against fakes of the guest (as in
test_kmemleak_check.py); the wording and the order (scan, then discard) through a pytest run on a
fake session.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from fake_guest import FakeKernel  # tests/fake_guest.py

from harness.errors import ModuleBusyError
from harness.guest.kernel_ops import LogMark
from harness.kernel_log.kmemleak import LeakReading, ModuleSymbols, parse_kmemleak, symbolize
from harness.kernel_watch import Policy, Window, check_window

DATA = Path(__file__).resolve().parent / "data"
# The golden KASAN report, as if the module `leak` had over-read (its frames are named [leak]).
KASAN = (DATA / "dmesg" / "debug" / "kasan-6.12.log").read_text().replace("slab_oob", "leak")
WARNING = "[   10.000000] WARNING: CPU: 0 PID: 1 at lib/x.c:1 f+0x1/0x2\n[   10.000001] ---[ end trace 0 ]---\n"
SYMBOLS = ModuleSymbols("leak", ((0xFFFFFFFFC0400000, 0xB2, "leak_alloc"), (0xFFFFFFFFC0406000, 0x40, "leak_init")))


def leaked() -> LeakReading:
    objects = parse_kmemleak((DATA / "kmemleak" / "kmemleak-6.12.txt").read_text())
    return LeakReading(("leak",), tuple(symbolize(o, [SYMBOLS]) for o in objects), (5.1, 6.0))


def splat_kernel(log: str, *, kmemleak: bool = True, rmmod_error: Exception | None = None) -> FakeKernel:
    """The test's window logged `log`; `leak` (built here) and `virtio_net` (the kernel's) are loaded; the scan
    after `leak`'s unload finds its objects."""
    return FakeKernel(log=log, loaded=("leak", "virtio_net"), kmemleak=kmemleak, leaks=leaked(),
                      rmmod_error=rmmod_error)  # fmt: skip


def check(ops: FakeKernel) -> Any:
    session = SimpleNamespace(current_guest=ops.guest,
                              decode_inputs=lambda: ({"leak": Path("/nonexistent/leak.ko")}, {}, None))  # fmt: skip
    window = Window(session, ops, LogMark("knh-mark:x:1"), 0, 0, unloads=0)  # type: ignore[arg-type]
    return check_window(window, Policy((), "OE", 0))


def test_a_splat_on_a_kmemleak_guest_that_answers_unloads_and_scans_before_the_discard() -> None:
    ops = splat_kernel(KASAN)
    verdict = check(ops)
    assert ops.calls == ["lines_since", "module_list", "rmmod leak", "find_leaks"]  # the kernel's module stays
    assert verdict.guest_suspect and verdict.died is None
    assert [s.kind for s in verdict.splats.failures] == ["kasan"]
    assert verdict.leaks is not None and not verdict.leaks.ok
    message = verdict.message()
    assert "BUG: KASAN: slab-out-of-bounds in leak_read" in message and "leaked by module leak" in message


def test_without_kmemleak_the_discard_costs_no_guest_command() -> None:
    ops = splat_kernel(KASAN, kmemleak=False)
    verdict = check(ops)
    assert ops.calls == ["lines_since"] and verdict.guest_suspect and verdict.leaks is None


def test_a_splat_that_keeps_the_guest_unloads_nothing() -> None:
    ops = splat_kernel(WARNING)
    verdict = check(ops)
    assert not verdict.ok and not verdict.guest_suspect and ops.calls == ["lines_since"]


def test_an_unload_refused_before_the_discard_is_a_note_and_the_splat_stays_the_verdict() -> None:
    busy = ModuleBusyError("rmmod leak failed (status 1): the module is in use: reference count 1", "", [])
    ops = splat_kernel(KASAN, rmmod_error=busy)
    verdict = check(ops)  # never a KernelCheckError in place of the splat
    assert [s.kind for s in verdict.splats.failures] == ["kasan"] and verdict.leaks is None
    assert ("the kmemleak scan before the guest was discarded did not run: rmmod leak failed (status 1): "
            "the module is in use") in verdict.message()  # fmt: skip
    assert verdict.suspect_reason() == "a kernel splat (kasan)"


# ---- the watch: wording and order on a fake session ------------------------------------------------------

FAKE_SESSION_CONFTEST = """
from pathlib import Path

from fake_guest import session_fixture

from harness.kernel_log.kmemleak import LeakReading, ModuleSymbols, parse_kmemleak, symbolize

SYMBOLS = ModuleSymbols("leak", ((0xFFFFFFFFC0400000, 0xB2, "leak_alloc"), (0xFFFFFFFFC0406000, 0x40, "leak_init")))
OBJECTS = [symbolize(o, [SYMBOLS]) for o in parse_kmemleak(Path(REPORT).read_text())]

knh_kernel_session = session_fixture(built=["leak"], journal=Path(EVENTS_FILE), kmemleak=True,
                                     leaks=LeakReading(("leak",), tuple(OBJECTS), (5.0, 6.0)))
"""

TESTS = """
from pathlib import Path


def test_overreads_and_leaks(guest_kernel):
    guest_kernel.load("leak", Path(KASAN_LOG).read_text().replace("slab_oob", "leak"))


def test_panics(guest):
    guest.crash()
"""


def test_the_report_says_the_harness_discarded_the_guest_after_scanning_it(pytester: pytest.Pytester) -> None:
    events = pytester.path / "events.txt"
    pytester.makeconftest(FAKE_SESSION_CONFTEST.replace("REPORT", repr(str(DATA / "kmemleak" / "kmemleak-6.12.txt")))
                          .replace("EVENTS_FILE", repr(str(events))))  # fmt: skip
    pytester.makepyfile(test_discard=TESTS.replace("KASAN_LOG", repr(str(DATA / "dmesg" / "debug" / "kasan-6.12.log"))))
    results = pytester.path / "results"
    result = pytester.runpytest("-p", "no:cacheprovider", "-p", "no:randomly", "-rA", "--results-dir", str(results))
    result.assert_outcomes(failed=2)
    out = re.sub(r"\[[^\]\s]*\]", "", result.stdout.str())  # test ids without the kernel parameter
    # the scan ran on the guest that logged the splat, before the harness discarded it
    assert re.sub(r"\[[^\]\s]*\]", "", events.read_text()).splitlines() == [
        "rmmod leak", "find_leaks",
        "discard guest-1: a kernel splat (kasan) in the call of test_discard.py::test_overreads_and_leaks",
        "discard guest-2: the guest kernel died (QEMU exited) in the call of test_discard.py::test_panics",
    ]  # fmt: skip
    assert "BUG: KASAN: slab-out-of-bounds in leak_read" in out and "leaked by module leak" in out, out
    first, second = out.split("_ test_panics _")
    assert ("the harness discarded guest guest-1 after a kernel splat (kasan) in the call; it had not died (the "
            "next test gets a fresh guest); its kernel console since the test began: ") in first, out
    assert "the guest died" not in first, out
    assert "the guest died (QEMU exited); its kernel console since the test began: " in second, out
    assert "the harness discarded" not in second, out
    summary = json.loads(next(results.glob("*/summary.json")).read_text())
    assert [r["test"].split("[")[0] for r in summary["kmemleak"]] == ["test_discard.py::test_overreads_and_leaks"]
    assert {s["kind"] for s in summary["splats"] if "leaks" in s["test"]} == {"kasan", "kmemleak"}
