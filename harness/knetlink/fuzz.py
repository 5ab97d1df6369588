"""Fuzzing the module at guest speed: frames made on the host, sent and observed in the guest.

Hypothesis generates batches of frames on the host (:mod:`.fuzz_model`); each
batch is one request to the persistent in-guest sender (PySender.frames), which
sends every frame followed by a fence and returns the replies each frame got
before its fence's ack, the batch's new link: records of the kernel log, and
the module's stat_* counters around the batch. The host checks every frame's
acks against the model (exact, in order, EINVAL acks echoing a 16-byte header,
nothing that is not an ack, no overrun), the batch's link lines (exact, in
order, split between the frames by the model) and the counters' change over
the batch (each fence is one more message received and acked, none printed).

While the guest works on one batch, Hypothesis draws the next, so a failure
is seen one batch late. The run then replays the same Hypothesis run (same
seed, same batches) synchronously from the failing batch on, and Hypothesis
shrinks it on the host, each attempt running in the guest. The frames of the
smallest failing batch that fail on their own are the report, as hex, with
the line that replays the run (:class:`FuzzFailure`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol

from hypothesis import HealthCheck, Phase, Verbosity, given, seed, settings

from harness.errors import HarnessError
from harness.knetlink.fuzz_model import EINVAL, HDRLEN, Expected, frame_batches, kmsg_text, model
from harness.knetlink.senders import FENCE_STATS, FrameBatch, Reply

NLMSG_ERROR = 2
DEFAULT_BATCH = 50
MAX_HEX = 1200


class FrameSender(Protocol):
    """What the fuzzer needs of a sender: PySender, or a stand-in for the module in unit tests."""

    def start(self) -> None: ...

    def frames(self, frames: Sequence[bytes], *, stats: str | None = None, links: bool = True) -> FrameBatch: ...


class FuzzFailure(AssertionError):
    """The minimal failing frames after shrinking, with the line that replays the run."""


@dataclass
class FuzzRun:
    """The tally of a passing run; ``links`` are the link lines the kernel log must hold, in order."""

    seed: int
    batch: int
    frames: int = 0
    messages: int = 0
    data_messages: int = 0
    malformed: int = 0
    bytes_sent: int = 0
    acks_by_errno: dict[str, int] = field(default_factory=dict)
    links: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0
    guest_s: float = 0.0

    @property
    def acks(self) -> int:
        return sum(self.acks_by_errno.values())

    @property
    def frames_per_s(self) -> float:
        return self.frames / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def expected_stats(self) -> dict[str, int]:
        """The module's counters after this run on a freshly loaded module (each fence: received and acked)."""
        return {"received": self.messages - self.malformed + self.frames * FENCE_STATS["received"],
                "printed": self.data_messages, "acked": self.acks + self.frames * FENCE_STATS["acked"],
                "errors": self.malformed}  # fmt: skip

    def summary(self) -> dict[str, object]:
        return {"frames": self.frames, "messages": self.messages, "data_messages": self.data_messages,
                "malformed": self.malformed, "bytes": self.bytes_sent, "acks_by_errno": self.acks_by_errno,
                "elapsed_s": round(self.elapsed_s, 3), "guest_s": round(self.guest_s, 3),
                "frames_per_s": round(self.frames_per_s, 1), "seed": self.seed, "batch": self.batch}  # fmt: skip

    def add(self, frame: bytes, want: Expected) -> None:
        self.frames += 1
        self.bytes_sent += len(frame)
        self.messages += want.messages
        self.data_messages += len(want.links)
        self.malformed += want.malformed
        self.links.extend(want.links)
        for _, error in want.acks:
            self.acks_by_errno[str(error)] = self.acks_by_errno.get(str(error), 0) + 1


def ack_problems(want: Expected, replies: list[Reply]) -> list[str]:
    """How one frame's replies differ from the model's acks (empty: they do not)."""
    problems: list[str] = []
    acks: list[tuple[int | None, int | None]] = []
    for reply in replies:
        if isinstance(reply, str):
            problems.append(f"receive {reply}")
            continue
        mtype, seq, error, orig_len = reply
        if mtype != NLMSG_ERROR:
            problems.append(f"a reply of type {mtype} (seq {seq}) is not an ack")
            continue
        acks.append((seq, error))
        if error == EINVAL and orig_len != HDRLEN:
            problems.append(f"the EINVAL ack (seq {seq}) echoes a {orig_len}-byte header, not {HDRLEN}")
    if acks != want.acks:
        problems.append(f"acks (seq, errno) {acks} differ from the rules' {want.acks}")
    return problems


