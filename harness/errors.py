"""Exceptions raised by the harness.

Every error carries the context needed to act on it (a command, a log tail,
an install command) in its message, so a failing test or CLI run explains
itself without a rerun.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar


class HarnessError(Exception):
    """Base class of every error the harness raises on purpose.

    ``infra`` says what a failure caused by the error means: True when the kernel or the
    host could not be used, so nothing was tested (a bisection skips the commit); False
    when the module or the kernel under test misbehaved. Callers classify by this flag,
    never by the message's words.
    """

    infra: ClassVar[bool] = False


class ConfigError(HarnessError):
    """A setting has an invalid value; the message names where it came from."""


class MissingDependencyError(HarnessError):
    """A host tool or package is missing; the message holds the install command."""

    infra = True

    def __init__(self, what: str, install: str) -> None:
        super().__init__(f"{what} is missing; install it with:\n    {install}")
        self.what = what
        self.install = install


class KernelNotFoundError(HarnessError):
    """No usable kernel image (or no headers for it) matches the request."""

    infra = True


class BuildError(HarnessError):
    """Building the module (or a sender) failed."""

    def __init__(self, message: str, log: str) -> None:
        tail = "\n".join(log.splitlines()[-30:])
        super().__init__(f"{message}\n--- build output (last 30 lines) ---\n{tail}")
        self.log = log


class BuildExcluded(HarnessError):
    """The driver's dkms.conf excludes this kernel (BUILD_EXCLUSIVE_*): DKMS would not build it, so its
    tests skip with DKMS's reason; nothing was tested on that kernel."""

    infra = True


class MissingKernelDependency(HarnessError):
    """The module needs a module or symbol this kernel does not provide (its subsystem is not
    configured); found before anything was loaded. The message names each and what provides it."""

    infra = True  # nothing was tested on this kernel


def _tail(text: str, lines: int) -> str:
    return "\n".join(text.splitlines()[-lines:])


class KernelBuildError(HarnessError):
    """Configuring or building a kernel source tree failed; carries the log tail and path."""

    infra = True  # a kernel that does not build cannot test the module

    def __init__(self, message: str, log: Path | None = None) -> None:
        parts = [message]
        if log is not None and log.exists():
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:])
            parts.append(f"--- kernel build log {log} (last 30 lines) ---\n{tail}")
        super().__init__("\n".join(parts))
        self.log = log


class GuestError(HarnessError):
    """Something went wrong with a guest; carries the console and kernel log tails."""

    def __init__(
        self,
        message: str,
        *,
        console_tail: str = "",
        kernel_log: Path | None = None,
        transcript: Path | None = None,
        splats: str = "",
    ) -> None:
        """`splats`: the headings of the splats on the guest's kernel console (harness.guest.vm finds them);
        a panic's reason comes before a call trace that can be longer than any tail."""
        parts = [message]
        if console_tail.strip():
            parts.append("--- console (last lines) ---\n" + _tail(console_tail, 25))
        if splats:
            parts.append(f"--- kernel splats on the guest kernel console ---\n{splats}")
        if kernel_log is not None and kernel_log.exists():
            text = kernel_log.read_text(errors="replace")
            if text.strip():
                parts.append(f"--- guest kernel console {kernel_log} (last lines) ---\n" + _tail(text, 40))
        if transcript is not None:
            parts.append(f"full console transcript: {transcript}")
        super().__init__("\n".join(parts))
        self.console_tail = console_tail
        self.kernel_log = kernel_log
        self.transcript = transcript


class BootError(GuestError):
    """The guest did not reach a usable shell before its deadline, or QEMU exited."""

    infra = True


class LostGuestError(GuestError):
    """The guest died (panic, QEMU exit) while a command was running."""


class CommandTimeout(GuestError):
    """A guest command did not return to the prompt in time."""

    recovered: bool = True  # False: Ctrl-C did not bring the prompt back, the guest is unusable


class GuestCommandError(HarnessError):
    """A guest command exited non-zero where success was required."""

    def __init__(self, command: str, status: int, output: str) -> None:
        super().__init__(f"guest command failed with status {status}: {command}\n{_tail(output, 30)}")
        self.command = command
        self.status = status
        self.output = output


