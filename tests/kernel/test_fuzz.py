"""Property-based fuzzing of the module: frames made on the host, sent in the guest (harness/knetlink/fuzz.py).

Hypothesis generates 500 datagrams in the quick tier, 10,000 in the full one,
on the host; the in-guest sender sends each one followed by a fence and
returns its acks and link lines, which the host checks frame by frame against
the module's rules, with the stat_* counters over each batch. A failure
shrinks to the smallest failing frame, shown as hex with the line that replays
the run. Afterwards the host checks the kernel log window as a whole (exactly
the expected link: lines, in order), the counters since the module was loaded,
and that the module still answers. A splat or new taint fails the test
through the plugin.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Sequence
from typing import Any

import pytest
from knetlink_stats import module_stats  # tests/kernel/knetlink_stats.py

from harness.config import HarnessConfig
from harness.guest.vm import Guest
from harness.knetlink import fuzz_model
from harness.knetlink.fixtures import KnetlinkModule, LinkLogWindow
from harness.knetlink.fuzz import FuzzFailure, FuzzRun, run_fuzz
from harness.knetlink.fuzz_model import nlframes
from harness.knetlink.senders import FrameBatch, PySender, Reply, SenderError

FRAMES = {"quick": 500, "full": 10000}  # per tier; KNH_FUZZ_FRAMES overrides both


def test_fuzz_frames(kmod: KnetlinkModule, kernel_log: LinkLogWindow, guest: Guest, py_sender: PySender,
                     record_property: Any, knh_config: HarnessConfig) -> None:  # fmt: skip
    frames = int(os.environ.get("KNH_FUZZ_FRAMES") or FRAMES["full" if knh_config.full else "quick"])
    run_seed = int(os.environ.get("KNH_FUZZ_SEED") or secrets.randbits(32))
    replay = f"KNH_FUZZ_SEED={run_seed} KNH_FUZZ_FRAMES={frames}"
    assert kmod.session is not None
    print_max = int(kmod.session.module_param(kmod, "print_max"))
    stats_dir = f"/sys/module/{kmod.name}/parameters"
    try:
        run = run_fuzz(py_sender, frames, run_seed=run_seed, print_max=print_max, stats_dir=stats_dir, replay=replay)
    except FuzzFailure as e:
        failure = str(e)
    else:
        failure = ""
    if failure:
        pytest.fail(failure, pytrace=False)
    summary = run.summary()
    record_property("fuzz_summary", summary)
    record_property("fuzz_rate", round(run.frames_per_s, 1))
    print(f"\nfuzz: {run.frames} frames in {run.elapsed_s:.2f} s ({run.frames_per_s:.0f} frames/s, "
          f"{run.guest_s:.2f} s in the guest's sender), {run.messages} messages, {run.data_messages} data, "
          f"{run.malformed} malformed, acks {run.acks_by_errno}, seed {run_seed}")  # fmt: skip
    assert run.frames >= frames
    assert run.malformed > 0 and run.data_messages > 0  # both sides of the rules were exercised

    got = [t for t in kernel_log.texts() if t.startswith("link:")]
    assert len(got) == len(run.links), f"{replay}: {len(got)} link: lines in the kernel log, {len(run.links)} expected"
    first_diff = next((i for i, (g, e) in enumerate(zip(got, run.links, strict=True)) if g != e), None)
    assert first_diff is None, f"{replay}: line {first_diff}: got {got[first_diff]!r}, want {run.links[first_diff]!r}"
    assert module_stats(guest, kmod.name) == run.expected_stats(), (replay, summary)

    assert [(a.seq, a.error) for a in py_sender.send("alive after fuzzing", seq=9)] == [(9, 0)]


# ---- host only: the model, and the fuzzer against a module written in Python --------------------------------


@pytest.mark.parametrize("seed", [1, 2])
def test_fuzz_model_on_host(seed: int) -> None:
    """The rules agree with nlframes.split_messages on the generated frames (no guest)."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import seed as hseed

    @hseed(seed)
    @settings(max_examples=300, database=None, deadline=None, suppress_health_check=list(HealthCheck))
    @given(fuzz_model.FRAME)
    def check(data: bytes) -> None:
        want = fuzz_model.model(data)
        msgs, rest = nlframes.split_messages(data)
        assert data and want.messages == len(msgs) + (rest is not None)
        assert want.malformed == (rest is not None)
        assert len(want.links) == sum(1 for m in msgs if m[2] == 0 or m[2] >= 16)
        assert len(want.acks) <= want.messages

    check()


def test_generated_frames_cover_the_rules() -> None:
    """One quick-tier run's worth of frames reaches every rule: data, control with and without NLM_F_ACK,
    -EINVAL for short datagrams and lying headers, cut lines, escapes."""
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as hseed

    seen: set[str] = set()

    @hseed(7)
    @settings(max_examples=10, database=None, deadline=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))  # fmt: skip
    @given(fuzz_model.frame_batches(50))
    def collect(frames: list[bytes]) -> None:
        for data in frames:
            msgs, rest = nlframes.split_messages(data)
            seen.add(f"rest:{rest}")
            for _off, length, mtype, flags, _seq, _pid in msgs:
                if 0 < mtype < 16:
                    seen.add("control+ack" if flags & nlframes.NLM_F_ACK else "control")
                seen.add("padded length" if length % 4 == 0 and length > 16 else "")
            for line in fuzz_model.model(data).links:
                seen.update(x for x in ("...[+", "\\x", "\\\\") if x in line)

    collect()
    assert {"rest:None", "rest:short", "rest:bad_len", "control", "control+ack", "padded length", "...[+", "\\x",
            "\\\\"} <= seen  # fmt: skip


