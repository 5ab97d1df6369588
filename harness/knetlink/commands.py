"""The knetlink layer's commands of ``python -m harness``: ``seed`` and ``bench``.

``python -m harness`` (and the ``knetlink-harness`` script) is the core command
line (harness.cli.commands) plus these two.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path

from harness.build.kernel_build import resolve_kernel_spec
from harness.cli.base import EXIT_HARNESS, Command, Output
from harness.cli.commands import add_guest_options, config_from_args, first_kernel, run_with_session
from harness.config import HarnessConfig, module_params_dict
from harness.errors import HarnessError
from harness.knetlink.links import parse_link_lines
from harness.knetlink.senders import C_SENDER, CSender
from harness.session import KernelSession

SEED_MESSAGE = "hello world!"


def _seed_arguments(p: argparse.ArgumentParser) -> None:
    add_guest_options(p)


def cmd_seed(args: argparse.Namespace) -> int:
    """The seed's scenario: Init OK!, then link:hello world! for one message, acked with 0."""

    def body(session: KernelSession, out: Output) -> int:
        ops = session.guest_kernel()
        mark = ops.mark()
        loaded = session.load(module_params_dict(session.config.module_params))
        proto = int(session.module_param(loaded, "proto"))
        sender = CSender(session.guest(), session.build().directory / C_SENDER, proto)
        sent = sender.send(SEED_MESSAGE)
        lines = ops.lines_since(mark)
        machine = session.guest().run(["uname", "-m"]).output.strip()
        print(f"kernel {session.kernel.release} ({machine} guest), accelerator {session.accel().accel}, "
              f"boot {session.stats.boot_times_s[-1]:.1f} s")  # fmt: skip
        print("sender: " + sent.output.strip())
        print("kernel log:")
        for line in lines:
            if "Init OK!" in line.text or parse_link_lines([line]):
                print(f"  {line.text}")
        links = [link.payload for link in parse_link_lines(lines)]
        ok = sent.status == 0 and [a.error for a in sent.acks] == [0] and links == [SEED_MESSAGE.encode()]
        print("seed scenario: " + ("OK" if ok else "FAILED"))
        return 0 if ok else 1

    return run_with_session(args, body)


def _at_least_one(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _bench_arguments(p: argparse.ArgumentParser) -> None:
    add_guest_options(p)
    p.add_argument("--json", dest="json_out", metavar="FILE", help="also write the figures as JSON")
    p.add_argument("--boots", type=int, default=3, help="boots per engine and raw boots (default 3)")
    p.add_argument("--messages", type=int, default=20000, help="messages per sender rate run (default 20000)")
    p.add_argument("--no-suite", action="store_true", help="skip suite_s/naive_suite_s")
    p.add_argument("--quick", action="store_true",
                   help="the headline ratios only, from smaller samples, in minutes (docs/performance.md)")  # fmt: skip
    p.add_argument("--senders-only", action="store_true",
                   help="only py_sender_rate and c_sender_rate, on every --kernel in turn")  # fmt: skip
    p.add_argument("--sender-runs", type=_at_least_one, default=3, help="runs per sender rate (default 3)")
    p.add_argument("--no-arches", action="store_true",
                   help="leave out the foreign architectures' figures (taken for each one arch-setup has set up)")


def cmd_bench(args: argparse.Namespace) -> int:
    from harness.arches import split_arch
    from harness.knetlink.bench import (
        BenchOptions,
        format_sender_table,
        format_table,
        quick_options,
        run_bench,
        run_sender_bench,
    )
    from harness.knetlink.bench_arch import arch_figures, foreign_specs, format_arch_rows

    out = Output(args.quiet)
    try:
        cfg = config_from_args(args)
        run_root = cfg.results_dir / time.strftime("bench-%Y%m%d-%H%M%S")

        def session_for(c: HarnessConfig) -> KernelSession:
            kernel = resolve_kernel_spec(first_kernel(c), notify=out.progress)
            return KernelSession(c, kernel, run_root, notify=out.progress)

        opts = (quick_options(args.boots, args.sender_runs) if args.quick else
                BenchOptions(boots=args.boots, messages=args.messages, sender_runs=args.sender_runs,
                             suite=not args.no_suite))  # fmt: skip
        result = (run_sender_bench if args.senders_only else run_bench)(cfg, session_for, opts, out.progress)
        if not args.senders_only and not args.no_arches:
            result["arches"] = {split_arch(spec)[0]: arch_figures(cfg, spec, session_for, opts.boots, opts.rtt_samples,
                                                                  opts.cycles, opts.overhead_tests, out.progress)
                                for spec in foreign_specs()}  # fmt: skip
    except HarnessError as e:
        out.error(str(e))
        return EXIT_HARNESS
    print(format_sender_table(result) if args.senders_only else "\n".join([format_table(result),
                                                                             *format_arch_rows(result)]))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(result, indent=2) + "\n")
    return 0


COMMANDS = (
    Command("seed", "replay the seed scenario: load, send 'hello world!', show the link: line", _seed_arguments,
            cmd_seed),
    Command("bench", "measure boot, console, load and sender costs against the machine's floor",
            _bench_arguments, cmd_bench),
)  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    from harness.cli.commands import main as core_main

    return core_main(argv, COMMANDS)