@dataclass(frozen=True)
class Problem:
    """A broken rule: of one frame of the batch (its index), or of the batch as a whole (None)."""

    frame: int | None
    text: str


def link_problem(wants: list[Expected], records: list[str]) -> Problem | None:
    """The first link line of a batch that differs from the model, named by the frame the model expects it from."""
    got = [kmsg_text(t) for t in records]
    expected = [(index, line) for index, want in enumerate(wants) for line in want.links]
    if got == [line for _, line in expected]:
        return None
    at = next((i for i, (g, (_, e)) in enumerate(zip(got, expected, strict=False)) if g != e), None)
    if at is None:
        at = min(len(got), len(expected))
    index = expected[at][0] if at < len(expected) else len(wants) - 1
    first = sum(len(w.links) for w in wants[:index])
    return Problem(index, f"link lines {got[first:first + 4]} differ from the rules' "
                          f"{[line for _, line in expected[first:first + 4]]} (the batch: {len(got)} lines, "
                          f"the rules {len(expected)})")  # fmt: skip


def batch_problems(frames: list[bytes], wants: list[Expected], batch: FrameBatch) -> list[Problem]:
    """Every rule broken by a batch: each frame's acks, the batch's link lines, then the counters."""
    problems = [Problem(index, text) for index, (want, replies) in enumerate(zip(wants, batch.replies, strict=False))
                for text in ack_problems(want, replies)]  # fmt: skip
    if batch.stopped is not None:
        return [*problems, Problem(None, f"the batch stopped at {batch.stopped}")]
    if len(batch.replies) != len(frames):
        problems.append(Problem(None, f"{len(batch.replies)} replies for {len(frames)} frames"))
    links = link_problem(wants, batch.links)
    if links is not None:
        problems.append(links)
    if batch.stats_before is not None and batch.stats_after is not None and not problems:
        got = {k: batch.stats_after[k] - batch.stats_before[k] for k in batch.stats_after}
        rules = {"received": sum(w.messages - w.malformed for w in wants) + len(frames) * FENCE_STATS["received"],
                 "printed": sum(len(w.links) for w in wants),
                 "acked": sum(len(w.acks) for w in wants) + len(frames) * FENCE_STATS["acked"],
                 "errors": sum(w.malformed for w in wants)}  # fmt: skip
        if got != rules:
            problems.append(Problem(None, f"the stat_* counters changed by {got}, the rules say {rules} "
                                          "(each fence: one more received and acked)"))  # fmt: skip
    return problems


def describe(frames: list[bytes], problems: list[Problem]) -> str:
    """The broken rules with the frames they concern, as hex."""
    out: list[str] = []
    for index in dict.fromkeys(p.frame for p in problems):
        shown = [frames[index]] if index is not None else frames
        out += [f"frame {f.hex()[:MAX_HEX]}" for f in shown]
        out += [f"  {p.text}" for p in problems if p.frame == index]
    return "\n".join(out)


class FrameViolation(AssertionError):
    """A batch the module did not handle by the rules (raised inside Hypothesis, which shrinks it)."""

    def __init__(self, frames: list[bytes], problems: list[Problem]) -> None:
        super().__init__(describe(frames, problems))
        self.frames = frames
        self.problems = problems


@dataclass(frozen=True)
class _Found:
    """A batch that failed in the first pass: Hypothesis run (seed, examples) and its call number."""

    seed: int
    examples: int
    call: int
    violation: FrameViolation


def _hypothesis(test: Callable[[list[bytes]], None], run_seed: int, examples: int, batch: int,
                phases: list[Phase]) -> None:  # fmt: skip
    """One Hypothesis run: ``examples`` batches of ``batch`` frames from ``run_seed``; the same
    arguments draw the same batches as long as the test passes the same ones."""
    wrapped = settings(max_examples=examples, database=None, deadline=None, phases=phases,
                       report_multiple_bugs=False, suppress_health_check=list(HealthCheck),
                       verbosity=Verbosity.quiet)(given(frame_batches(batch))(test))  # fmt: skip
    seed(run_seed)(wrapped)()