class ModuleLoadError(HarnessError):
    """insmod or rmmod failed inside the guest."""

    def __init__(self, message: str, output: str, kernel_lines: list[str]) -> None:
        detail = [message]
        if output.strip():
            detail.append("--- insmod/rmmod output ---\n" + _tail(output, 10))
        if kernel_lines:
            detail.append("--- new kernel log lines ---\n" + "\n".join(kernel_lines[-20:]))
        super().__init__("\n".join(detail))
        self.output = output
        self.kernel_lines = kernel_lines


class ModuleBusyError(ModuleLoadError):
    """rmmod refused: the module is in use. The message names its holders and reference count."""


class ModuleCrashError(HarnessError):
    """The kernel crashed (oops, BUG, panic) while insmod or rmmod ran: a bug in the module,
    not a refusal to load. Deliberately not a ModuleLoadError, so code that treats a load
    refusal as "skip this module" does not swallow a crash."""

    def __init__(self, message: str, output: str, splats: str) -> None:
        detail = [message]
        if output.strip():
            detail.append("--- insmod/rmmod output ---\n" + _tail(output, 10))
        detail.append("--- kernel splat(s) ---\n" + splats)
        super().__init__("\n".join(detail))
        self.output = output
        self.splats = splats


class KernelCheckError(HarnessError):
    """The splat/taint check itself could not run on a live guest (the console answered
    nonsense, a command timed out): the test fails, the checks are never switched off."""


class KernelCheckInfraError(KernelCheckError):
    """The check could not run for a reason of the host or the harness (its cause has ``infra``:
    the guest's log copy unreadable, a mark lost): the test still fails, and a bisection skips
    the commit instead of blaming it."""

    infra = True


class HostKernelRefused(HarnessError):
    """An attempt to load a module where the target is the host kernel."""


class EbpfError(HarnessError):
    """Base class of eBPF observation errors."""


class EbpfUnavailable(EbpfError):
    """The guest cannot run bpftrace programs, or cannot time a call (the reason says why).

    Tests skip, or fail when the require_ebpf setting is on (harness.pytest_plugin.ebpf_fixtures.skip_or_fail).
    """


class BpfOutputError(EbpfError):
    """bpftrace wrote something the parser does not understand."""


class BpfProcessError(EbpfError):
    """bpftrace failed to start, to attach, or died while running."""


class ChannelError(HarnessError):
    """The data channel is unavailable or the peer went away."""


class AllowlistError(ConfigError):
    """A malformed allowlist entry; the message is ``<file>:<line>: <problem>; fix: <fix>``."""

    def __init__(self, source: str, line_no: int, problem: str, fix: str) -> None:
        super().__init__(f"{source}:{line_no}: {problem}; fix: {fix}")
        self.source = source
        self.line_no = line_no
        self.problem = problem


class UnreadableKernelConfig(HarnessError):
    """A kernel's configuration file (/boot/config-<release>, a build tree's .config) is there but cannot be
    read or decompressed: what the harness decides from it (memory-debug arguments, kmemleak scans, module
    coverage, debug info for the module build) would be guessed, so nothing runs on that kernel."""

    infra = True


class InvalidGuestCommand(HarnessError):
    """A guest command the console cannot carry as one shell line: too long, a control character in it,
    or incomplete shell input (unbalanced quotes). A bug of the code that wrote the command, not of the
    guest: the message names the command and what to change."""


class GuestReadError(HarnessError):
    """What a live guest was asked for could not be read back: a command's output lacks the value
    asked for, or a copy the guest wrote to the shared directory is unreadable on the host. Nothing
    was learnt about the module."""

    infra = True


class KernelLogLost(HarnessError):
    """The guest kernel log no longer holds a mark the harness wrote into it (the ring buffer wrapped
    past it, or the log was cleared): what the kernel logged since cannot be checked."""

    infra = True


class KernelModulesMissing(KernelNotFoundError):
    """The kernel's modules are not installed on the host (no modules.dep): the qemu engine cannot build
    its initramfs for that kernel. The message names the file and how to install or index the modules."""


class BenchError(HarnessError):
    """A step of the benchmark failed (a raw boot without its marker, a sender or the fuzzer reporting
    errors, the kernel suite failing or writing no results): its figures would mean nothing, so the
    benchmark stops. The benchmark measures and tests nothing, so this is no verdict on the module (infra):
    the kernel tests are where a module's bug counts."""

    infra = True
