"""`python -m harness bench`: measure the harness against the machine's limits.

Every figure comes from this run on this machine, with the accelerator and
kernel recorded next to it, so ratios between figures are meaningful even on
a noisy host. Each figure is a median of repeated runs with min and max.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from harness.build.initramfs import cached_vmlinux
from harness.build.kernel import Kernel, expand_kernel_specs
from harness.config import PROJECT_ROOT, HarnessConfig, default_cache_root
from harness.errors import BenchError, BootError, HarnessError
from harness.formats.junit import read_junit
from harness.guest.accel import host_tsc_khz
from harness.guest.vm import Guest
from harness.knetlink.bench_raw import raw_boot_argv, raw_initramfs, time_raw_boot
from harness.knetlink.bench_suite import matrix_figures, per_test_seconds
from harness.knetlink.senders import C_SENDER, CSender, PySender
from harness.session import KernelSession, LoadedModule

# A protocol of its own, so the bench never meets NETLINK_CRYPTO's users on the default one.
BENCH_PARAMS = {"proto": "30"}

KEYS = ("raw_boot_s", "boot_to_ready_s", "console_rtt_ms", "insmod_s", "rmmod_s", "per_test_overhead_s",
        "py_sender_rate", "fuzz_rate", "c_sender_rate", "suite_s", "naive_suite_s")  # fmt: skip


@dataclass
class Figure:
    values: list[float] = field(default_factory=list)
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def add(self, v: float) -> None:
        self.values.append(v)

    def as_dict(self) -> dict[str, Any]:
        if not self.values:
            return {
                "median": None,
                "min": None,
                "max": None,
                "runs": 0,
                "note": self.note or "not measured",
                **self.extra,
            }
        d: dict[str, Any] = {
            "median": round(statistics.median(self.values), 6),
            "min": round(min(self.values), 6),
            "max": round(max(self.values), 6),
            "runs": len(self.values),
        }
        if self.note:
            d["note"] = self.note
        d.update(self.extra)
        return d


def _median_of(fn: Callable[[], float], n: int) -> Figure:
    fig = Figure()
    for _ in range(n):
        fig.add(fn())
    return fig


@dataclass
class BenchOptions:
    boots: int = 3
    cycles: int = 5
    rtt_samples: int = 50
    messages: int = 20000
    sender_runs: int = 3
    suite: bool = True
    engines: tuple[str, ...] = ("vng", "qemu")
    fuzz_frames: int = 10000
    fuzz_runs: int = 3
    overhead_tests: int = 15


def quick_options(boots: int, sender_runs: int) -> BenchOptions:
    """`bench --quick`: the headline ratios (boot per engine against the floor, console round trip, per-test
    overhead, py/c sender rates, fuzz rate) from smaller samples, without the kernel suite and the matrix."""
    return BenchOptions(boots=boots, messages=5000, sender_runs=sender_runs, suite=False, fuzz_runs=1,
                        overhead_tests=10)  # fmt: skip


SENDER_TEXT = "bench"  # both senders send this payload in the same 24-byte frame (NLMSG_SPACE framing)


def sender_rates(py: PySender, c: CSender, messages: int, runs: int) -> tuple[Figure, Figure]:
    """(py_sender_rate, c_sender_rate): ``runs`` runs of ``messages`` round trips each, the two senders
    alternating, so that each Python run has a C run next to it (``paired_ratios``, in run order).

    A round trip is the same work in both: one message sent (one syscall), one ack received (one syscall)
    and checked (its type and sequence number, its errno 0); docs/performance.md, "Sender rates".
    """
    note = f"send+ack round trips per second, {messages} messages per run, one process in one guest"
    py_fig, c_fig = Figure(note=note), Figure(note=note)
    for _ in range(runs):
        reply = py.bench(messages, SENDER_TEXT)
        if reply.get("errors") or reply.get("count") != messages:
            raise BenchError(f"python sender bench had errors: {reply}")
        py_fig.add(float(reply["rate"]))
        res = c.send(SENDER_TEXT, count=messages, quiet=True)
        summary = res.summary()
        if res.status != 0 or summary is None or summary["failed"] or summary["acked"] != messages:
            raise BenchError(f"C sender bench failed: {res.output}")
        c_fig.add(summary["acked"] / (summary["elapsed_us"] / 1e6))
    paired = [p / c for p, c in zip(py_fig.values, c_fig.values, strict=True)]
    py_fig.extra["paired_ratios"] = [round(r, 3) for r in paired]
    py_fig.extra["paired_ratio_median"] = round(statistics.median(paired), 3) if paired else None
    return py_fig, c_fig


def run_sender_bench(cfg: HarnessConfig, session_for: Callable[[HarnessConfig], KernelSession], opts: BenchOptions,
                     progress: Callable[[str], None]) -> dict[str, Any]:  # fmt: skip
    """Only the sender figures, for every kernel of ``cfg.kernels`` in turn (one guest each), in one run."""
    kernels: dict[str, Any] = {}
    accel = ""
    for spec in expand_kernel_specs(cfg.kernels, arch=cfg.arch):
        session = session_for(replace(cfg, kernels=(spec,) if spec else ()))
        try:
            accel = session.accel().accel
            guest = session.guest()
            loaded = session.load(BENCH_PARAMS)
            proto = int(session.module_param(loaded, "proto"))
            py = PySender(guest, proto, stderr=session.scratch / "bench-nl_send.stderr")
            c = CSender(guest, session.build().directory / C_SENDER, proto)
            py.start()
            progress(f"{session.kernel.release}: {opts.sender_runs} x {opts.messages} round trips per sender ...")
            py_fig, c_fig = sender_rates(py, c, opts.messages, opts.sender_runs)
            py.release()
            py.stop()
            session.unload(loaded)
        finally:
            session.close()
        kernels[session.kernel.release] = {"py_sender_rate": py_fig.as_dict(), "c_sender_rate": c_fig.as_dict(),
                                           "python": py.python}  # fmt: skip
    return {"senders": kernels, "accel": accel, "cpus": os.cpu_count() or 0}


def format_sender_table(result: dict[str, Any]) -> str:
    rows = [f"knetlink-harness bench (senders): accelerator {result['accel']}, {result['cpus']} cpus"]
    for kernel, figs in result["senders"].items():
        py, c = figs["py_sender_rate"], figs["c_sender_rate"]
        rows.append(f"{kernel}: py_sender_rate {py['median']:.0f}/s ({py['min']:.0f}-{py['max']:.0f}), "
                    f"c_sender_rate {c['median']:.0f}/s ({c['min']:.0f}-{c['max']:.0f}), {py['runs']} runs; "
                    f"py/c = {py['median'] / c['median']:.2f} (medians), {py['paired_ratio_median']:.2f} (median of "
                    f"the paired runs {py['paired_ratios']}); "
                    f"python {figs['python']}")  # fmt: skip
    return "\n".join(rows)


def run_bench(cfg: HarnessConfig, session_for: Callable[[HarnessConfig], KernelSession], opts: BenchOptions,
              progress: Callable[[str], None]) -> dict[str, Any]:  # fmt: skip
    """Every figure of KEYS, each taken by a function of its own. The guests are closed once the last figure
    that needs them is taken (before the kernel suite, which boots its own), and when any figure fails."""
    figs = {k: Figure() for k in KEYS}
    with contextlib.ExitStack() as sessions:
        main_session = sessions.enter_context(contextlib.closing(session_for(cfg)))
        kernel = main_session.kernel
        accel = main_session.accel().accel
        build = main_session.build()
        figs["raw_boot_s"] = _raw_boot(cfg, kernel, accel, opts, progress)
        figs["boot_to_ready_s"], session = _boot_to_ready(cfg, session_for, opts, progress, sessions)
        guest = session.guest()
        figs["console_rtt_ms"] = console_rtt(guest, opts.rtt_samples)
        figs["insmod_s"], figs["rmmod_s"] = load_cycles(session, opts.cycles)
        figs["py_sender_rate"], figs["c_sender_rate"], figs["fuzz_rate"] = _sender_figures(
            session, guest, build.directory, opts, progress
        )
    figs["per_test_overhead_s"] = per_test_overhead(cfg, kernel.release, opts, progress)
    if opts.suite:
        figs["suite_s"], figs["naive_suite_s"] = _suite_figures(cfg, kernel.release, figs["boot_to_ready_s"], progress)
    result: dict[str, Any] = {k: figs[k].as_dict() for k in KEYS}
    result.update({"accel": accel, "kernel": kernel.release, "cpus": os.cpu_count() or 0})
    if opts.suite:
        progress("quick tier over every installed kernel, serially, then with -n auto ...")
        kernels = [k for k in expand_kernel_specs(("all",)) if k]
        result["matrix"] = matrix_figures(cfg, kernels, cfg.results_dir / ".scratch")
    return result


def _raw_boot(cfg: HarnessConfig, kernel: Kernel, accel: str, opts: BenchOptions,
              progress: Callable[[str], None]) -> Figure:  # fmt: skip
    """raw_boot_s: the floor, plain QEMU with the kernel's vmlinux and an init that prints and powers off."""
    cache = default_cache_root()
    qemu = shutil.which("qemu-system-x86_64")
    image = cached_vmlinux(kernel, cache)
    if not (qemu and image):
        return Figure(note="no qemu or no extractable vmlinux")
    argv = raw_boot_argv(qemu, image, raw_initramfs(cache), accel, cfg.memory, cfg.cpus, host_tsc_khz())
    progress(f"raw boot x{opts.boots}: {' '.join(argv[:4])} ...")
    fig = _median_of(lambda: time_raw_boot(argv), opts.boots)
    fig.note = "plain QEMU microvm, uncompressed vmlinux (PVH), busybox init that prints and powers off"
    return fig


