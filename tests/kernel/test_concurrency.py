"""Concurrency: parallel senders, and unloading/reloading the module under load.

The guest-side loops are shell scripts written into the results directory
(the only path the guest can write and the host can read), so a long loop is
one console command. A splat or new taint fails the test through the plugin.
"""

from __future__ import annotations

import re
import secrets
import shlex
from collections import Counter
from pathlib import Path

import pytest
from knetlink_stats import module_stats  # tests/kernel/knetlink_stats.py

from harness.config import HarnessConfig
from harness.guest.kernel_ops import GuestKernel, module_tool
from harness.guest.vm import Guest
from harness.knetlink.fixtures import KnetlinkModule, LinkLogWindow
from harness.knetlink.senders import CSender

# (senders, messages per sender) and reload cycles per tier: the quick tier touches every path once.
PARALLEL = {"quick": (2, 200), "full": (8, 1000)}
CYCLES = {"quick": 4, "full": 20}
HAMMERS = 3


def tier(config: HarnessConfig) -> str:
    return "full" if config.full else "quick"
_SUMMARY = re.compile(r"^sent=(\d+) acked=(\d+) failed=(\d+) elapsed_us=(\d+)$", re.M)


def scratch_dir(guest_kernel: GuestKernel, what: str) -> Path:
    d = guest_kernel.scratch / f"{what}-{secrets.token_hex(4)}"
    d.mkdir(parents=True)
    return d


def summaries(text: str) -> list[tuple[int, int, int]]:
    return [(int(s), int(a), int(f)) for s, a, f, _ in _SUMMARY.findall(text)]


def test_senders_in_parallel(kmod: KnetlinkModule, kernel_log: LinkLogWindow, c_sender: CSender,
                             guest: Guest, guest_kernel: GuestKernel, knh_config: HarnessConfig) -> None:  # fmt: skip
    senders, count = PARALLEL[tier(knh_config)]
    work = scratch_dir(guest_kernel, "parallel")
    payloads = [f"par{i}-{secrets.token_hex(3)}" for i in range(senders)]
    lines = ["#!/bin/bash", f"cd {work}"]
    for i, p in enumerate(payloads):
        lines.append(f"{c_sender.binary} -p {kmod.proto} -n {count} -q -- {p} > out{i} 2> err{i} &")
    lines += ["wait", "echo done"]
    (work / "run.sh").write_text("\n".join(lines) + "\n")

    result = guest.run(["bash", str(work / "run.sh")], timeout=900)
    assert result.status == 0 and "done" in result.output, result.output
    per_sender = []
    for i in range(senders):
        out = (work / f"out{i}").read_text()
        err = (work / f"err{i}").read_text()
        assert summaries(out) == [(count, count, 0)], f"sender {i}: {out!r} {err!r}"
        per_sender.append(summaries(out)[0])
    assert sum(a for _, a, _ in per_sender) == senders * count

    links = kernel_log.links()
    assert len(links) == senders * count
    assert Counter(links) == {p.encode(): count for p in payloads}
    # the module's own counters: updated from up to senders contexts at once, none lost or doubled
    total = senders * count
    stats = module_stats(guest)
    assert stats == {"received": total, "printed": total, "acked": total, "errors": 0}, (
        f"stat_* counters after {senders} senders x {count} messages: {stats}"
    )


