"""Module coverage without a guest: the pure parts, gcovr on a user-space object built the same way,
and the plugin's decision for kernels without gcov."""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from harness.build.kernel import Kernel, installed_kernels
from harness.build.module_build import BuiltModule
from harness.guest.coverage import (
    FileCoverage,
    KernelCoverage,
    copy_argv,
    debugfs_dir,
    function_counts,
    gcov_tool,
    gcovr_argv,
    kernel_has_gcov,
    note_copies,
    parse_summary,
    ranges,
    reset_argv,
    run_failed,
    summary_lines,
    uncovered_lines,
    unsupported_message,
)

BUILD = Path("/cache/modules/6.1.0-virtme-debug/knetlink-0123456789abcdef")


def test_gcov_kernel_is_read_from_the_config() -> None:
    assert kernel_has_gcov({"GCOV_KERNEL": "y"})
    assert not kernel_has_gcov({"GCOV_KERNEL": "n"}) and not kernel_has_gcov({})


def test_gcov_tool_matches_the_kernels_compiler() -> None:
    assert gcov_tool({"GCC_VERSION": "120200"}, which=lambda name: f"/usr/bin/{name}") == "gcov-12"
    assert gcov_tool({"GCC_VERSION": "120200"}, which=lambda name: None) == "gcov"
    assert gcov_tool({"CLANG_VERSION": "160000"}, which=lambda name: f"/usr/bin/{name}") == "gcov"


def test_guest_commands() -> None:
    assert debugfs_dir(BUILD) == f"/sys/kernel/debug/gcov{BUILD}"
    assert reset_argv()[:2] == ["sh", "-c"] and reset_argv()[2].endswith("echo 1 > /sys/kernel/debug/gcov/reset")
    dest = "/results/run/k/coverage/data/knh-1/x"
    argv = copy_argv(BUILD, Path(dest))
    assert argv[:2] == ["sh", "-c"] and argv[3:] == ["knh-gcov", debugfs_dir(BUILD), dest]


def test_copy_script_copies_every_gcda_with_its_subdirectory_and_nothing_else(tmp_path: Path) -> None:
    """The guest's copy script, run on the host against a stand-in debugfs tree."""
    src = tmp_path / "debugfs" / "build"
    (src / "sub").mkdir(parents=True)
    (src / "a.gcda").write_bytes(b"A")
    (src / "sub" / "b.gcda").write_bytes(b"B")
    (src / "a.gcno").symlink_to(tmp_path)  # debugfs links the notes; they are not copied
    dest = tmp_path / "dest"
    argv = copy_argv(Path("/build"), dest)
    script = argv[2]
    subprocess.run(["sh", "-c", script, "knh-gcov", str(src), str(dest)], check=True)
    assert sorted(str(p.relative_to(dest)) for p in dest.rglob("*")) == ["a.gcda", "sub", "sub/b.gcda"]
    assert (dest / "sub" / "b.gcda").read_bytes() == b"B"
    subprocess.run(["sh", "-c", script, "knh-gcov", str(tmp_path / "absent"), str(tmp_path / "d2")], check=True)
    assert not (tmp_path / "d2").exists()


def test_notes_go_next_to_the_copied_data() -> None:
    data = Path("/r/data/knh-1/m")
    assert note_copies(data, BUILD, [data / "knetlink.gcda", data / "sub" / "x.gcda"]) == [
        (BUILD / "knetlink.gcno", data / "knetlink.gcno"),
        (BUILD / "sub" / "x.gcno", data / "sub" / "x.gcno"),
    ]


SUMMARY = {"files": [{"filename": "knetlink.c", "line_total": 530, "line_covered": 430, "line_percent": 81.1,
                      "branch_total": 501, "branch_covered": 301, "branch_percent": 60.1}]}  # fmt: skip


def test_summary_line_per_file() -> None:
    (f,) = parse_summary(json.dumps(SUMMARY))
    assert f.line() == "knetlink.c: lines 81.1% (430/530), branches 60.1% (301/501)"
    assert FileCoverage("x.c", 0, 0, 0, 0).line() == "x.c: lines n/a (0/0), branches n/a (0/0)"


REPORT = {"files": [{"file": "m.c", "lines": [
    {"line_number": 3, "function_name": "a", "count": 0}, {"line_number": 4, "function_name": "a", "count": 0},
    {"line_number": 5, "function_name": "a", "count": 2}, {"line_number": 6, "function_name": "a", "count": 0},
    {"line_number": 9, "function_name": "b", "count": 0}], "functions": [
    {"name": "a", "execution_count": 2}, {"name": "b", "execution_count": 0}]}]}  # fmt: skip


