"""The load/unload check any driver gets with no test code (LKFT's modules.sh with the harness's verdicts).

Per kernel: build (warnings counted), load with the kernel modules it depends on, unload, then
`cycles` more load/unload cycles with the given parameters; after each unload the module must be
gone and the guest's module list back to what it was; over the whole check no splat, no new taint,
and on a kernel with kmemleak no leak of the module; over the `cycles` after the first (whose
allocations fill caches once) unreclaimable slab growth within `max_slab_growth_kb`.
`check_kernel` runs it on one session; `format_table` prints the rows; `check_status` is the exit
status (exec's statuses: harness.cli.commands).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from harness.errors import BuildError, BuildExcluded, HarnessError, LostGuestError, ModuleCrashError
from harness.guest.kernel_ops import GuestKernel
from harness.kernel_log.dmesg import AllowEntry
from harness.kernel_watch import judge, settle, with_leaks
from harness.session import KernelSession, LoadedModule, ModuleSource

MEMINFO_FIELDS = ("MemAvailable", "Slab", "SUnreclaim")


def parse_meminfo(text: str) -> dict[str, int]:
    """/proc/meminfo lines as {field: kB}."""
    out = {}
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        words = rest.split()
        if words and words[0].isdigit():
            out[name.strip()] = int(words[0])
    return out


@dataclass
class CheckRow:
    """What the check found on one kernel; `status` is "PASS", "FAIL", "SKIP" (a dkms.conf excludes the
    kernel) or "ERROR" (the harness could not get that far), `problems` says why."""

    kernel: str
    build: str = "-"
    load: str = "-"
    cycles: str = "-"
    splats: str = "-"
    taint: str = "-"
    slab: str = "-"
    kmemleak: str = "-"
    status: str = "PASS"
    problems: list[str] = field(default_factory=list)
    outcome: str = "pass"  # pass, fail (the module), splat (the kernel), harness, died, skip
    seconds: float = 0.0
    infra: bool = False  # the worst problem means nothing was tested (HarnessError.infra)

    def fail(self, outcome: str, problem: str, *, infra: bool = False) -> None:
        rank = ("pass", "skip", "fail", "splat", "harness", "died")
        if rank.index(outcome) > rank.index(self.outcome):
            self.outcome, self.infra = outcome, infra
        self.status = {"skip": "SKIP", "harness": "ERROR", "died": "ERROR"}.get(self.outcome, "FAIL")
        self.problems.append(problem)


@dataclass(frozen=True)
class CheckPolicy:
    cycles: int
    params: Mapping[str, str]
    allowlist: Sequence[AllowEntry]
    allowed_taint: str
    max_slab_growth_kb: int


def _meminfo(guest_kernel: GuestKernel) -> dict[str, int]:
    return parse_meminfo(guest_kernel.read_file("/proc/meminfo", "meminfo"))


def _unload_and_verify(session: KernelSession, guest_kernel: GuestKernel, loaded: LoadedModule,
                       before: tuple[str, ...]) -> str | None:  # fmt: skip
    """Unload; None when the module is gone and the module list is back to `before`, else what is wrong."""
    session.unload(loaded)
    now = guest_kernel.module_list()
    if loaded.name in now:
        return f"{loaded.name} is still loaded after rmmod succeeded"
    extra = [n for n in now if n not in before]
    return f"modules left loaded after the unload: {', '.join(extra)}" if extra else None


def check_kernel(session: KernelSession, source: ModuleSource, policy: CheckPolicy) -> CheckRow:
    """The load/unload check on the session's kernel (the session's guest is booted on first use)."""
    row = CheckRow(session.kernel.release)
    start = time.monotonic()
    try:
        _run(session, source, policy, row)
    except BuildExcluded as e:
        row.build = "excluded"
        row.fail("skip", str(e), infra=True)
    except BuildError as e:
        row.build = "FAILED"
        row.fail("harness", str(e), infra=e.infra)
    except LostGuestError as e:
        row.fail("died", f"the guest died: {e.args[0].splitlines()[0]}", infra=e.infra)
    except ModuleCrashError as e:
        row.fail("splat", str(e))
    except HarnessError as e:
        row.fail("harness" if row.load == "-" else "fail", str(e), infra=e.infra)
    row.seconds = time.monotonic() - start
    return row


def _run(session: KernelSession, source: ModuleSource, policy: CheckPolicy, row: CheckRow) -> None:
    built = session.build(source)
    row.build = f"{built.build_kind}, {len(built.warnings)} warnings"
    guest_kernel = session.guest_kernel()
    before = guest_kernel.module_list()
    taint_before, mark = guest_kernel.taint(), guest_kernel.mark()
    mem_before: dict[str, int] = {}
    loaded = session.load(policy.params, source)
    row.load = "+".join(loaded.loaded) if len(loaded.loaded) > 1 else "ok"
    done = 0
    for cycle in range(policy.cycles + 1):
        if cycle:
            loaded = session.load(policy.params, source)
        problem = _unload_and_verify(session, guest_kernel, loaded, before)
        if problem:
            row.fail("fail", f"cycle {cycle}: {problem}")
            break
        done = cycle
        if cycle == 0:  # the baseline after one load: caches the first load fills are not a leak
            mem_before = _meminfo(guest_kernel)
    row.cycles = f"{done}/{policy.cycles}"
    settle(session.config.settle)
    reading = guest_kernel.find_leaks()
    mem_after = _meminfo(guest_kernel)
    verdict = with_leaks(judge(guest_kernel.lines_since(mark), taint_before, guest_kernel.taint(), policy.allowlist,
                               policy.allowed_taint), reading, policy.allowlist)  # fmt: skip
    row.splats = str(len(verdict.splats.failures))
    row.taint = ",".join(f.letter for f in verdict.new_taint) or "none"
    if not verdict.splats.ok or verdict.new_taint:
        row.fail("splat", verdict.message())
    row.kmemleak = "n/a" if verdict.leaks is None else ("ok" if verdict.leaks.ok else "LEAK")
    if verdict.leaks is not None and not verdict.leaks.ok:
        row.fail("splat", verdict.leaks.message())
    growth = mem_after.get("SUnreclaim", 0) - mem_before.get("SUnreclaim", 0)
    row.slab = f"{growth:+d} kB" if mem_before and done == policy.cycles else "-"
    if mem_before and done == policy.cycles and growth > policy.max_slab_growth_kb:
        row.fail("fail", f"unreclaimable slab grew by {growth} kB over {policy.cycles} load/unload cycles "
                         f"(limit {policy.max_slab_growth_kb} kB): a leak on every load or unload?")  # fmt: skip


COLUMNS = (("kernel", "kernel"), ("build", "build"), ("load", "load"), ("cycles", "cycles"),
           ("splats", "splats"), ("taint", "new taint"), ("slab", "slab"), ("kmemleak", "kmemleak"),
           ("status", "verdict"))  # fmt: skip


def format_table(rows: Sequence[CheckRow]) -> str:
    """The rows as an aligned table, then each row's problems."""
    cells = [[title for _, title in COLUMNS]] + [[str(getattr(r, name)) for name, _ in COLUMNS] for r in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(COLUMNS))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in cells]
    for r in rows:
        lines += [f"{r.kernel}: {p}" for p in r.problems]
    return "\n".join(lines)
