"""The benchmark's table: figures and the ratios the targets are stated in."""

import json
from pathlib import Path

import pytest

from harness.knetlink.bench import KEYS, Figure, format_table
from harness.knetlink.bench_raw import raw_boot_argv


def result_with(raw: float, engines: dict[str, float]) -> dict[str, object]:
    result: dict[str, object] = {k: Figure().as_dict() for k in KEYS}
    result.update(kernel="6.1.0-56-amd64", accel="tcg", cpus=2)
    raw_fig = Figure()
    raw_fig.add(raw)
    result["raw_boot_s"] = raw_fig.as_dict()
    by_engine = {}
    for engine, seconds in engines.items():
        f = Figure()
        f.add(seconds)
        by_engine[engine] = f.as_dict()
    boot = dict(by_engine[next(iter(engines))])
    boot["by_engine"] = by_engine
    result["boot_to_ready_s"] = boot
    return result


def test_boot_ratio_per_engine() -> None:
    table = format_table(result_with(1.25, {"vng": 7.5, "qemu": 1.875}))
    assert "boot_to_ready / raw_boot = 6.00" in table
    assert "  engine vng: 6.00\n  engine qemu: 1.50" in table


def test_one_engine_gets_no_per_engine_ratio() -> None:
    table = format_table(result_with(2.0, {"qemu": 3.0}))
    assert "boot_to_ready / raw_boot = 1.50" in table and "engine qemu: " not in table


def test_table_of_a_saved_run_is_json_roundtrip_safe(tmp_path: Path) -> None:
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(result_with(1.0, {"vng": 2.0, "qemu": 1.2})))
    assert "engine qemu: 1.20" in format_table(json.loads(path.read_text()))


def test_raw_boot_is_the_qemu_engines_machine_without_its_guest() -> None:
    tcg = raw_boot_argv("qemu", Path("/c/vmlinux"), Path("/c/raw.cpio"), "tcg", "1G", 2, tsc_khz=2_994_000)
    assert tcg[:7] == ["qemu", "-M", "microvm", "-accel", "tcg", "-cpu", "max"]
    assert tcg[tcg.index("-serial") + 1] == "chardev:con" and "-no-reboot" in tcg
    assert tcg[-6:] == ["-kernel", "/c/vmlinux", "-initrd", "/c/raw.cpio", "-append",
                        "console=ttyS0 rdinit=/init panic=-1 loglevel=1 tsc_early_khz=2994000"
                        " tsc=reliable"]  # fmt: skip
    assert not {"-fsdev", "-device", "-name"} & set(tcg)  # no 9p, no kernel-log serial, no channel
    kvm = raw_boot_argv("qemu", Path("/c/vmlinux"), Path("/c/raw.cpio"), "kvm", "1G", 2, tsc_khz=2_994_000)
    assert kvm[kvm.index("-append") + 1] == "console=ttyS0 rdinit=/init panic=-1 loglevel=1"


def test_seconds_by_param_sums_junit_times_per_kernel(tmp_path: Path) -> None:
    from harness.formats.junit import seconds_by_param

    junit = tmp_path / "j.xml"
    junit.write_text('<testsuites><testsuite>'
                     '<testcase name="test_a[6.1.0-57-amd64]" time="4.5"/>'
                     '<testcase name="test_b[6.1.0-57-amd64-15]" time="0.5"/>'
                     '<testcase name="test_a[6.12.117+deb12-amd64]" time="3.0"/>'
                     '<testcase name="test_host[1]" time="9.0"/>'
                     '</testsuite></testsuites>')  # fmt: skip
    assert seconds_by_param(junit, ["6.1.0-57-amd64", "6.12.117+deb12-amd64"]) == {
        "6.1.0-57-amd64": 5.0, "6.12.117+deb12-amd64": 3.0}  # fmt: skip


def test_matrix_runs_differ_only_in_the_workers(tmp_path: Path) -> None:
    from harness.config import HarnessConfig
    from harness.knetlink.bench_suite import suite_argv

    serial = suite_argv(HarnessConfig(), ["a", "b"], tmp_path / "s.xml", parallel=False)
    parallel = suite_argv(HarnessConfig(), ["a", "b"], tmp_path / "s.xml", parallel=True)
    assert [*serial[:-2], "-n", "auto", *serial[-2:]] == parallel
    assert serial.count("--kernel") == 2


class ScriptedPy:
    def __init__(self, rates: list[float], errors: int = 0) -> None:
        self.rates, self.errors, self.python = rates, errors, "/usr/bin/python3"

    def bench(self, count: int, text: str) -> dict[str, object]:
        return {"count": count, "errors": self.errors, "rate": self.rates.pop(0)}


class ScriptedC:
    def __init__(self, rates: list[float], failed: int = 0) -> None:
        self.rates, self.failed = rates, failed

    def send(self, text: str, count: int, quiet: bool) -> object:
        from harness.knetlink.senders import CSendResult

        elapsed_us = round(count / self.rates.pop(0) * 1e6)
        out = f"sent={count} acked={count - self.failed} failed={self.failed} elapsed_us={elapsed_us}\n"
        return CSendResult(1 if self.failed else 0, [], out)


def test_sender_rates_pair_each_python_run_with_the_c_run_after_it() -> None:
    from harness.knetlink.bench import sender_rates

    py, c = sender_rates(ScriptedPy([50.0, 30.0, 40.0]), ScriptedC([100.0, 50.0, 100.0]), 1000, 3)  # type: ignore[arg-type]
    assert py.values == [50.0, 30.0, 40.0] and [round(v) for v in c.values] == [100, 50, 100]
    assert py.as_dict()["paired_ratios"] == [0.5, 0.6, 0.4] and py.as_dict()["paired_ratio_median"] == 0.5
    result = {"accel": "tcg", "cpus": 2, "senders": {"k1": {"py_sender_rate": py.as_dict(),
                                                            "c_sender_rate": c.as_dict(), "python": "p"}}}  # fmt: skip
    from harness.knetlink.bench import format_sender_table

    table = format_sender_table(result)
    assert "k1: py_sender_rate 40/s (30-50), c_sender_rate 100/s (50-100), 3 runs; py/c = 0.40 (medians), 0.50" in table


@pytest.mark.parametrize("py_errors,c_failed", [(1, 0), (0, 1)])
def test_sender_rates_refuse_a_run_with_a_failed_ack(py_errors: int, c_failed: int) -> None:
    from harness.errors import HarnessError
    from harness.knetlink.bench import sender_rates

    with pytest.raises(HarnessError, match="sender bench"):
        sender_rates(ScriptedPy([1.0], py_errors), ScriptedC([1.0], c_failed), 10, 1)  # type: ignore[arg-type]
