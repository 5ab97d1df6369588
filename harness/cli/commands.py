"""Command line: ``python -m harness {exec,shell,check,build-kernel,bisect-run,doctor} ...`` (a module layer adds its
own commands: harness.knetlink.commands adds ``seed`` and ``bench``).

Exit status of ``exec``: the guest command's own status; 253 when the kernel
logged a splat (WARNING, BUG, Oops, ...) or gained a taint flag outside the
allowed ones between the module load and the end of the command (each splat is
printed on stderr; ``--ignore-splats`` keeps the command's status); 254 when
the harness could not get that far (kernel, build, boot or module load failed;
the message says which); 255 when the guest died while the command ran (panic,
QEMU exit). ``git bisect run`` aborts on statuses of 128 and above: with
``--bisect`` exec exits 0 (good), 125 (skip: 254) or 1 (bad: anything else), and 128
(abort) on a usage error before anything runs (a bad setting or allowlist).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from harness.arches import ARCH_NAMES
from harness.build.config_items import BuildOptions
from harness.build.kernel import qualify
from harness.build.kernel_build import resolve_kernel_spec
from harness.cli.base import EXIT_GUEST_DIED, EXIT_HARNESS, EXIT_KERNEL_SPLAT, Command, Output
from harness.cli.ini import project_ini
from harness.config import BUILD_CHOICES, ENGINES, SETTINGS_BY_NAME, HarnessConfig, module_params_dict, resolve
from harness.errors import ConfigError, HarnessError, LostGuestError, ModuleCrashError
from harness.kernel_log.dmesg import KernelLine, load_allowlist
from harness.kernel_watch import KernelVerdict, judge, with_decoded
from harness.session import KernelSession


def add_guest_options(p: argparse.ArgumentParser, *, module: bool = True, no_module: bool = True) -> None:
    def opt(name: str, **kw: Any) -> None:
        s = SETTINGS_BY_NAME[name]
        p.add_argument(s.option, dest=name, help=f"{s.help} [env {s.env}]", **kw)

    opt("kernels", action="append", default=None, metavar="KERNEL")
    opt("arch", default=None, choices=("host", *ARCH_NAMES))
    opt("accel", default=None, choices=("auto", "kvm", "tcg"))
    opt("engine", default=None, choices=ENGINES)
    opt("boot_timeout", default=None, metavar="SECONDS")
    opt("boot_retries", default=None, metavar="N")
    opt("command_timeout", default=None, metavar="SECONDS")
    opt("memory", default=None)
    opt("cpus", default=None)
    opt("results_dir", default=None, metavar="DIR")
    if module:
        opt("module_dir", default=None, metavar="DIR")
        opt("module_build", default=None, choices=BUILD_CHOICES)
        opt("make_vars", action="append", default=None, metavar="NAME=VALUE")
        opt("make_targets", action="append", default=None, metavar="TARGET")
        opt("module_params", action="append", default=None, metavar="NAME=VALUE")
        if no_module:
            p.add_argument("--no-module", action="store_true", help="boot without building or loading the module")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress messages")


def build_parser(extra: Sequence[Command] = ()) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m harness", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    sub = parser.add_subparsers(dest="command", required=True)
    for command in extra:
        command.add_arguments(sub.add_parser(command.name, help=command.help))

    p = sub.add_parser("exec", help="build the module, boot, load it, run a command in the guest")
    add_guest_options(p)
    for name in ("splat_allowlist", "allowed_taint"):
        s = SETTINGS_BY_NAME[name]
        p.add_argument(s.option, dest=name, default=None, help=f"{s.help} [env {s.env}]")
    p.add_argument("--dmesg", action="store_true",
                   help="print the guest kernel log from the module load (with --no-module: from the command's "
                        "start) after the command")  # fmt: skip
    p.add_argument("--ignore-splats", action="store_true",
                   help=f"exit with the command's status even when the kernel splatted or gained taint "
                        f"(they are still printed; default: exit {EXIT_KERNEL_SPLAT})")  # fmt: skip
    p.add_argument("--bisect", action="store_true",
                   help="exit the way `git bisect run` expects: 0 good (command and kernel clean), 125 skip "
                        f"(the harness could not get that far: {EXIT_HARNESS}), 1 bad (anything else)")  # fmt: skip
    p.add_argument("argv", nargs=argparse.REMAINDER, help="-- CMD [ARG...] (argv, not a shell string)")

    p = sub.add_parser("shell", help="interactive guest shell with the module loaded")
    add_guest_options(p)

    p = sub.add_parser("check", help="load/unload check of any driver, no test code: build, load with its "
                       "dependencies, unload, N cycles; a table per kernel",
                       description=loadcheck_doc(), formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    add_guest_options(p, no_module=False)
    for name in ("splat_allowlist", "allowed_taint"):
        s = SETTINGS_BY_NAME[name]
        p.add_argument(s.option, dest=name, default=None, help=f"{s.help} [env {s.env}]")
    p.add_argument("--cycles", type=int, default=10, metavar="N",
                   help="load/unload cycles after the first (default 10)")  # fmt: skip
    p.add_argument("--max-slab-growth", type=int, default=1024, metavar="KB",
                   help="unreclaimable slab growth over the check that fails it (default 1024 kB)")  # fmt: skip

    p = sub.add_parser("build-kernel", help="build the kernels a --kernel names (debug, debug:TREE, a tree), or "
                       "take them from the cache; boot nothing",
                       description="Build (or find in the cache) each kernel the --kernel options or KNH_KERNEL "
                       "name, boot nothing, and print its release and image. A later run finds them in the "
                       "cache when it has the same build settings (KNH_KERNEL_BASE, KNH_KERNEL_BTF, "
                       "KNH_KERNEL_CONFIG): `build-kernel --kernel debug` ahead of `tox -e debug`, e.g. beside "
                       "other work under `nice`. Exit 0, or 254 when a kernel cannot be built or found.")  # fmt: skip
    p.add_argument(SETTINGS_BY_NAME["kernels"].option, dest="kernels", action="append", default=None,
                   metavar="KERNEL", help="kernel to build or find: debug, debug:TREE, a kernel source tree, an "
                   f"installed release or 'all' (repeatable) [env {SETTINGS_BY_NAME['kernels'].env}]")  # fmt: skip
    p.add_argument("-q", "--quiet", action="store_true", help="no progress messages")

    p = sub.add_parser("bisect-run", help="git bisect run step: build the tree's kernel, run tests, exit 0/1/125",
                       description="Exit 0 good, 1 bad, 125 skip (kernel build failed, or boot failed: see "
                       "--on-boot-failure), 128 abort (no tests collected, pytest usage/internal error, "
                       "missing tool). Use as: git bisect run PYTHON -m harness bisect-run -- TESTS...")  # fmt: skip
    p.add_argument("--kernel-tree", default=".", metavar="DIR", help="kernel source tree (default: .)")
    p.add_argument("--on-boot-failure", choices=("skip", "bad", "abort"), default="skip",
                   help="verdict when the built kernel does not boot (default skip: exit 125)")  # fmt: skip
    p.add_argument("--btf", action="store_true", help="build with DEBUG_INFO_BTF (slower; for eBPF tests)")
    p.add_argument("--configitem", action="append", default=[], metavar="NAME=VALUE",
                   help="extra kernel config item, e.g. CONFIG_PREEMPT_RT=y (repeatable)")  # fmt: skip
    p.add_argument("--jobs", type=int, default=None, metavar="N", help="make -j (default: number of cores)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress messages")
    p.add_argument("pytest_args", nargs=argparse.REMAINDER, help="-- PYTEST_ARGS... (test paths, -k, --engine)")

    p = sub.add_parser("doctor", help="check host dependencies and print install commands")
    p.add_argument("--kernel", dest="kernels", action="append", default=None)
    p.add_argument("--no-kvm-probe", action="store_true", help="skip booting a KVM probe guest")
    p.add_argument("--arch", choices=ARCH_NAMES, default=None,
                   help="also require what guests of this architecture need (arm64: scripts/setup.sh --arch arm64)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    return parser


def config_from_args(args: argparse.Namespace) -> HarnessConfig:
    names = ("kernels", "arch", "accel", "engine", "boot_timeout", "boot_retries", "command_timeout", "memory", "cpus",
             "results_dir", "module_dir", "module_build", "make_vars", "make_targets", "module_params",
             "splat_allowlist", "allowed_taint")  # fmt: skip
    options = {n: getattr(args, n, None) for n in names}
    cfg = resolve(options, ini=project_ini())
    from dataclasses import replace

    return replace(cfg, results_dir=cfg.results_dir.resolve())


def first_kernel(cfg: HarnessConfig) -> str | None:
    """The kernel a one-kernel command boots: the first --kernel, with the arch setting's prefix where it is
    foreign (harness.build.kernel.qualify); None for the newest installed."""
    return qualify(cfg.kernels[0] if cfg.kernels else "", cfg.arch) or None


def open_session(cfg: HarnessConfig, out: Output) -> KernelSession:
    if len(cfg.kernels) > 1:
        where = cfg.sources.get("kernels", "the settings")
        raise ConfigError(f"give this command one --kernel, not {len(cfg.kernels)} ({' '.join(cfg.kernels)}, {where})")
    spec = first_kernel(cfg)
    kernel = resolve_kernel_spec(spec, notify=out.progress, options=BuildOptions.from_config(cfg))
    run_root = cfg.results_dir / time.strftime("cli-%Y%m%d-%H%M%S")
    return KernelSession(cfg, kernel, run_root, notify=out.progress, requested_kernel=spec)


def run_with_session(args: argparse.Namespace, body: Callable[[KernelSession, Output], int]) -> int:
    """Open a session from the arguments, run `body`, map harness failures to exit codes, clean up."""
    out = Output(args.quiet)
    try:
        session = open_session(config_from_args(args), out)
    except HarnessError as e:
        out.error(str(e))
        return EXIT_HARNESS
    try:
        return body(session, out)
    except LostGuestError as e:
        out.error(str(e))
        return EXIT_GUEST_DIED
    except ModuleCrashError as e:  # the kernel oopsed loading or unloading the module: a splat, not a refusal
        out.error(str(e))
        return EXIT_KERNEL_SPLAT
    except HarnessError as e:
        out.error(str(e))
        return EXIT_HARNESS
    finally:
        session.close()


def exec_status(command_status: int, verdict: KernelVerdict, *, ignore_splats: bool) -> int:
    """exec's exit status: the command's, unless the kernel splatted or gained taint and that is not ignored."""
    if verdict.ok or ignore_splats:
        return command_status
    return EXIT_KERNEL_SPLAT


def kernel_report(verdict: KernelVerdict) -> str:
    """What the kernel did during exec, for stderr: every splat (heading, first lines,
    fingerprint), allowlisted ones with their reason, and new taint. Empty when nothing happened."""
    parts = []
    if verdict.splats.failures:
        parts.append(f"kernel splat(s) during the command ({len(verdict.splats.failures)}):")
    if verdict.splats.failures or verdict.splats.allowed:
        parts.append(verdict.splats.summary())
    if verdict.decoded:
        parts.append(verdict.decoded)
    if verdict.new_taint:
        flags = ", ".join(str(f) for f in verdict.new_taint)
        parts.append(f"kernel taint changed {verdict.taint_before} -> {verdict.taint_after}: unexpected {flags}")
    return "\n".join(parts)


def status_note(command_status: int, verdict: KernelVerdict, *, ignore_splats: bool) -> str:
    """One line saying why exec's status differs from the command's (or would, without --ignore-splats)."""
    if verdict.ok:
        return ""
    if ignore_splats:
        return f"--ignore-splats: exiting with the command's own status {command_status}"
    return (f"exit status {EXIT_KERNEL_SPLAT} (kernel splat or taint); the command's own status was "
            f"{command_status}; --ignore-splats keeps it")  # fmt: skip


def write_log(lines: Sequence[KernelLine], since: str) -> None:
    sys.stdout.write(f"--- guest kernel log since {since} ---\n")
    sys.stdout.write("".join(line.raw + "\n" for line in lines))


def report_verdict(command_status: int, verdict: KernelVerdict, *, ignore_splats: bool) -> int:
    """Print what the kernel did on stderr (splats always, whatever -q says); return exec's exit status."""
    for text in (kernel_report(verdict), status_note(command_status, verdict, ignore_splats=ignore_splats)):
        if text:
            print(f"knetlink-harness: {text}", file=sys.stderr, flush=True)
    return exec_status(command_status, verdict, ignore_splats=ignore_splats)


