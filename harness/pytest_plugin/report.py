"""What a run leaves behind: per-test artifacts and reproduce line, summary.json and the
terminal summary (boots, splats, crashes, skipped kernel tests, module coverage), the failure
kind for bisect-run (JUnit property ``knh_failure``), and a non-zero exit over any breakage or
over module coverage that was asked for and not measured.
"""

from __future__ import annotations

import json
import os
import shlex
from collections import Counter
from collections.abc import Generator, Sequence
from pathlib import Path
from typing import Any

import pytest

from harness.config import DEFAULT_MODULE_DIR
from harness.formats.junit import FAILURE_KIND_PROPERTY
from harness.formats.summary_md import append_step_summary, github_annotations, render_markdown, terminal_groups
from harness.guest.coverage import kernel_supports_coverage, no_capable_kernel_message, run_failed, summary_lines
from harness.kernel_watch import Window, console_since
from harness.pytest_plugin.parallel import STATE_OUTPUT, is_worker
from harness.pytest_plugin.runstate import RUN_KEY, KernelParam, RunState, run_state, uses_guest
from harness.pytest_plugin.watch import WINDOW_KEY

# Module coverage entries (harness.guest.coverage.KernelCoverage.report) of the kernels this process ran.
COVERAGE_KEY = pytest.StashKey[list[dict[str, Any]]]()


def reproduce_command(item: pytest.Item, kernel_spec: str | None) -> str:
    """One command that reruns this test on the same kernel, engine and parameters."""
    cfg = run_state(item.config).config
    argv = ["python", "-m", "pytest", item.nodeid]
    if kernel_spec:
        argv += ["--kernel", kernel_spec]
    argv += ["--engine", cfg.engine, "--accel", cfg.accel]
    for p in cfg.module_params:
        argv += ["--module-param", p]
    if cfg.module_dir.resolve() != DEFAULT_MODULE_DIR.resolve():
        argv += ["--module-dir", str(cfg.module_dir)]
    return shlex.join(argv)


def _artifact_dir(item: pytest.Item, release: str) -> Path:
    safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in item.nodeid)[-150:]
    return run_state(item.config).run_root / release / "tests" / safe


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report: pytest.TestReport = yield
    if report.failed:  # JUnit takes the properties of the teardown report, which copies the item's
        kind = (FAILURE_KIND_PROPERTY, "infra" if _infra_failure(call) else "test")
        item.user_properties.append(kind)
        if report.when == "teardown":
            report.user_properties.append(kind)
    window = item.stash.get(WINDOW_KEY, None)
    if window is not None and report.when in window.kernel_failed and hasattr(report, "wasxfail"):
        report.outcome = "failed"  # xfail covers the test's own failure, never the kernel's
        del report.wasxfail
    outcomes = run_state(item.config).outcomes.setdefault(item.nodeid, {})  # every test's, as pytest counts
    run_state(item.config).test_kernels[item.nodeid] = _kernel_label(item)
    if report.when == "call" or report.failed or report.skipped:
        outcomes[report.when] = _phase_outcome(report)
    if report.skipped and item.get_closest_marker("kernel") is not None:
        _record_skip(item, report)
    if not uses_guest(item) or not report.failed:
        return report
    session = window.session if window is not None else None
    kernel_spec = session.spec_for_reproduction if session else None
    lines = []
    try:
        if window is not None:
            lines += _collect_artifacts(item, window)
    except Exception as e:  # never let evidence gathering hide the test's own failure
        lines.append(f"(collecting artifacts failed: {type(e).__name__}: {e})")
    lines.append("reproduce: " + reproduce_command(item, kernel_spec))
    report.sections.append(("knetlink-harness", "\n".join(lines)))
    path, line, _ = item.location
    run_state(item.config).failures.append({
        "test": item.nodeid, "kernel": _kernel_label(item), "phase": report.when, "file": path, "line": (line or 0) + 1,
        "message": _first_line(report), "reproduce": reproduce_command(item, kernel_spec),
        "artifacts": [ln for ln in lines if not ln.startswith("reproduce: ")],
    })  # fmt: skip
    return report


def _phase_outcome(report: pytest.TestReport) -> str:
    """A phase's outcome with pytest's names: passed, failed, skipped, xfailed or xpassed."""
    if hasattr(report, "wasxfail"):
        return "xfailed" if report.skipped else "xpassed"
    return report.outcome


def outcome_of(phases: dict[str, str]) -> str:
    """A test's one outcome from its phases' (_phase_outcome): failed when its call failed, error when its
    setup or teardown failed, skipped when a phase was skipped, else its call's (its setup's for an xfail
    that never ran). (pytest's summary line counts a test whose call passed and whose teardown failed twice,
    under passed and under error.)"""
    call = phases.get("call")
    if call == "failed":
        return "failed"
    if "failed" in phases.values():
        return "error"
    if "skipped" in phases.values():
        return "skipped"
    return call or phases.get("setup") or "unknown"


