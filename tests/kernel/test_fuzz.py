"""Property-based fuzzing inside the guest (guest_scripts/fuzz_frames.py, hypothesis).

The guest script generates 500 datagrams in the quick tier, 10,000 in the full one, checks every ack
against the module's rules and prints a JSON summary. The host then checks
that the kernel log holds exactly the link: lines the script expected (same
count, same text, same order), that the module's counters agree, and that the
module still answers. A splat or new taint fails the test through the plugin.
"""

from __future__ import annotations

import json
import os
import secrets
import sys
from typing import Any

import pytest
from knetlink_stats import module_stats  # tests/kernel/knetlink_stats.py

from harness.config import GUEST_SCRIPTS, HarnessConfig
from harness.guest_kernel import GuestKernel
from harness.knetlink.fixtures import KnetlinkModule, LinkLogWindow
from harness.knetlink.senders import PySender
from harness.vm import Guest

FRAMES = {"quick": 500, "full": 10000}  # per tier; KNH_FUZZ_FRAMES overrides both
SCRIPT = GUEST_SCRIPTS / "fuzz_frames.py"


def last_json(output: str) -> dict[str, Any]:
    for line in reversed(output.splitlines()):
        if line.startswith("{"):
            summary: dict[str, Any] = json.loads(line)
            return summary
    raise AssertionError(f"no JSON summary from {SCRIPT.name}:\n{output[-3000:]}")


def test_fuzz_frames(kmod: KnetlinkModule, kernel_log: LinkLogWindow, guest: Guest, guest_kernel: GuestKernel,
                     py_sender: PySender, record_property: Any, knh_config: HarnessConfig) -> None:  # fmt: skip
    frames = int(os.environ.get("KNH_FUZZ_FRAMES") or FRAMES["full" if knh_config.full else "quick"])
    expect_file = guest_kernel.scratch / f"fuzz-expected-{secrets.token_hex(4)}.txt"
    argv = [sys.executable, str(SCRIPT), "--proto", str(kmod.proto), "--examples", str(frames),
            "--expect-out", str(expect_file)]  # fmt: skip
    if os.environ.get("KNH_FUZZ_SEED"):
        argv += ["--seed", os.environ["KNH_FUZZ_SEED"]]
    result = guest.run(argv, timeout=max(1800.0, frames / 5))
    summary = last_json(result.output)
    record_property("fuzz_summary", summary)
    print(f"fuzz: {summary['frames']} frames, {summary['messages']} messages, {summary['data_messages']} data, "
          f"{summary['malformed']} malformed, acks {summary['acks_by_errno']}, {summary['frames_per_s']} frames/s, "
          f"seed {summary['seed']}")  # fmt: skip
    reproduce = f"KNH_FUZZ_SEED={summary['seed']} KNH_FUZZ_FRAMES={frames}"
    assert summary["violations"] == {}, f"{reproduce}: {json.dumps(summary, indent=1)}"
    assert result.status == 0, result.output[-2000:]
    assert summary["frames"] >= frames
    assert summary["malformed"] > 0 and summary["data_messages"] > 0  # both sides of the rules were exercised

    try:
        expected = expect_file.read_text(encoding="ascii").splitlines()
    finally:
        expect_file.unlink(missing_ok=True)
    got = [t for t in kernel_log.texts() if t.startswith("link:")]
    assert len(expected) == summary["data_messages"]
    assert len(got) == len(expected), f"{reproduce}: {len(got)} link: lines, {len(expected)} data messages"
    first_diff = next((i for i, (g, e) in enumerate(zip(got, expected, strict=True)) if g != e), None)
    assert first_diff is None, f"{reproduce}: line {first_diff}: got {got[first_diff]!r}, want {expected[first_diff]!r}"

    acks = sum(summary["acks_by_errno"].values())
    stats = module_stats(guest)
    assert stats == {"received": summary["messages"] - summary["malformed"], "printed": summary["data_messages"],
                     "acked": acks, "errors": summary["malformed"]}, (stats, summary)  # fmt: skip

    assert [(a.seq, a.error) for a in py_sender.send("alive after fuzzing", seq=9)] == [(9, 0)]


@pytest.mark.parametrize("seed", [1, 2])
def test_fuzz_model_on_host(seed: int) -> None:
    """The script's rules agree with nlframes.split_messages on host-generated frames (no guest)."""
    sys.path.insert(0, str(GUEST_SCRIPTS))
    import fuzz_frames
    import nlframes
    from hypothesis import HealthCheck, given, settings
    from hypothesis import seed as hseed

    @hseed(seed)
    @settings(max_examples=300, database=None, deadline=None, suppress_health_check=list(HealthCheck))
    @given(fuzz_frames.datagram())
    def check(data: bytes) -> None:
        acks, links, messages = fuzz_frames.model(data)
        msgs, rest = nlframes.split_messages(data)
        assert messages == len(msgs) + (rest is not None)
        assert sum(1 for _, e in acks if e) == (rest is not None)
        assert len(links) == sum(1 for m in msgs if m[2] == 0 or m[2] >= 16)
        assert len(acks) <= messages

    check()