def cmd_exec(args: argparse.Namespace) -> int:
    argv = list(args.argv)
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        Output(args.quiet).error("exec needs a command: python -m harness exec [options] -- CMD [ARG...]")
        return 2

    def body(session: KernelSession, out: Output) -> int:
        allowlist = load_allowlist(session.config.splat_allowlist)  # a bad file: ConfigError, no boot
        build = None if args.no_module else session.build()  # a build failure should not cost a boot
        guest_kernel = session.guest_kernel()
        mark, taint_before = guest_kernel.mark_and_taint()  # the window starts before insmod
        if build is not None:
            loaded = session.load(module_params_dict(session.config.module_params))
            out.progress(f"loaded {', '.join(loaded.loaded)}")
        result = session.guest().run(argv, timeout=session.config.command_timeout)
        sys.stdout.write(result.output)
        sys.stdout.flush()
        lines = guest_kernel.lines_since(mark)
        verdict = judge(lines, taint_before, guest_kernel.taint(), allowlist, session.config.allowed_taint)
        verdict = with_decoded(verdict, session)
        if args.dmesg:
            write_log(lines, "the command's start" if build is None else "the module load")
        sys.stdout.flush()
        return report_verdict(result.status, verdict, ignore_splats=args.ignore_splats)

    if args.bisect:
        try:  # a usage error would skip every commit: the bisection stops instead
            load_allowlist(config_from_args(args).splat_allowlist)
        except ConfigError as e:
            Output(args.quiet).error(f"{e}\n(a usage error: exit {GIT_BISECT_ABORT} stops the bisection, which would "
                                     "otherwise skip every commit)")  # fmt: skip
            return GIT_BISECT_ABORT
    status = run_with_session(args, body)
    return bisect_status(status) if args.bisect else status


