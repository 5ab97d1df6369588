"""Module coverage: gcov in the guest kernel, reports by gcovr on the host.

With ``--module-coverage`` on a kernel built with ``CONFIG_GCOV_KERNEL=y``
(``--kernel debug``), the module is built with ``GCOV_PROFILE=y``
(harness.build.module_build); its counters live in the guest kernel and are read from
debugfs, at ``/sys/kernel/debug/gcov/<absolute object directory>/<object>.gcda``.
The kernel keeps them after an rmmod (``gcov_persist=1``, the default) and adds
the counts of every later load to them, so one copy per guest, taken late,
holds everything that guest ran.

Per kernel (:class:`KernelCoverage`):

1. when a test first uses a guest: reset every counter (:data:`RESET`);
2. after each test that loaded the module through ``kmod``, and after the
   kernel's last test: copy every ``.gcda`` of each coverage build into
   ``<run>/<kernel>/coverage/data/<guest>/<module build>/`` (:func:`copy_argv`;
   the guest can write the results directory). A later copy from the same
   guest replaces the earlier one; a guest that died keeps its last copy;
3. after the kernel's last test: put each build's ``.gcno`` notes next to the
   copies and run gcovr (:func:`gcovr_argv`) over the data of every guest:
   ``coverage/<module build>/index.html`` (one page per source file) and
   ``coverage.json``, ``summary.json`` and ``uncovered.txt`` next to it.

gcovr runs the gcov of the compiler that built the kernel (and so the module):
``gcov-<major>`` from the kernel's ``CONFIG_GCC_VERSION`` (:func:`gcov_tool`).
A kernel without ``CONFIG_GCOV_KERNEL`` builds the module without coverage and
its summary entry says why and what to use instead (:func:`unsupported_message`).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from harness.build.config_items import read_kernel_config
from harness.build.kernel import Kernel
from harness.build.module_build import BuiltModule
from harness.guest.vm import Guest

GCOV_DEBUGFS: Final = "/sys/kernel/debug/gcov"
DEBUGFS: Final = "/sys/kernel/debug"
RESET: Final = f"{GCOV_DEBUGFS}/reset"
FIX: Final = "--kernel debug"
GCOVR_TIMEOUT_S: Final = 600.0

# In the guest: $1 = the build's directory under GCOV_DEBUGFS, $2 = where the copies go. debugfs gives the
# .gcda files a size of 0, so each is read with cat (a copy by size would be empty).
# One line: the guest shell reads commands line by line.
_COPY_SCRIPT: Final = (
    'cd "$1" 2>/dev/null || exit 0; '
    "find . -name '*.gcda' | while read -r f; do "
    'mkdir -p "$2/${f%/*}" && cat "$f" > "$2/$f" || exit 1; '
    "done"
)


def kernel_has_gcov(config: Mapping[str, str]) -> bool:
    """True when a kernel configuration (harness.build.config_items.read_kernel_config) has GCOV_KERNEL built in."""
    return config.get("GCOV_KERNEL") == "y"


def kernel_supports_coverage(kernel: Kernel) -> bool:
    return kernel_has_gcov(read_kernel_config(kernel))


def unsupported_message(release: str) -> str:
    return (f"module coverage is not measured on {release}: the kernel has no CONFIG_GCOV_KERNEL "
            f"(fix: {FIX}, whose debug profile has it)")  # fmt: skip


def no_capable_kernel_message(releases: Sequence[str]) -> str:
    return (f"--module-coverage needs a kernel with CONFIG_GCOV_KERNEL=y, and none of this run's kernels has it "
            f"({', '.join(releases)}): add {FIX} (the debug profile builds it in)")  # fmt: skip


def gcov_tool(config: Mapping[str, str], which: Callable[[str], str | None] = shutil.which) -> str:
    """The gcov matching the kernel's compiler: gcov-<major> (CONFIG_GCC_VERSION 120200 -> gcov-12)
    when installed, else plain gcov."""
    version = config.get("GCC_VERSION", "")
    if version.isdigit() and int(version) >= 10000:
        name = f"gcov-{int(version) // 10000}"
        if which(name):
            return name
    return "gcov"


def debugfs_dir(build_dir: Path) -> str:
    """Where the guest kernel shows the counters of the objects compiled in `build_dir`."""
    return GCOV_DEBUGFS + str(build_dir)


def reset_argv() -> list[str]:
    """Guest argv: mount debugfs if needed, then zero every gcov counter (and drop unloaded modules' data)."""
    script = f"mountpoint -q {DEBUGFS} || mount -t debugfs debugfs {DEBUGFS}; echo 1 > {RESET}"
    return ["sh", "-c", script]


def copy_argv(build_dir: Path, dest: Path) -> list[str]:
    """Guest argv copying every .gcda of the objects of `build_dir` under `dest`, keeping subdirectories;
    nothing (status 0) when the guest has none (the module was not loaded there)."""
    return ["sh", "-c", _COPY_SCRIPT, "knh-gcov", debugfs_dir(build_dir), str(dest)]


def note_copies(data_dir: Path, build_dir: Path, gcdas: Iterable[Path]) -> list[tuple[Path, Path]]:
    """(notes in the build, where they go) for each .gcda copied under `data_dir`: gcov reads the
    .gcno of an object next to its .gcda."""
    out = []
    for gcda in gcdas:
        rel = gcda.relative_to(data_dir).with_suffix(".gcno")
        out.append((build_dir / rel, data_dir / rel))
    return out


@dataclass(frozen=True)
class ReportPaths:
    """The files of one module build's report on one kernel."""

    directory: Path

    @property
    def html(self) -> Path:
        return self.directory / "index.html"

    @property
    def json(self) -> Path:
        return self.directory / "coverage.json"

    @property
    def summary(self) -> Path:
        return self.directory / "summary.json"

    @property
    def uncovered(self) -> Path:
        return self.directory / "uncovered.txt"


def gcovr_argv(root: Path, data_dirs: Sequence[Path], out: ReportPaths, gcov: str, title: str) -> list[str]:
    """gcovr over the .gcda/.gcno pairs under `data_dirs` (merged), for the sources under `root`."""
    return [sys.executable, "-m", "gcovr", "--root", str(root), "--gcov-executable", gcov,
            "--json-pretty", "--json", str(out.json), "--json-summary-pretty", "--json-summary", str(out.summary),
            "--html-details", str(out.html), "--html-title", title, *(str(d) for d in data_dirs)]  # fmt: skip


@dataclass(frozen=True)
class FileCoverage:
    """One source file's line and branch coverage, from gcovr's JSON summary."""

    filename: str
    line_covered: int
    line_total: int
    branch_covered: int
    branch_total: int

    @staticmethod
    def _count(covered: int, total: int) -> str:
        """`81.2% (430/530)`"""
        return f"{100.0 * covered / total:.1f}% ({covered}/{total})" if total else f"n/a ({covered}/{total})"

    def line(self) -> str:
        """`mod.c: lines 81.2% (430/530), branches 60.1% (301/501)`"""
        return (f"{self.filename}: lines {self._count(self.line_covered, self.line_total)}, "
                f"branches {self._count(self.branch_covered, self.branch_total)}")  # fmt: skip


def parse_summary(text: str) -> tuple[FileCoverage, ...]:
    """The files of a gcovr --json-summary report."""
    data = json.loads(text)
    return tuple(FileCoverage(f["filename"], int(f["line_covered"]), int(f["line_total"]),
                              int(f["branch_covered"]), int(f["branch_total"]))
                 for f in data.get("files", ()))  # fmt: skip


def function_counts(report: Mapping[str, Any]) -> dict[str, int]:
    """{function: times it was entered} from a gcovr --json report (every file)."""
    return {fn["name"]: int(fn["execution_count"]) for f in report.get("files", ()) for fn in f.get("functions", ())}


def ranges(numbers: Iterable[int]) -> list[tuple[int, int]]:
    """[3, 4, 5, 9] -> [(3, 5), (9, 9)]."""
    out: list[tuple[int, int]] = []
    for n in sorted(set(numbers)):
        if out and n == out[-1][1] + 1:
            out[-1] = (out[-1][0], n)
        else:
            out.append((n, n))
    return out


def uncovered_lines(report: Mapping[str, Any]) -> dict[str, list[tuple[int, int, str]]]:
    """{file: [(first, last, function)]}: the executable lines no test reached, in ranges of one function
    that no reached executable line interrupts (lines gcov does not count, blank or a brace, may lie between)."""
    out: dict[str, list[tuple[int, int, str]]] = {}
    for f in report.get("files", ()):
        spans: list[tuple[int, int, str]] = []
        open_span = False
        for line in sorted(f.get("lines", ()), key=lambda ln: int(ln["line_number"])):
            number, function = int(line["line_number"]), line.get("function_name") or "?"
            if int(line["count"]) != 0:
                open_span = False
            elif open_span and spans[-1][2] == function:
                spans[-1] = (spans[-1][0], number, function)
            else:
                spans.append((number, number, function))
                open_span = True
        out[f["file"]] = spans
    return out


def uncovered_text(report: Mapping[str, Any]) -> str:
    lines = []
    for filename, spans in uncovered_lines(report).items():
        lines.append(f"{filename}: {len(spans)} uncovered range(s)")
        lines += [f"  {a}-{b} {fn}" if a != b else f"  {a} {fn}" for a, b, fn in spans]
    return "\n".join(lines) + "\n"


Runner = Callable[[Sequence[str]], "subprocess.CompletedProcess[str]"]


def _run(argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, check=False, timeout=GCOVR_TIMEOUT_S)


@dataclass
class KernelCoverage:
    """Coverage of the modules one kernel session built with gcov: guests reset, snapshots, reports."""

    kernel: Kernel
    directory: Path  # <run>/<kernel>/coverage
    supported: bool
    gcov: str = "gcov"
    builds: dict[Path, BuiltModule] = field(default_factory=dict)  # coverage builds loaded or built by tests
    guests: set[str] = field(default_factory=set)  # guests whose counters were reset

    @classmethod
    def for_kernel(cls, kernel: Kernel, directory: Path) -> KernelCoverage:
        config = read_kernel_config(kernel)
        return cls(kernel, directory, kernel_has_gcov(config), gcov_tool(config))

    def track(self, built: BuiltModule) -> None:
        if built.coverage:
            self.builds.setdefault(built.directory, built)

    def data_dir(self, guest: str, built: BuiltModule) -> Path:
        return self.directory / "data" / guest / built.directory.name

    def reset(self, guest: Guest) -> None:
        """Zero the counters once per guest, before the first test that uses it."""
        if not self.supported or guest.launch.name in self.guests:
            return
        self.guests.add(guest.launch.name)
        guest.run(reset_argv(), check=True)

    def snapshot(self, guest: Guest) -> None:
        """Copy the counters of every coverage build out of a live guest. A complete copy replaces the
        guest's earlier one; a copy that fails (the guest died, the run was interrupted) leaves it."""
        if not guest.alive:
            return
        for built in self.builds.values():
            dest = self.data_dir(guest.launch.name, built)
            fresh = dest.with_name(dest.name + ".new")
            shutil.rmtree(fresh, ignore_errors=True)
            fresh.mkdir(parents=True)
            guest.run(copy_argv(built.directory, fresh), check=True)
            shutil.rmtree(dest, ignore_errors=True)
            fresh.rename(dest)

    def report(self, run: Runner = _run) -> list[dict[str, Any]]:
        """Run gcovr for each coverage build; one summary entry per build (or one saying why there is none)."""
        release = self.kernel.release
        if not self.supported:
            return [{"kernel": release, "status": "unsupported", "message": unsupported_message(release)}]
        return [self._report_one(built, run) for built in self.builds.values()]

    def _report_one(self, built: BuiltModule, run: Runner) -> dict[str, Any]:
        name = built.directory.name
        entry: dict[str, Any] = {"kernel": self.kernel.release, "module": name}
        data_dirs = sorted(d / name for d in (self.directory / "data").glob("*") if (d / name).is_dir())
        gcdas = [p for d in data_dirs for p in sorted(d.rglob("*.gcda"))]
        if not gcdas:
            return {**entry, "status": "no-data", "message": (
                f"no coverage data for {name} on {self.kernel.release}: no guest that loaded it was alive for a "
                "snapshot (it was never loaded, or its guests died)")}  # fmt: skip
        for d in data_dirs:
            for notes, dest in note_copies(d, built.directory, [p for p in gcdas if p.is_relative_to(d)]):
                if not notes.exists():
                    return {**entry, "status": "failed", "message": f"{notes} is missing: was {name} built for gcov?"}
                shutil.copyfile(notes, dest)
        out = ReportPaths(self.directory / name)
        out.directory.mkdir(parents=True, exist_ok=True)
        argv = gcovr_argv(built.directory, data_dirs, out, self.gcov, f"{name} on {self.kernel.release}")
        try:
            proc = run(argv)
        except (OSError, subprocess.TimeoutExpired) as e:
            return {**entry, "status": "failed", "message": f"gcovr did not run: {e}"}
        if proc.returncode != 0 or not out.summary.exists():
            tail = "\n".join((proc.stderr or proc.stdout or "").splitlines()[-15:])
            return {**entry, "status": "failed", "message": f"gcovr failed (exit {proc.returncode}): {tail}"}
        report = json.loads(out.json.read_text())
        out.uncovered.write_text(uncovered_text(report))
        files = parse_summary(out.summary.read_text())
        return {**entry, "status": "measured", "report": str(out.html), "guests": len(data_dirs),
                "files": [f.__dict__ | {"line": f.line()} for f in files]}  # fmt: skip


def summary_lines(entries: Sequence[Mapping[str, Any]]) -> list[tuple[str, bool]]:
    """Terminal lines (text, is_error) for the coverage entries of a run (KernelCoverage.report)."""
    if not entries:
        return []
    lines = [("module coverage (gcovr):", False)]
    measured = any(e["status"] == "measured" for e in entries)
    for e in entries:
        if e["status"] == "measured":
            lines.append((f"  {e['kernel']}, {e['module']}: {e['report']}", False))
            lines += [(f"    {f['line']}", False) for f in e["files"]]
        else:  # a kernel left out of a matrix that measured elsewhere is a note; anything else an error
            lines.append((f"  {e['message']}", e["status"] != "unsupported" or not measured))
    return lines


def run_failed(entries: Sequence[Mapping[str, Any]]) -> bool:
    """Coverage was asked for and the run cannot give it: a report failed, or no kernel measured anything."""
    return bool(entries) and (any(e["status"] in ("failed", "no-data") for e in entries)
                              or not any(e["status"] == "measured" for e in entries))  # fmt: skip
