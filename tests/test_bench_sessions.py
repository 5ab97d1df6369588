"""The benchmark's guests: every session run_bench opens is closed, when a figure fails as when all
succeed, and before the kernel suite (which boots guests of its own) runs. Fake sessions stand in for
guests, so nothing boots here."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from harness.config import HarnessConfig
from harness.errors import HarnessError
from harness.knetlink import bench


class FakeGuest:
    def __init__(self, session: FakeSession) -> None:
        self.session, self.boot_time_s = session, 2.0

    def run(self, command: str) -> SimpleNamespace:
        self.session.fail_at("console")
        return SimpleNamespace(elapsed_s=0.001)


class FakeSession:
    def __init__(self, cfg: HarnessConfig, opened: list[FakeSession], failing: str) -> None:
        self.engine, self.failing, self.closed = cfg.engine, failing, False
        self.kernel = SimpleNamespace(release="6.1.0-test")
        self.scratch = Path("/nonexistent/scratch")
        self.current_guest: FakeGuest | None = None
        opened.append(self)

    def fail_at(self, phase: str) -> None:
        if self.failing == phase:
            raise HarnessError(f"{phase} failed")

    def accel(self) -> SimpleNamespace:
        return SimpleNamespace(accel="tcg")

    def build(self) -> SimpleNamespace:
        return SimpleNamespace(directory=Path("/nonexistent/build"))

    def guest(self) -> FakeGuest:
        if self.current_guest is None:
            if self.engine == "qemu":
                self.fail_at("boot")
            self.current_guest = FakeGuest(self)
        return self.current_guest

    def load(self, params: dict[str, str]) -> SimpleNamespace:
        return SimpleNamespace(name="knetlink")

    def unload(self, loaded: object) -> None:
        pass

    def module_param(self, loaded: object, name: str) -> str:
        return "30"

    def close(self) -> None:
        self.closed = True


class FakeSender:
    python = "/usr/bin/python3"

    def __init__(self, *args: object, **kwargs: object) -> None:
        pass

    def release(self) -> None:
        pass

    def stop(self) -> None:
        pass


def run(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, failing: str, suite: bool = False) -> list[FakeSession]:
    """run_bench over fake sessions, `failing` naming the phase that raises; the sessions it opened."""
    opened: list[FakeSession] = []

    def sender_rates(py: object, c: object, messages: int, runs: int) -> tuple[bench.Figure, bench.Figure]:
        opened[0].fail_at("senders")
        return bench.Figure(values=[1.0]), bench.Figure(values=[2.0])

    def fuzz_rate(*args: object, **kwargs: object) -> bench.Figure:
        opened[0].fail_at("fuzz")
        return bench.Figure(values=[3.0])

    def run_suite(cfg: HarnessConfig, release: str) -> tuple[float, int]:
        assert opened and all(s.closed for s in opened), "the suite ran while the bench's guests were open"
        return 10.0, 5

    def per_test_seconds(cfg: HarnessConfig, release: str, scratch: Path, params: object, count: int) -> list[float]:
        assert opened and all(s.closed for s in opened), "the overhead run booted beside the bench's guests"
        return [0.4] * count

    monkeypatch.setattr(bench, "cached_vmlinux", lambda kernel, cache: None)
    monkeypatch.setattr(bench, "default_cache_root", lambda: tmp_path)
    monkeypatch.setattr(bench, "PySender", FakeSender)
    monkeypatch.setattr(bench, "CSender", FakeSender)
    monkeypatch.setattr(bench, "sender_rates", sender_rates)
    monkeypatch.setattr(bench, "_handler_latency", lambda *a: {"error": "no eBPF here"})
    monkeypatch.setattr(bench, "_fuzz_rate", fuzz_rate)
    monkeypatch.setattr(bench, "_run_suite", run_suite)
    monkeypatch.setattr(bench, "per_test_seconds", per_test_seconds)
    monkeypatch.setattr(bench, "matrix_figures", lambda *a: None)
    monkeypatch.setattr(bench, "expand_kernel_specs", lambda specs: [])
    opts = bench.BenchOptions(boots=2, cycles=1, rtt_samples=2, suite=suite, engines=("vng", "qemu"))
    cfg = HarnessConfig(engine="vng", results_dir=tmp_path)

    def session_for(c: HarnessConfig) -> Any:
        return FakeSession(c, opened, failing)

    if failing:
        with pytest.raises(HarnessError, match=f"{failing} failed"):
            bench.run_bench(cfg, session_for, opts, lambda message: None)
    else:
        result = bench.run_bench(cfg, session_for, opts, lambda message: None)
        assert result["suite_s"]["median"] == 10.0 and result["boot_to_ready_s"]["engine"] == "vng"
        overhead = result["per_test_overhead_s"]
        assert overhead["median"] == 0.4 and overhead["runs"] == opts.overhead_tests
    return opened


@pytest.mark.parametrize("failing", ["boot", "console", "senders", "fuzz"])
def test_a_failing_figure_closes_every_session_opened(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                      failing: str) -> None:  # fmt: skip
    opened = run(monkeypatch, tmp_path, failing)
    assert len(opened) >= 3 and [s for s in opened if not s.closed] == []


def test_a_whole_run_closes_every_session_before_the_suite(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    opened = run(monkeypatch, tmp_path, "", suite=True)
    assert len(opened) == 5 and all(s.closed for s in opened)  # the main session and 2 boots per engine


class BootSession:
    """A session whose guest boots in `seconds`, or whose boot fails (BootError) when `seconds` is None."""

    def __init__(self, seconds: float | None) -> None:
        self.seconds, self.closed, self.current_guest = seconds, False, None

    def guest(self) -> SimpleNamespace:
        from harness.errors import BootError

        if self.seconds is None:
            raise BootError("did not boot\nconsole ...")
        self.current_guest = SimpleNamespace(boot_time_s=self.seconds)
        return self.current_guest

    def close(self) -> None:
        self.closed = True


def test_fresh_boots_counts_failed_boots_and_keeps_only_the_last_session_open() -> None:
    """The boot samples of the main figures and of each foreign architecture's come from one loop."""
    import contextlib

    from harness.errors import BootError

    made = [BootSession(s) for s in (3.0, None, 2.0, 4.0)]
    queue = iter(made)
    said: list[str] = []
    with contextlib.ExitStack() as keep:
        fig, failed, last = bench.fresh_boots(lambda: next(queue), 3, "qemu", said.append, keep)  # type: ignore[arg-type, return-value]
        assert (fig.values, failed, last) == ([3.0, 2.0, 4.0], 1, made[3])
        assert [s.closed for s in made] == [True, True, True, False]
    assert made[3].closed
    assert said[2] == "boot qemu failed, not counted: did not boot", said
    never = iter([BootSession(None) for _ in range(4)])
    with pytest.raises(BootError), contextlib.ExitStack() as keep:
        bench.fresh_boots(lambda: next(never), 3, "qemu", said.append, keep)  # type: ignore[arg-type, return-value]