def fresh_boots(new_session: Callable[[], KernelSession], boots: int, label: str, progress: Callable[[str], None],
                keep: contextlib.ExitStack[bool | None]) -> tuple[Figure, int, KernelSession]:  # fmt: skip
    """`boots` boot times, each of a guest of a fresh session, and the number of boots that failed (no sample;
    more failures than `boots` raise the last). Every session is closed here but the last, which is returned
    open, its closing left to `keep`."""
    fig, failed = Figure(), 0
    while True:
        with contextlib.ExitStack() as boot:
            s = boot.enter_context(contextlib.closing(new_session()))
            progress(f"boot {label} {len(fig.values) + 1}/{boots} ...")
            try:
                s.guest()
            except BootError as e:
                failed += 1
                if failed > boots:
                    raise
                progress(f"boot {label} failed, not counted: {str(e).splitlines()[0]}")
                continue
            assert s.current_guest is not None and s.current_guest.boot_time_s is not None
            fig.add(s.current_guest.boot_time_s)
            if len(fig.values) == boots:
                keep.enter_context(boot.pop_all())
                return fig, failed, s


def _boot_to_ready(cfg: HarnessConfig, session_for: Callable[[HarnessConfig], KernelSession], opts: BenchOptions,
                   progress: Callable[[str], None],
                   keep: contextlib.ExitStack[bool | None]) -> tuple[Figure, KernelSession]:  # fmt: skip
    """boot_to_ready_s per engine, from fresh guests, the configured engine's figure first. The configured
    engine's last guest is returned open, its closing left to `keep`; every other guest is closed here."""
    by_engine: dict[str, Any] = {}
    with contextlib.ExitStack() as others:  # the other engines' last guests, up to the end of the boots
        for engine in dict.fromkeys((cfg.engine, *opts.engines)):
            new_session = functools.partial(session_for, replace(cfg, engine=engine, boot_retries=0))
            fig, failed, s = fresh_boots(new_session, opts.boots, engine, progress,
                                         keep if engine == cfg.engine else others)  # fmt: skip
            by_engine[engine] = {**fig.as_dict(), "failed_boots": failed}
            if engine == cfg.engine:
                figure, session = fig, s
    figure.extra = {"engine": cfg.engine, "by_engine": by_engine}
    return figure, session