GIT_BISECT_GOOD, GIT_BISECT_BAD, GIT_BISECT_SKIP, GIT_BISECT_ABORT = 0, 1, 125, 128


def bisect_status(status: int) -> int:
    """exec's status in `git bisect run` terms (which aborts the bisection on 128 and above)."""
    if status == 0:
        return GIT_BISECT_GOOD
    return GIT_BISECT_SKIP if status == EXIT_HARNESS else GIT_BISECT_BAD


def cmd_shell(args: argparse.Namespace) -> int:
    out = Output(args.quiet)
    try:
        cfg = config_from_args(args)
        session = open_session(cfg, out)
        if not args.no_module:
            loaded = session.load(module_params_dict(cfg.module_params))
            out.progress(f"loaded {', '.join(loaded.loaded)}; exit the shell with 'exit' or Ctrl-D")
        guest = session.guest()
    except HarnessError as e:
        out.error(str(e))
        return EXIT_HARNESS
    try:
        child = guest.console.child
        child.logfile_read = None
        # The harness shell runs without echo and line editing; a human gets both back.
        child.send("stty echo; PS1='knh-guest# ' exec /bin/bash --norc --noprofile -i\n")
        child.interact(escape_character=None)
    finally:
        session.close()
    return 0


def loadcheck_doc() -> str:
    from harness import loadcheck

    return (loadcheck.__doc__ or "") + (f"\nExit status: 0 every kernel passed (or was excluded by the driver's "
            f"dkms.conf, not all); 1 the module failed a check; {EXIT_KERNEL_SPLAT} a splat, new taint or leak; "
            f"{EXIT_HARNESS} the harness could not get that far; {EXIT_GUEST_DIED} a guest died.")  # fmt: skip