def test_uncovered_lines_and_function_counts() -> None:
    assert ranges([9, 3, 4, 5, 11]) == [(3, 5), (9, 9), (11, 11)]
    assert uncovered_lines(REPORT) == {"m.c": [(3, 4, "a"), (6, 6, "a"), (9, 9, "b")]}
    # lines gcov does not count (8, between 6 and 9) do not split a range; a reached line does
    gap = {"files": [{"file": "m.c", "lines": [{"line_number": 3, "function_name": "a", "count": 0},
                                                {"line_number": 5, "function_name": "a", "count": 0},
                                                {"line_number": 6, "function_name": "a", "count": 1},
                                                {"line_number": 7, "function_name": "a", "count": 0}]}]}  # fmt: skip
    assert uncovered_lines(gap) == {"m.c": [(3, 5, "a"), (7, 7, "a")]}
    assert function_counts(REPORT) == {"a": 2, "b": 0}


MEASURED = {"kernel": "6.1-debug", "module": "m-1", "status": "measured", "report": "/r/index.html",
            "files": [{"line": "m.c: lines 50.0% (1/2), branches n/a (0/0)"}]}  # fmt: skip
STOCK = {"kernel": "6.1.0-57-amd64", "status": "unsupported", "message": unsupported_message("6.1.0-57-amd64")}


def test_a_stock_kernel_next_to_a_measured_one_is_a_note_alone_an_error() -> None:
    assert not run_failed([]) and not run_failed([MEASURED, STOCK])
    assert run_failed([STOCK]) and run_failed([MEASURED, {**MEASURED, "status": "failed", "message": "gcovr"}])
    assert run_failed([{**MEASURED, "status": "no-data", "message": "none"}])
    lines = summary_lines([MEASURED, STOCK])
    assert lines[1:] == [
        ("  6.1-debug, m-1: /r/index.html", False),
        ("    m.c: lines 50.0% (1/2), branches n/a (0/0)", False),
        (f"  {STOCK['message']}", False),
    ]
    assert summary_lines([STOCK])[-1] == (f"  {STOCK['message']}", True)
    assert "no CONFIG_GCOV_KERNEL" in STOCK["message"] and "--kernel debug" in STOCK["message"]


def test_gcovr_argv() -> None:
    out = Path("/r/cov/m")
    argv = gcovr_argv(BUILD, [Path("/r/data/g1/m"), Path("/r/data/g2/m")], _paths(out), "gcov-12", "m on k")
    assert argv[1:3] == ["-m", "gcovr"] and argv[-2:] == ["/r/data/g1/m", "/r/data/g2/m"]
    assert ["--root", str(BUILD)] == argv[3:5] and "gcov-12" in argv and f"{out}/index.html" in argv


def _paths(directory: Path) -> object:
    from harness.guest.coverage import ReportPaths

    return ReportPaths(directory)


C_SOURCE = """
int used(int x) { if (x > 2) return 1; return 0; }
int unused(int x) { return x * 2; }
int main(void) { return used(3) - 1; }
"""


@pytest.mark.skipif(shutil.which("gcc") is None or shutil.which("gcov") is None, reason="needs gcc and gcov")
def test_report_from_data_of_two_guests_merged_by_gcovr(tmp_path: Path) -> None:
    """The data layout of a run (a copy per guest next to the build's notes), reported by the real gcovr:
    a function the program ran has counts, one it never called has none, and two guests add up."""
    build = tmp_path / "cache" / "m-0123"
    build.mkdir(parents=True)
    (build / "m.c").write_text(C_SOURCE)
    subprocess.run(["gcc", "--coverage", "-O0", "-c", "m.c", "-o", "m.o"], cwd=build, check=True)
    subprocess.run(["gcc", "--coverage", "m.o", "-o", "m"], cwd=build, check=True)
    coverage = KernelCoverage(Kernel("6.1-debug", Path("/i"), Path("/k")), tmp_path / "run" / "coverage", True)
    coverage.track(BuiltModule(coverage.kernel, build, (), (), cached=False, coverage=True))
    for guest in ("knh-a", "knh-b"):
        subprocess.run([str(build / "m")], check=False)
        data = coverage.data_dir(guest, coverage.builds[build])
        data.mkdir(parents=True)
        (build / "m.gcda").rename(data / "m.gcda")
    (entry,) = coverage.report()
    assert entry["status"] == "measured", entry
    assert entry["guests"] == 2 and entry["files"][0]["filename"] == "m.c"
    assert entry["files"][0]["line"] == "m.c: lines 66.7% (2/3), branches 50.0% (1/2)"
    report = json.loads((coverage.directory / "m-0123" / "coverage.json").read_text())
    assert function_counts(report) == {"used": 2, "unused": 0, "main": 2}
    assert (coverage.directory / "m-0123" / "index.html").exists()
    assert "  3 unused" in (coverage.directory / "m-0123" / "uncovered.txt").read_text()