def console_rtt(guest: Guest, samples: int) -> Figure:
    """console_rtt_ms: `true` run in the guest over the serial console."""
    rtt = Figure(note=f"median of {samples} `true` round trips over the serial console")
    for _ in range(samples):
        rtt.add(guest.run("true").elapsed_s * 1000)
    return rtt


def load_cycles(session: KernelSession, cycles: int) -> tuple[Figure, Figure]:
    """insmod_s and rmmod_s: the module loaded and unloaded `cycles` times."""
    insmod = Figure(note="insmod over the console, including a kernel log mark and the host-kernel guard")
    rmmod = Figure(note="rmmod over the console")
    for _ in range(cycles):
        t = time.monotonic()
        loaded = session.load(BENCH_PARAMS)
        insmod.add(time.monotonic() - t)
        t = time.monotonic()
        session.unload(loaded)
        rmmod.add(time.monotonic() - t)
    return insmod, rmmod


def _sender_figures(session: KernelSession, guest: Guest, build_dir: Path, opts: BenchOptions,
                    progress: Callable[[str], None]) -> tuple[Figure, Figure, Figure]:  # fmt: skip
    """py_sender_rate (with the in-kernel handling time per message), c_sender_rate and fuzz_rate, the
    module loaded once for the three."""
    loaded = session.load(BENCH_PARAMS)
    proto = int(session.module_param(loaded, "proto"))
    py = PySender(guest, proto, stderr=session.scratch / "bench-nl_send.stderr")
    c = CSender(guest, build_dir / C_SENDER, proto)
    py_fig, c_fig = sender_rates(py, c, opts.messages, opts.sender_runs)
    py_fig.extra["handler_latency_us"] = _handler_latency(session, py, opts.messages, progress)
    fuzz = _fuzz_rate(session, loaded, py, progress, opts.fuzz_frames, opts.fuzz_runs)
    py.release()
    py.stop()
    session.unload(loaded)
    return py_fig, c_fig, fuzz