@pytest.mark.module_params(proto=31)  # unassigned: a sender while unloaded cannot autoload crypto_user (21)
def test_rmmod_insmod_while_senders_hammer(kmod: KnetlinkModule, kernel_log: LinkLogWindow, c_sender: CSender,
                                           guest: Guest, guest_kernel: GuestKernel,
                                           knh_config: HarnessConfig) -> None:  # fmt: skip
    cycles = CYCLES[tier(knh_config)]
    guest_kernel.ensure_not_host()
    work = scratch_dir(guest_kernel, "reload")
    params = " ".join(f"{k}={v}" for k, v in kmod.params.items())
    send = f"{c_sender.binary} -p {kmod.proto}"
    insmod, rmmod = (shlex.join(module_tool(tool, guest_kernel.root)) for tool in ("insmod", "rmmod"))
    (work / "hammer.sh").write_text(f"""#!/bin/bash
# one sender loop: short-lived senders (an open socket pins the module, so rmmod needs gaps)
cd {work}
while [ ! -e stop ]; do
  {send} -n 20 -q -- "hammer$1" >> out$1 2>> err$1
done
""")
    # The cycle starts no process but the module tools (busybox's applets where the guest has busybox,
    # as GuestKernel's insmod and rmmod) and a sender loop per hammer: its waits are `read -t` on a pipe
    # nobody writes (a builtin sleep; a `sleep` process costs tens of ms under TCG, more while three
    # loops fork senders), and the first rmmod waits until every loop has finished a sender run.
    (work / "cycle.sh").write_text(f"""#!/bin/bash
cd {work}
exec {{pause_fd}}<> <(:)
pause() {{ read -r -t "$1" -u "$pause_fd" _ || :; }}
pids=""
for ((i = 1; i <= {HAMMERS}; i++)); do bash hammer.sh $i & pids="$pids $!"; done
for ((t = 0; t < 600; t++)); do
  started=0
  for ((i = 1; i <= {HAMMERS}; i++)); do [ -s out$i ] && started=$((started + 1)); done
  [ $started -eq {HAMMERS} ] && break
  pause 0.05
done
[ $started -eq {HAMMERS} ] || echo "only $started of {HAMMERS} sender loops finished a run within 30 s"
ok=0
for ((c = 1; c <= {cycles}; c++)); do
  tries=0
  until {rmmod} {kmod.name} 2>/dev/null; do
    tries=$((tries + 1))
    [ $tries -gt 3000 ] && {{ echo "rmmod never succeeded in cycle $c"; break 2; }}
    pause 0.01
  done
  echo "cycle $c rmmod after $tries retries"
  pause 0.2
  {insmod} {kmod.path} {params} || {{ echo "insmod failed in cycle $c"; break; }}
  pause 0.2
  ok=$((ok + 1))
done
touch stop
# bounded wait: a sender stuck in the kernel must not hang the test for the whole command timeout
for ((t = 0; t < 600; t++)); do
  running=""
  for p in $pids; do kill -0 $p 2>/dev/null && running="$running $p"; done
  [ -z "$running" ] && break
  pause 0.1
done
[ -n "$running" ] && echo "sender loops still running after 60 s:$running"
echo "cycles ok: $ok"
""")
    result = guest.run(["bash", str(work / "cycle.sh")], timeout=300)
    assert f"cycles ok: {cycles}" in result.output, result.output[-3000:]
    assert "still running" not in result.output, result.output[-3000:]
    assert "sender loops finished a run" not in result.output, result.output[-3000:]

    # the module is loaded again and answers
    assert guest_kernel.loaded(kmod.name)
    after = c_sender.send("after reload cycles")
    assert [(a.seq, a.error) for a in after.acks] == [(1, 0)], after.output

    runs = []
    refused = 0
    for i in range(1, HAMMERS + 1):
        runs += summaries((work / f"out{i}").read_text())
        refused += (work / f"err{i}").read_text().count("socket")
    sent = sum(s for s, _, _ in runs)
    acked = sum(a for _, a, _ in runs)
    failed = sum(f for _, _, f in runs)
    print(f"reload: {cycles} cycles, {len(runs)} sender runs, sent {sent}, acked {acked}, failed {failed}, "
          f"{refused} runs refused a socket while unloaded")  # fmt: skip
    assert acked > 0, "no sender ever got an ack"
    assert failed == 0, "a sender that had a socket (which pins the module) missed an ack"
    # every acked message was printed exactly once; nothing else was
    links = kernel_log.links()
    hammer = [ln for ln in links if ln.startswith(b"hammer")]
    assert len(hammer) == acked, (len(hammer), acked, sent, failed)
    assert links[-1] == b"after reload cycles"
    texts = kernel_log.texts()
    assert sum("knetlink: Init OK!" in t for t in texts) == cycles + 1  # the fixture's load + one per cycle
    assert sum("knetlink: Release OK!" in t for t in texts) == cycles