CHECK_STATUS = {"pass": 0, "skip": 0, "fail": 1, "splat": EXIT_KERNEL_SPLAT, "harness": EXIT_HARNESS,
                "died": EXIT_GUEST_DIED}  # fmt: skip


def cmd_check(args: argparse.Namespace) -> int:
    """The load/unload check on every kernel the configuration names; one table; the worst status."""
    from harness.build.kernel import expand_kernel_specs
    from harness.loadcheck import CheckPolicy, CheckRow, check_kernel, format_table

    out = Output(args.quiet)
    rows: list[CheckRow] = []
    try:
        cfg = config_from_args(args)
        policy = CheckPolicy(args.cycles, module_params_dict(cfg.module_params), load_allowlist(cfg.splat_allowlist),
                             cfg.allowed_taint, args.max_slab_growth)  # fmt: skip
        specs = expand_kernel_specs(cfg.kernels, arch=cfg.arch)
    except HarnessError as e:
        out.error(str(e))
        return EXIT_HARNESS
    run_root = cfg.results_dir / time.strftime("check-%Y%m%d-%H%M%S")
    for spec in specs:
        try:
            kernel = resolve_kernel_spec(spec or None, notify=out.progress, options=BuildOptions.from_config(cfg))
        except HarnessError as e:
            rows.append(CheckRow(spec or "default", status="ERROR", problems=[str(e)], outcome="harness"))
            continue
        session = KernelSession(cfg, kernel, run_root, notify=out.progress, requested_kernel=spec or None)
        try:
            rows.append(check_kernel(session, session.default_source(), policy))
        finally:
            session.close()
        out.progress(f"{kernel.release}: {rows[-1].status} ({rows[-1].seconds:.1f} s)")
    print(format_table(rows), flush=True)
    if all(r.outcome == "skip" for r in rows):
        out.error("no kernel was checked: the driver's dkms.conf excludes every kernel named")
        return EXIT_HARNESS
    return max(CHECK_STATUS[r.outcome] for r in rows)


