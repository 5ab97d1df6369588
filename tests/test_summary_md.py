"""summary.md, the GitHub job summary and annotations, from a summary shaped like a recorded run's:
one NULL dereference hitting two tests on two kernels, one failure without a splat, one skip."""

from __future__ import annotations

from typing import Any

from harness.formats.summary_md import failure_groups, github_annotations, render_markdown, terminal_groups

FP = "null-deref:crashy_init:do_one_initcall:do_init_module:__do_sys_finit_module"
FP_612 = "null-deref:crashy_init:do_one_initcall:do_init_module:init_module_from_file"  # the same bug on 6.12
FRAME = {"frame": "crashy_init+0x15 [crashy]", "function": "crashy_init", "file": "tests/modules/crashy/crashy.c",
         "line": 55, "inlined_into": []}  # fmt: skip


def splat(test: str, kernel: str, frames: list[dict[str, Any]], fingerprint: str = FP) -> dict[str, Any]:
    return {"test": test, "kernel": kernel, "phase": "call", "kind": "null-deref", "fingerprint": fingerprint,
            "allowed": False, "heading": "BUG: kernel NULL pointer dereference, address: 0000000000000000",
            "module_frames": ["crashy_init [crashy]"], "frames": frames}  # fmt: skip


def failure(test: str, kernel: str, message: str, line: int) -> dict[str, Any]:
    return {"test": test, "kernel": kernel, "phase": "call", "file": "tests/kernel/test_x.py", "line": line,
            "message": message, "reproduce": f"python -m pytest {test} --kernel {kernel}",
            "artifacts": [f"kernel log of this test: results/run-1/{kernel}/tests/x/kernel-window.log"]}  # fmt: skip


SUMMARY: dict[str, Any] = {
    "engine": "vng",
    "per_kernel": {"6.1.0-1": {"passed": 10, "failed": 2}, "6.12.1": {"passed": 11, "failed": 1, "skipped": 1}},
    "splats": [
        splat("t.py::test_load[6.1.0-1]", "6.1.0-1", [FRAME]),
        splat("t.py::test_load[6.12.1]", "6.12.1", [], FP_612),
        splat("t.py::test_other[6.1.0-1]", "6.1.0-1", [FRAME]),
        {"test": "t.py::test_ok[6.1.0-1]", "kernel": "6.1.0-1", "phase": "call", "kind": "warning",
         "fingerprint": "warning:x", "allowed": True, "reason": "known"},
    ],
    "failures": [
        failure("t.py::test_load[6.1.0-1]", "6.1.0-1", "insmod crashy.ko: the kernel crashed", 10),
        failure("t.py::test_load[6.12.1]", "6.12.1", "insmod crashy.ko: the kernel crashed", 10),
        failure("t.py::test_other[6.1.0-1]", "6.1.0-1", "the kernel crashed", 20),
        failure("t.py::test_send[6.12.1]", "6.12.1", "AssertionError: link: lines differ, 100%: a,b", 30),
    ],
    "crashes": [],
    "skipped": [{"test": "t.py::test_x[6.12.1]", "kernel": "6.12.1", "reason": "not built for this kernel: dkms"}],
    "coverage": [],
}  # fmt: skip


def test_the_same_splat_on_two_kernels_is_one_group() -> None:
    groups = failure_groups(SUMMARY)
    assert [g.kind for g in groups] == ["null-deref", "test"]
    crash, plain = groups
    assert crash.tests == ["t.py::test_load[6.1.0-1]", "t.py::test_load[6.12.1]", "t.py::test_other[6.1.0-1]"]
    assert crash.kernels == ["6.1.0-1", "6.12.1"] and crash.frames == [FRAME]
    assert crash.fingerprints == [FP, FP_612]
    assert plain.tests == ["t.py::test_send[6.12.1]"]


def test_summary_md_names_each_distinct_failure_once() -> None:
    text = render_markdown(SUMMARY, "run-1")
    assert "| 6.1.0-1 | 10 | 2 | 0 | 0 |" in text and "| 6.12.1 | 11 | 1 | 0 | 1 |" in text
    assert "## Distinct failures: 2" in text
    assert "### 1. null-deref on 6.1.0-1 and 6.12.1, 3 tests" in text
    assert text.count(FP) == 1 and text.count(FP_612) == 1
    assert "- `crashy_init+0x15 [crashy]` → `tests/modules/crashy/crashy.c:55` (crashy_init)" in text
    assert "Reproduce: `python -m pytest t.py::test_load[6.1.0-1] --kernel 6.1.0-1`" in text
    assert "### 2. t.py::test_send[6.12.1] failed on 6.12.1, 1 test" in text
    assert "- 6.12.1: `t.py::test_x[6.12.1]`: not built for this kernel: dkms" in text
    assert "warning:x" not in text  # allowlisted: not a failure


def test_annotations_at_each_failing_test_and_at_the_top_frame() -> None:
    lines = github_annotations(SUMMARY)
    assert len(lines) == 5
    assert lines[0] == ("::error file=tests/kernel/test_x.py,line=10,title=t.py%3A%3Atest_load[6.1.0-1] [6.1.0-1]::"
                        "insmod crashy.ko: the kernel crashed")  # fmt: skip
    assert lines[3].endswith("::AssertionError: link: lines differ, 100%25: a,b")
    assert lines[4] == ("::error file=tests/modules/crashy/crashy.c,line=55,title=null-deref in crashy_init (on "
                        "6.1.0-1 and 6.12.1%2C 3 tests)::BUG: kernel NULL pointer dereference, address: "
                        "0000000000000000")  # fmt: skip


def test_terminal_lists_fingerprints_with_their_top_frame() -> None:
    assert terminal_groups(SUMMARY) == [
        f"  {FP}, {FP_612}: on 6.1.0-1 and 6.12.1, 3 tests; tests/modules/crashy/crashy.c:55 (crashy_init)"]


def test_splats_without_module_frames_group_by_fingerprint() -> None:
    plain = [{**splat(f"t.py::test_{n}[6.1]", "6.1", [], fp), "module_frames": []}
             for n, fp in ((1, "a:x"), (2, "b:y"))]  # fmt: skip
    assert len(failure_groups({"splats": plain})) == 2