def kmsg_escape(line: str) -> str:
    """How /dev/kmsg prints a link line (which holds printable ASCII only): backslashes as \\x5c."""
    return line.replace("\\", "\\x5c")


Bug = Callable[[bytes, fuzz_model.Expected], tuple[list[tuple[int, int]], list[str]]]


class ModuleInPython:
    """Answers PySender.frames() by the model, the way the module and the in-guest sender would; ``bug`` changes
    the acks and link lines of a frame."""

    def __init__(self, bug: Bug | None = None, fail_on_call: int | None = None) -> None:
        self.bug = bug
        self.fail_on_call = fail_on_call
        self.calls = 0
        self.stats = dict.fromkeys(("received", "printed", "acked", "errors"), 0)

    def start(self) -> None:
        pass

    def frames(self, frames: Sequence[bytes], *, stats: str | None = None, links: bool = True) -> FrameBatch:
        self.calls += 1
        if self.calls == self.fail_on_call:
            raise SenderError("the guest channel was closed (guest gone?)")
        before = dict(self.stats)
        replies: list[list[Reply]] = []
        lines: list[str] = []
        for frame in frames:
            want = fuzz_model.model(frame)
            acks, printed = self.bug(frame, want) if self.bug else (want.acks, want.links)
            replies.append([(nlframes.NLMSG_ERROR, seq, err, 16) for seq, err in acks])
            lines.extend(kmsg_escape(line) for line in printed)
            self.stats["received"] += want.messages - want.malformed + 1  # the fence
            self.stats["printed"] += len(printed)
            self.stats["acked"] += len(acks) + 1
            self.stats["errors"] += sum(1 for _, err in acks if err)
        return FrameBatch(replies, lines, before, dict(self.stats), None, 0.0)


def fuzz_with(module: ModuleInPython, frames: int = 300, run_seed: int = 5) -> FuzzRun:
    return run_fuzz(module, frames, run_seed=run_seed, print_max=128, stats_dir="/sys/module/knetlink/parameters",
                    batch=20, replay=f"KNH_FUZZ_SEED={run_seed} KNH_FUZZ_FRAMES={frames}")


def test_a_run_by_the_rules_passes_and_tallies() -> None:
    module = ModuleInPython()
    run = fuzz_with(module)
    assert run.frames >= 300 and module.calls <= 300 // 20 + 3
    assert run.expected_stats() == module.stats
    assert len(run.links) == run.data_messages == module.stats["printed"]


def control_acked_without_flag(frame: bytes, want: fuzz_model.Expected) -> tuple[list[tuple[int, int]], list[str]]:
    msgs, _ = nlframes.split_messages(frame)
    extra = [(seq, 0) for _o, _l, mtype, flags, seq, _p in msgs if mtype == 15 and not flags & nlframes.NLM_F_ACK]
    return want.acks + extra, want.links


def test_a_wrong_ack_shrinks_to_the_one_message_frame_with_the_replay_line() -> None:
    with pytest.raises(FuzzFailure) as failure:
        fuzz_with(ModuleInPython(control_acked_without_flag))
    report = str(failure.value)
    # one message: nlmsg_len 16, type 15, no flags, seq 0, pid 0
    assert "on its own:\nframe 100000000f000000" "00000000" "00000000\n" in report, report
    assert "  acks (seq, errno) [(0, 0)] differ from the rules' []\nreplay: " in report
    assert report.endswith("replay: KNH_FUZZ_SEED=5 KNH_FUZZ_FRAMES=300")
    assert report.count("\nframe ") == 1


def backslash_unescaped(frame: bytes, want: fuzz_model.Expected) -> tuple[list[tuple[int, int]], list[str]]:
    return want.acks, [line.replace("\\\\", "\\") for line in want.links]


def test_a_wrong_link_line_shrinks_to_a_backslash() -> None:
    with pytest.raises(FuzzFailure) as failure:
        fuzz_with(ModuleInPython(backslash_unescaped))
    report = str(failure.value)
    assert "link lines ['link:\\\\'] differ from the rules' ['link:\\\\\\\\']" in report, report
    assert report.count("\nframe ") == 1


class CountsNoErrors(ModuleInPython):
    def frames(self, frames: Sequence[bytes], *, stats: str | None = None, links: bool = True) -> FrameBatch:
        batch = super().frames(frames, stats=stats, links=links)
        self.stats["errors"] = 0
        assert batch.stats_after is not None
        return FrameBatch(batch.replies, batch.links, batch.stats_before, {**batch.stats_after, "errors": 0},
                          None, 0.0)  # fmt: skip


def test_a_wrong_counter_shrinks_to_one_malformed_frame() -> None:
    with pytest.raises(FuzzFailure) as failure:
        fuzz_with(CountsNoErrors())
    report = str(failure.value)
    assert "the stat_* counters changed by" in report and "'errors': 1}" in report, report
    assert report.count("\nframe ") == 1
    shown = bytes.fromhex(report.split("on its own:\nframe ")[1].split("\n")[0])
    assert shown == bytes(len(shown)) and fuzz_model.model(shown).malformed == 1  # zeros, and one EINVAL


def test_a_lost_guest_is_a_harness_error_not_a_shrunk_frame() -> None:
    with pytest.raises(SenderError, match="guest gone"):
        fuzz_with(ModuleInPython(fail_on_call=4))