def _first_line(report: pytest.TestReport) -> str:
    """The failure's first meaningful line (the exception message's, not a traceback's)."""
    text = report.longreprtext
    errors = [ln[1:].strip() for ln in text.splitlines() if ln.startswith("E ")]
    return next((ln for ln in errors if ln), next((ln for ln in text.splitlines() if ln.strip()), ""))[:300]


def _collect_artifacts(item: pytest.Item, window: Window) -> list[str]:
    """Write this test's kernel log window (and, for a guest that is gone, its kernel console
    since the test began) next to the run's logs; return the report lines, which say whether the
    guest died or the harness discarded it."""
    directory = _artifact_dir(item, window.session.kernel.release)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "kernel-window.log").write_text("".join(ln.raw + "\n" for ln in window.lines))
    lines = []
    guest = window.guest
    if window.discarded or not guest.alive:
        console = directory / "kernel-console.log"
        console.write_text(console_since(guest, window.console_offset))
        if window.discarded:
            lines.append(f"the harness discarded guest {guest.launch.name} after {window.discarded}; it had not "
                         f"died (the next test gets a fresh guest); its kernel console since the test began: "
                         f"{console}")  # fmt: skip
        else:
            lines.append(f"the guest died ({guest.dead_reason or 'QEMU exited'}); its kernel console since the "
                         f"test began: {console}")  # fmt: skip
    lines.append(f"console transcript: {guest.paths.transcript}")
    lines.append(f"guest kernel console: {guest.paths.kernel_log}")
    lines.append(f"kernel log of this test: {directory / 'kernel-window.log'}")
    return lines


def _infra_failure(call: pytest.CallInfo[None]) -> bool:
    """True when the failure means "nothing was tested" (by the error's type, never its words)."""
    return call.excinfo is not None and bool(getattr(call.excinfo.value, "infra", False))


def _kernel_param(item: pytest.Item) -> KernelParam | None:
    callspec = getattr(item, "callspec", None)
    param = callspec.params.get("knh_kernel_session") if callspec is not None else None
    return param if isinstance(param, KernelParam) else None


def _kernel_label(item: pytest.Item) -> str:
    param = _kernel_param(item)
    return param.label if param is not None else "(no kernel)"


def pytest_collection_finish(session: pytest.Session) -> None:
    """--module-coverage with kernels of which none has CONFIG_GCOV_KERNEL: stop before anything boots."""
    if not run_state(session.config).config.module_coverage:
        return
    params = (_kernel_param(item) for item in session.items)
    kernels = {p.kernel for p in params if p is not None and p.kernel is not None}
    if kernels and not any(kernel_supports_coverage(k) for k in kernels):
        raise pytest.UsageError(no_capable_kernel_message(sorted(k.release for k in kernels)))


def _record_skip(item: pytest.Item, report: pytest.TestReport) -> None:
    """Remember a skipped kernel test and its reason: the summary lists them per kernel."""
    longrepr = report.longrepr
    reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
    if hasattr(report, "wasxfail"):
        reason = f"xfail: {report.wasxfail}" if report.wasxfail else "xfail"
    run_state(item.config).skips.append({"test": item.nodeid, "kernel": _kernel_label(item),
                                         "reason": reason.removeprefix("Skipped: ")})  # fmt: skip


def local_summary(state: RunState, coverage: Sequence[dict[str, Any]] = ()) -> dict[str, Any]:
    """What this process recorded: kernels, accelerators, boots, the outcomes of every test (in a guest or
    not), splats, crashes, skips, module coverage."""
    return {
        "kernels": [
            {
                "release": s.kernel.release,
                "accel": s.accel_decision.accel if s.accel_decision else None,
                "accel_reason": s.accel_decision.reason if s.accel_decision else None,
                "accel_notice": s.accel_decision.notice() if s.accel_decision else "accelerator not chosen",
                "boots": s.stats.boots,
                "boot_retries": s.stats.retries,
                "boot_times_s": [round(t, 3) for t in s.stats.boot_times_s],
            }
            for s in state.sessions
        ],
        "outcomes": dict(state.outcomes),
        "splats": list(state.splats),
        "crashes": list(state.crashes),
        "skipped": list(state.skips),
        "coverage": list(coverage),
        "kmemleak": list(state.kmemleak),
        "failures": list(state.failures),
        "test_kernels": dict(state.test_kernels),
    }


def summary_dict(state: RunState, coverage: Sequence[dict[str, Any]] = ()) -> dict[str, Any]:
    """The run's summary: this process's records merged with those of its xdist workers. `tests` counts
    every test of the run once, by its outcome (outcome_of), with pytest's names for them."""
    parts = [local_summary(state, coverage), *state.remote]
    outcomes: dict[str, dict[str, str]] = {}
    for part in parts:
        outcomes.update(part["outcomes"])
    tests = {nodeid: outcome_of(phases) for nodeid, phases in outcomes.items()}
    counts = Counter(tests.values())
    kernels_of: dict[str, str] = {}
    for part in parts:
        kernels_of.update(part.get("test_kernels", {}))
    per_kernel: dict[str, dict[str, int]] = {}
    for nodeid, outcome in tests.items():
        row = per_kernel.setdefault(kernels_of.get(nodeid, "(no kernel)"), {})
        row[outcome] = row.get(outcome, 0) + 1
    return {
        "engine": state.config.engine,
        "kernels": [k for part in parts for k in part["kernels"]],
        "tests": {"total": len(tests), **counts},
        "outcomes": tests,
        "splats": [s for part in parts for s in part["splats"]],
        "crashes": [c for part in parts for c in part["crashes"]],
        "skipped": [s for part in parts for s in part["skipped"]],
        "coverage": [c for part in parts for c in part.get("coverage", ())],
        "kmemleak": [r for part in parts for r in part.get("kmemleak", ())],
        "failures": [f for part in parts for f in part.get("failures", ())],
        "per_kernel": per_kernel,
    }