def test_no_data_and_unsupported_kernel_are_entries_not_silence(tmp_path: Path) -> None:
    kernel = Kernel("6.1-debug", Path("/i"), Path("/k"))
    coverage = KernelCoverage(kernel, tmp_path, True)
    coverage.track(BuiltModule(kernel, tmp_path / "m-1", (), (), cached=False, coverage=True))
    coverage.track(BuiltModule(kernel, tmp_path / "plain", (), (), cached=False, coverage=False))
    assert [e["status"] for e in coverage.report()] == ["no-data"]
    assert KernelCoverage(kernel, tmp_path, False).report()[0]["status"] == "unsupported"


def _fake_tree(root: Path, release: str, gcov: bool) -> Path:
    """A kernel tree built in place, as far as resolving `--kernel <its bzImage>` looks."""
    boot = root / "arch" / "x86" / "boot"
    boot.mkdir(parents=True)
    image = bytearray(0x400)
    image[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", image, 0x20E, 0x100)
    image[0x300 : 0x300 + len(release) + 1] = release.encode() + b"\0"
    (boot / "bzImage").write_bytes(bytes(image))
    (root / "Makefile").write_text("")
    (root / "Module.symvers").write_text("")
    (root / ".config").write_text("CONFIG_GCOV_KERNEL=y\n" if gcov else "# CONFIG_GCOV_KERNEL is not set\n")
    return boot / "bzImage"


KERNEL_TEST = "def test_k(knh_kernel_session):\n    pass\n"


def test_no_kernel_with_gcov_stops_the_run_before_anything_boots(pytester: pytest.Pytester, tmp_path: Path) -> None:
    stock = _fake_tree(tmp_path / "stock", "9.9.9-stock", gcov=False)
    pytester.makepyfile(test_k=KERNEL_TEST)
    result = pytester.runpytest("--kernel", str(stock), "--module-coverage", "--collect-only")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--module-coverage needs a kernel with CONFIG_GCOV_KERNEL=y*(9.9.9-stock)*"
                                 "--kernel debug*"])  # fmt: skip
    assert pytester.runpytest("--kernel", str(stock), "--collect-only").ret == pytest.ExitCode.OK


def test_a_matrix_with_one_gcov_kernel_runs(pytester: pytest.Pytester, tmp_path: Path) -> None:
    stock = _fake_tree(tmp_path / "stock", "9.9.9-stock", gcov=False)
    debug = _fake_tree(tmp_path / "debug", "9.9.9-debug", gcov=True)
    pytester.makepyfile(test_k=KERNEL_TEST)
    result = pytester.runpytest("--kernel", str(stock), "--kernel", str(debug), "--module-coverage", "--collect-only")
    assert result.ret == pytest.ExitCode.OK, result.stdout.str() + result.stderr.str()
    # and tests that boot nothing are not stopped by the setting
    pytester.makepyfile(test_k="def test_u():\n    pass\n")
    assert pytester.runpytest("--kernel", str(stock), "--module-coverage").ret == pytest.ExitCode.OK


@pytest.mark.skipif(not installed_kernels(), reason="no installed kernel with headers")
def test_installed_distribution_kernels_have_no_gcov() -> None:
    """Why --kernel debug is the fix: Debian's kernels are built without CONFIG_GCOV_KERNEL."""
    from harness.guest.coverage import kernel_supports_coverage

    assert not any(kernel_supports_coverage(k) for k in installed_kernels())


class FakeGuest:
    """A guest whose copy command writes one .gcda, or fails like an interrupted command."""

    def __init__(self, fail: bool = False) -> None:
        self.alive, self.fail = True, fail
        self.launch = type("L", (), {"name": "knh-1"})()

    def run(self, argv: list[str], check: bool = False) -> object:
        from harness.errors import CommandTimeout

        if self.fail:
            raise CommandTimeout("interrupted")
        (Path(argv[-1]) / "m.gcda").write_bytes(b"new")
        return None


def test_a_failed_copy_keeps_the_guests_earlier_one(tmp_path: Path) -> None:
    kernel = Kernel("6.1-debug", Path("/i"), Path("/k"))
    coverage = KernelCoverage(kernel, tmp_path, True)
    coverage.track(BuiltModule(kernel, tmp_path / "m-1", (), (), cached=False, coverage=True))
    coverage.snapshot(FakeGuest())  # type: ignore[arg-type]
    data = coverage.data_dir("knh-1", coverage.builds[tmp_path / "m-1"])
    assert (data / "m.gcda").read_bytes() == b"new"
    with pytest.raises(Exception, match="interrupted"):
        coverage.snapshot(FakeGuest(fail=True))  # type: ignore[arg-type]
    assert (data / "m.gcda").read_bytes() == b"new"