def _suite_figures(cfg: HarnessConfig, release: str, boot: Figure,
                   progress: Callable[[str], None]) -> tuple[Figure, Figure]:  # fmt: skip
    """suite_s: the kernel suite through one persistent guest; naive_suite_s: the same estimated with one boot
    per test (the median of `boot`, boot_to_ready_s, per test after the first)."""
    progress("kernel suite through one persistent guest ...")
    suite_s, tests = _run_suite(cfg, release)
    suite = Figure(note=f"pytest -m kernel, {tests} tests, one guest, wall time including the boot")
    suite.add(suite_s)
    median_boot = statistics.median(boot.values)
    naive = Figure(note=f"estimated: suite_s + (tests - 1) x boot_to_ready_s median ({median_boot:.2f} s): "
                        "one boot per test")  # fmt: skip
    naive.add(suite_s + (tests - 1) * median_boot)
    return suite, naive


def per_test_overhead(cfg: HarnessConfig, release: str, opts: BenchOptions,
                       progress: Callable[[str], None]) -> Figure:  # fmt: skip
    """per_test_overhead_s: an empty kernel test that loads and unloads the module, every check on."""
    progress(f"per-test overhead: {opts.overhead_tests} empty kernel tests after a first one ...")
    params = [f"{k}={v}" for k, v in BENCH_PARAMS.items()]
    fig = Figure(note="setup + call + teardown of a test that only loads and unloads the module (JUnit times), "
                      "the kernel watch on")  # fmt: skip
    for seconds in per_test_seconds(cfg, release, cfg.results_dir / ".scratch", params, opts.overhead_tests):
        fig.add(seconds)
    return fig


def _handler_latency(
    session: KernelSession, py: PySender, messages: int, progress: Callable[[str], None]
) -> dict[str, Any]:
    """In-kernel handling time per message, from the eBPF latency probe ({"error": ...} when unavailable)."""
    from harness.knetlink.ebpf import measure_handler_latency

    progress("in-kernel latency with eBPF ...")
    count = min(messages, 5000)
    try:
        report = measure_handler_latency(session.guest(), session.scratch, lambda: py.bench(count))
    except HarnessError as e:
        return {"error": str(e).splitlines()[0]}
    return {"median_us": report.median_us, "messages": count, "histogram": report.render()}