def breakage(summary: dict[str, Any]) -> bool:
    """True when the run saw an unallowed splat or a broken kernel: such a run is never green."""
    return bool(summary["crashes"] or any(not s["allowed"] for s in summary["splats"]))


def _coverage_entries(config: pytest.Config) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = config.stash.get(COVERAGE_KEY, [])
    return entries


def pytest_sessionfinish(session: pytest.Session) -> None:
    config = session.config
    state = config.stash.get(RUN_KEY, None)
    if state is None:
        return
    if is_worker(config):  # the controller merges and reports
        config.workeroutput[STATE_OUTPUT] = local_summary(state, _coverage_entries(config))  # type: ignore[attr-defined]
        return
    if not state.anything_recorded():
        return
    summary = summary_dict(state, _coverage_entries(config))
    if session.exitstatus == pytest.ExitCode.OK and (breakage(summary) or run_failed(summary["coverage"])):
        # Last line of defence: a run whose summary lists a splat or a crash is never green; nor is one
        # that was asked for module coverage and could not measure it.
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
    state.run_root.mkdir(parents=True, exist_ok=True)
    summary["crashes"] = [{k: v for k, v in c.items() if k != "message"} for c in summary["crashes"]]
    (state.run_root / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    markdown = render_markdown(summary, state.run_root.name)
    (state.run_root / "summary.md").write_text(markdown)
    append_step_summary(markdown)


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    state = config.stash.get(RUN_KEY, None)
    if state is None or is_worker(config) or not state.anything_recorded():
        return
    summary = summary_dict(state, _coverage_entries(config))
    terminalreporter.section("knetlink-harness")
    for k in summary["kernels"]:
        times = ", ".join(f"{t:.1f}s" for t in k["boot_times_s"]) or "none"
        terminalreporter.write_line(
            f"{k['release']}: boots {k['boots']} (boot times {times}), boot retries {k['boot_retries']}; "
            f"{k['accel_notice']}"
        )
    splats = [s for s in summary["splats"] if not s["allowed"]]
    groups = terminal_groups(summary)
    terminalreporter.write_line(f"kernel splats: {len(splats)}" + (f", {len(groups)} distinct" if splats else "")
                                + "".join(f"\n{g}" for g in groups))  # fmt: skip
    for crash in summary["crashes"]:
        terminalreporter.write_line(
            f"KERNEL BROKE {crash['phase']} on {crash['kernel']}, after {crash['previous_test']} "
            f"(reported on {crash['test']}):\n{crash['message']}", red=True
        )
    _write_skips(terminalreporter, summary["skipped"])
    _write_kmemleak(terminalreporter, summary["kmemleak"])
    for text, error in summary_lines(summary["coverage"]):
        terminalreporter.write_line(text, red=error)
    terminalreporter.write_line(f"results: {state.run_root} (summary.json, summary.md)")
    if os.environ.get("GITHUB_ACTIONS") == "true":  # annotations on the run's page
        for line in github_annotations(summary):
            terminalreporter.write_line(line)


def _write_kmemleak(terminalreporter: Any, readings: list[dict[str, Any]]) -> None:
    """kmemleak kernels: the scans after unloads, and the kernel's leaks (reported, never failing)."""
    if not readings:
        return
    scans = [t for r in readings for t in r["scans_s"]]
    kernel = [(r["test"], o) for r in readings for o in r["objects"]
              if o["attributed"] == "kernel" and not o["allowed"]]  # fmt: skip
    terminalreporter.write_line(
        f"kmemleak: {len(readings)} reading(s) after unloads, {len(scans)} scans, {sum(scans):.1f} s; "
        f"kernel leaks (reported, not failing): {len(kernel)}" + "".join(f"\n  {t}: {o['object']}" for t, o in kernel)
    )


def _write_skips(terminalreporter: Any, skips: list[dict[str, str]]) -> None:
    """One block: every skipped kernel test with its reason, grouped by kernel."""
    if not skips:
        return
    terminalreporter.write_line(f"skipped kernel tests: {len(skips)}")
    for kernel in dict.fromkeys(s["kernel"] for s in skips):
        terminalreporter.write_line(f"  {kernel}:")
        for s in skips:
            if s["kernel"] == kernel:
                terminalreporter.write_line(f"    {s['test']}: {s['reason']}")