class _Fuzzer:
    def __init__(self, sender: FrameSender, print_max: int, stats_dir: str | None, run: FuzzRun) -> None:
        self.sender = sender
        self.print_max = print_max
        self.stats_dir = stats_dir
        self.run = run
        self.infra: HarnessError | None = None

    def send(self, frames: list[bytes]) -> FrameBatch:
        if self.infra is not None:  # the guest or the sender is gone: fail fast while Hypothesis winds down
            raise self.infra
        try:
            return self.sender.frames(frames, stats=self.stats_dir)
        except HarnessError as e:
            self.infra = e
            raise

    def check(self, frames: list[bytes]) -> None:
        """Send a batch and wait for it; raises FrameViolation."""
        if not frames:
            return
        wants = [model(f, self.print_max) for f in frames]
        problems = batch_problems(frames, wants, self.send(frames))
        if problems:
            raise FrameViolation(frames, problems)

    def first_pass(self, frames: int, run_seed: int, batch: int) -> _Found | None:
        """Generate and check, one batch in the guest while Hypothesis draws the next.

        A failure is only seen one call later, too late for Hypothesis to shrink
        it: the pass notes where it happened and lets the rest of the run go by.
        """
        run = self.run
        pending: tuple[int, list[bytes], list[Expected], Future[FrameBatch]] | None = None
        found: _Found | None = None
        examples = calls = 0
        hyp_seed = run_seed

        def settle() -> None:
            nonlocal pending, found
            if pending is None:
                return
            call, frames_, wants, future = pending
            pending = None
            problems = batch_problems(frames_, wants, future.result())
            if problems:
                found = _Found(hyp_seed, examples, call, FrameViolation(frames_, problems))
                return
            run.guest_s += future.result().guest_s
            for frame, want in zip(frames_, wants, strict=True):
                run.add(frame, want)

        def test(frames_: list[bytes]) -> None:
            nonlocal pending, calls
            call = calls
            calls += 1
            if self.infra is not None:
                raise self.infra
            if found is not None or not frames_:
                return
            wants = [model(f, self.print_max) for f in frames_]
            settle()
            if found is None:
                pending = (call, frames_, wants, pool.submit(self.send, frames_))

        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="knh-fuzz") as pool:
            # A batch holds a few frames less than `batch` (and Hypothesis's first, the simplest, none);
            # Hypothesis may stop a little early (examples it has seen before): top up with the next seed.
            while run.frames < frames and found is None:
                examples, calls = math.ceil((frames - run.frames) / batch) + 1, 0
                _hypothesis(test, hyp_seed, examples, batch, [Phase.generate])
                settle()
                hyp_seed += 1
        return found

    def shrink(self, found: _Found, batch: int) -> FrameViolation | None:
        """Replay the failing run synchronously from the failing batch on; Hypothesis shrinks it."""
        calls = 0

        def test(frames_: list[bytes]) -> None:
            nonlocal calls
            calls += 1
            if calls > found.call:  # the calls before passed in the first pass, and draw the same batches again
                self.check(frames_)

        try:
            _hypothesis(test, found.seed, found.examples, batch, [Phase.generate, Phase.shrink])
        except FrameViolation as e:
            if self.infra is not None:
                raise self.infra from None
            return e
        return None

    def isolate(self, violation: FrameViolation) -> str:
        """The shrunk batch's frames that break a rule on their own, each with its broken rules; else the batch."""
        alone: list[str] = []
        for frame in dict.fromkeys(violation.frames):
            try:
                self.check([frame])
            except FrameViolation as e:
                alone.append(str(e))
        if alone:
            return "the smallest failing frame after shrinking, on its own:\n" + "\n".join(alone)
        return f"the smallest failing batch after shrinking (its frames fail only together):\n{violation}"


def run_fuzz(sender: FrameSender, frames: int, *, run_seed: int, print_max: int, stats_dir: str | None,
             batch: int = DEFAULT_BATCH, replay: str = "") -> FuzzRun:  # fmt: skip
    """Fuzz with at least ``frames`` frames; raises :class:`FuzzFailure` with the shrunk frames.

    ``replay`` is the line that reruns the same frames (shown in the failure).
    """
    run = FuzzRun(seed=run_seed, batch=batch)
    fuzzer = _Fuzzer(sender, print_max, stats_dir, run)
    sender.start()
    start = time.monotonic()
    found = fuzzer.first_pass(frames, run_seed, batch)
    run.elapsed_s = time.monotonic() - start
    if found is None:
        return run
    replay = replay or f"KNH_FUZZ_SEED={run_seed}"
    shrunk = fuzzer.shrink(found, batch)
    if shrunk is None:
        raise FuzzFailure(f"the module broke its rules, but not again when the batch was replayed (unshrunk):\n"
                          f"{found.violation}\nreplay: {replay}")  # fmt: skip
    raise FuzzFailure(f"the module broke its rules; {fuzzer.isolate(shrunk)}\nreplay: {replay}")