def cmd_build_kernel(args: argparse.Namespace) -> int:
    """Resolve every kernel the configuration names, building source trees and profiles; print
    `RELEASE IMAGE` per kernel on stdout."""
    from harness.build.kernel import expand_kernel_specs

    out = Output(args.quiet)
    try:
        cfg = config_from_args(args)
        options = BuildOptions.from_config(cfg)
        for spec in expand_kernel_specs(cfg.kernels, arch=cfg.arch):
            start = time.monotonic()
            kernel = resolve_kernel_spec(spec or None, notify=out.progress, options=options)
            out.progress(f"{spec or 'default kernel'}: {kernel.release} ready ({time.monotonic() - start:.1f} s)")
            print(kernel.release, kernel.image, flush=True)
    except HarnessError as e:
        out.error(str(e))
        return EXIT_HARNESS
    return 0


def check_configitems(items: Sequence[str]) -> None:
    """bisect-run's --configitem values, checked as the kernel_config setting's items are."""
    parse = SETTINGS_BY_NAME["kernel_config"].item_parse or str
    for item in items:
        try:
            parse(item)
        except ValueError as e:
            raise ConfigError(f"invalid --configitem {item!r}: {e}; e.g. CONFIG_PREEMPT_RT=y") from None


def cmd_bisect_run(args: argparse.Namespace) -> int:
    """One `git bisect run` step; see harness/cli/bisect_run.py for the exit-status contract."""
    from harness.cli.bisect_run import EXIT_ABORT, absolutize_args, bisect_run, default_build_step

    out = Output(args.quiet)
    pytest_args = list(args.pytest_args)
    if pytest_args and pytest_args[0] == "--":
        pytest_args = pytest_args[1:]
    if not pytest_args:
        out.error("bisect-run needs tests: python -m harness bisect-run [--kernel-tree DIR] -- PYTEST_ARGS...")
        return EXIT_ABORT
    tree = Path(args.kernel_tree).resolve()
    try:
        env_options = BuildOptions.from_env()
        check_configitems(args.configitem)  # a usage error now, not a failed build on every commit
        options = BuildOptions(btf=args.btf or env_options.btf,
                               extra_config=(*env_options.extra_config, *args.configitem),
                               jobs=args.jobs or env_options.jobs, vng=env_options.vng)  # fmt: skip
    except HarnessError as e:
        out.error(str(e))
        return EXIT_ABORT

    def notify(message: str) -> None:
        print(f"[knh] {message}", file=sys.stderr, flush=True)

    return bisect_run(tree, absolutize_args(pytest_args, Path.cwd()), build=default_build_step(options, out.progress),
                      on_infra=args.on_boot_failure, notify=notify)  # fmt: skip


def main(argv: Sequence[str] | None = None, extra: Sequence[Command] = ()) -> int:
    """Run the core commands, and `extra` ones a module layer adds."""
    from harness.cli.arch_setup import COMMANDS as ARCH_COMMANDS
    from harness.cli.shards import COMMANDS

    extra = (*COMMANDS, *ARCH_COMMANDS, *extra)
    args = build_parser(extra).parse_args(argv)
    for command in extra:
        if args.command == command.name:
            return command.run(args)
    if args.command == "exec":
        return cmd_exec(args)
    if args.command == "shell":
        return cmd_shell(args)
    if args.command == "check":
        return cmd_check(args)
    if args.command == "build-kernel":
        return cmd_build_kernel(args)
    if args.command == "bisect-run":
        return cmd_bisect_run(args)
    if args.command == "doctor":
        from harness.cli.doctor import run_doctor

        return run_doctor(args.kernels[0] if args.kernels else None, probe_kvm=not args.no_kvm_probe, as_json=args.json,
                          arch=args.arch)  # fmt: skip
    raise AssertionError(args.command)


if __name__ == "__main__":
    os._exit(main())
