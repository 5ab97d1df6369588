"""What every part of the command line shares: exit statuses, the Output of progress and errors, and
the Command type through which command modules (harness.cli.shards) and a module layer
(harness.knetlink.commands) add subcommands to ``python -m harness``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass

EXIT_KERNEL_SPLAT = 253
EXIT_HARNESS = 254
EXIT_GUEST_DIED = 255


class Output:
    """Progress on stderr unless quiet; results on stdout."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet

    def progress(self, message: str) -> None:
        if not self.quiet:
            print(f"[knh] {message}", file=sys.stderr, flush=True)

    def error(self, message: str) -> None:
        print(f"knetlink-harness: error: {message}", file=sys.stderr, flush=True)



@dataclass(frozen=True)
class Command:
    """A subcommand added to ``python -m harness`` by a command module or a module layer."""

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
