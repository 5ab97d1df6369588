"""``python -m harness arch-setup ARCH``: what guests of a foreign architecture need, made once.

Downloads and unpacks that architecture's kernels (by default the counterparts of the host's
installed kernels: 6.1.0-57-amd64 -> 6.1.0-57-arm64) into the harness cache and unpacks its root
filesystem (harness.build.foreign). The host packages it needs (QEMU for the architecture, the
cross compiler, mmdebstrap) are scripts/setup.sh --arch ARCH's job; missing ones are named here.
"""

from __future__ import annotations

import argparse

from harness.arches import ARCH_NAMES, arch_named, host_arch, is_foreign
from harness.build.foreign import counterpart_release, install_kernel, make_root
from harness.build.kernel import arch_dirs, installed_kernels
from harness.cli.base import EXIT_HARNESS, Command, Output
from harness.errors import ConfigError, HarnessError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("arch", choices=ARCH_NAMES, help="the guest architecture")
    p.add_argument("--release", action="append", default=None, metavar="RELEASE",
                   help="a kernel release of that architecture to add (repeatable; default: the counterpart of "
                        "every installed host kernel, e.g. 6.1.0-57-arm64 for 6.1.0-57-amd64)")  # fmt: skip
    p.add_argument("--no-root", action="store_true", help="kernels only: leave the root filesystem alone")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress messages")


def run(args: argparse.Namespace) -> int:
    out = Output(args.quiet)
    try:
        arch = arch_named(args.arch)
        if not is_foreign(arch):
            raise ConfigError(f"{arch.name} is the host's architecture: its guests boot the installed kernels "
                              "with the host's root, nothing to set up")  # fmt: skip
        host = host_arch()
        releases = args.release or [r for k in installed_kernels()
                                    if (r := counterpart_release(k.release, host, arch)) is not None]  # fmt: skip
        if not releases:
            raise ConfigError(f"no installed {host.debian} kernel has an {arch.name} counterpart to add; name one "
                              f"with --release (e.g. --release 6.1.0-57-{arch.debian})")  # fmt: skip
        for release in releases:
            kernel = install_kernel(arch, release, notify=out.progress)
            print(f"kernel {kernel.spec}: {kernel.image}")
        if not args.no_root:
            print(f"root: {make_root(arch, notify=out.progress)}")
        print(f"{arch.name} ready in {arch_dirs(arch).base}: --arch {arch.name} (or --kernel {arch.name}:RELEASE)")
    except HarnessError as e:
        out.error(str(e))
        return EXIT_HARNESS
    return 0


COMMANDS = (Command("arch-setup", "download the kernels and unpack the root filesystem of a foreign guest "
                    "architecture (arm64 on an x86_64 host)", add_arguments, run),)  # fmt: skip