def _fuzz_rate(session: KernelSession, loaded: LoadedModule, py: PySender, progress: Callable[[str], None],
               frames: int, runs: int) -> Figure:  # fmt: skip
    """Fuzzed frames per second (harness/knetlink/fuzz.py): generated on the host, sent and checked in the guest."""
    from harness.knetlink.fuzz import FuzzFailure, run_fuzz

    fig = Figure(note=f"{frames} frames per run: Hypothesis on the host, each frame sent with a fence, every "
                      "ack, link line and counter checked")  # fmt: skip
    stats_dir = f"/sys/module/{loaded.name}/parameters"
    print_max = int(session.module_param(loaded, "print_max"))
    for run_seed in range(runs):
        progress(f"fuzz {run_seed + 1}/{runs}: {frames} frames ...")
        try:
            fig.add(run_fuzz(py, frames, run_seed=run_seed, print_max=print_max, stats_dir=stats_dir).frames_per_s)
        except FuzzFailure as e:
            raise BenchError(f"fuzzing failed during the benchmark: {e}") from None
    return fig


def _run_suite(cfg: HarnessConfig, release: str) -> tuple[float, int]:
    junit = cfg.results_dir / ".scratch" / "bench-suite.xml"
    argv = [sys.executable, "-m", "pytest", "-q", "-m", "kernel", "--kernel", release, "--engine", cfg.engine,
            "--accel", cfg.accel, f"--junitxml={junit}", str(PROJECT_ROOT / "tests")]  # fmt: skip
    t = time.monotonic()
    proc = subprocess.run(argv, capture_output=True, text=True, cwd=PROJECT_ROOT, check=False)
    elapsed = time.monotonic() - t
    if proc.returncode != 0:
        raise BenchError(f"kernel suite failed during the benchmark (exit {proc.returncode}):\n{proc.stdout[-3000:]}")
    outcome = read_junit(junit)
    if not outcome.recorded:
        raise BenchError(f"the kernel suite wrote no readable JUnit results to {junit}; check the pytest output "
                           f"above it:\n{proc.stdout[-3000:]}")  # fmt: skip
    return elapsed, outcome.total


def format_table(result: dict[str, Any]) -> str:
    rows = [f"knetlink-harness bench: kernel {result['kernel']}, accelerator {result['accel']}, {result['cpus']} cpus"]
    rows.append(f"{'figure':<16} {'median':>12} {'min':>12} {'max':>12} runs  note")
    for k in KEYS:
        d = result[k]

        def fmt(v: Any) -> str:
            return "-" if v is None else f"{v:.4g}"

        rows.append(
            f"{k:<16} {fmt(d['median']):>12} {fmt(d['min']):>12} {fmt(d['max']):>12} {d['runs']:>4}"
            f"  {d.get('note', '')}"
        )
        if k == "boot_to_ready_s":
            for engine, e in d.get("by_engine", {}).items():
                rows.append(
                    f"  engine {engine:<7} {fmt(e['median']):>12} {fmt(e['min']):>12} {fmt(e['max']):>12}"
                    f" {e['runs']:>4}"
                )
        if "handler_latency_us" in d:
            lat = d["handler_latency_us"]
            if "histogram" in lat:
                rows.extend("  " + line for line in str(lat["histogram"]).splitlines())
            else:
                rows.append(f"  in-kernel handler latency (eBPF): {json.dumps(lat)}")
    r, b = result["raw_boot_s"]["median"], result["boot_to_ready_s"]["median"]
    if r and b:
        rows.append(f"boot_to_ready / raw_boot = {b / r:.2f}")
        engines = result["boot_to_ready_s"].get("by_engine", {})
        for engine, e in engines.items() if len(engines) > 1 else ():
            if e.get("median"):
                rows.append(f"  engine {engine}: {e['median'] / r:.2f}")
    p, c = result["py_sender_rate"]["median"], result["c_sender_rate"]["median"]
    if p and c:
        paired = result["py_sender_rate"].get("paired_ratio_median")
        rows.append(f"py_sender_rate / c_sender_rate = {p / c:.2f}"
                    + ("" if paired is None else f" (median of the paired runs: {paired:.2f})"))  # fmt: skip
    matrix = result.get("matrix")
    if matrix:
        for kernel, seconds in matrix["suite_quick_s"].items():
            rows.append(f"suite_quick_s {kernel}: {seconds} s")
        rows.append(f"matrix_serial_s {matrix['matrix_serial_s']} s, matrix_parallel_s {matrix['matrix_parallel_s']} s"
                    f" (parallel / serial = {matrix['matrix_ratio']}), {matrix['matrix_tests']} tests")  # fmt: skip
    return "\n".join(rows)
