"""Kernel-side operations on a running guest: load and unload modules, read the
kernel log between two points, read the taint value, scan for leaks (kmemleak).

Bulk data (the kernel log) goes through the shared results directory, not the
serial console: the guest writes a file, the host reads it.
"""

from __future__ import annotations

import functools
import itertools
import secrets
import shlex
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from harness.build.decode import DecodeInputs, decoded_section
from harness.build.foreign import root_busybox
from harness.build.module_deps import module_name
from harness.errors import (
    GuestReadError,
    HostKernelRefused,
    KernelLogLost,
    ModuleBusyError,
    ModuleCrashError,
    ModuleLoadError,
)
from harness.guest.console import MAX_COMMAND_CHARS, CommandResult
from harness.guest.log_stream import KernelLogStream, reader_command
from harness.guest.vm import Guest
from harness.kernel_log.dmesg import KernelLine, find_splats
from harness.kernel_log.kmemleak import (
    CLEAR,
    KMEMLEAK_PATH,
    SCAN,
    SCAN_OFF,
    SCAN_TIMEOUT_S,
    SCANS,
    LeakReading,
    UnloadedModule,
    leak_reading,
    parse_sections,
    scan_delay,
    sections_argv,
    write_argv,
)

HOST_BOOT_ID = Path("/proc/sys/kernel/random/boot_id")
# The taint value, read by the shell itself: a `cat` process costs ~60 ms under TCG.
TAINT_COMMAND = 'read -r t < /proc/sys/kernel/tainted && echo "$t"'
SYNC_PREFIX = "knh-sync:"  # lines that end a read of the kernel log (GuestKernel.log), never shown


@dataclass(frozen=True)
class LogMark:
    """A point in the guest kernel log (a unique line written to /dev/kmsg)."""

    text: str


@functools.cache
def module_tool(name: str, root: Path = Path("/")) -> tuple[str, ...]:
    """argv of insmod or rmmod in the guest whose root is the host directory `root` (the host's own, or
    a foreign architecture's). busybox's applets (static, the same init_module and delete_module calls)
    start in ~50 ms under TCG where kmod's take ~140 ms; kmod's when that root has no busybox."""
    busybox = shutil.which("busybox") if root == Path("/") else root_busybox(root)
    return (busybox, name) if busybox else (name,)


def host_boot_id() -> str:
    return HOST_BOOT_ID.read_text().strip()


def parse_taint(output: str) -> int:
    """The value `cat /proc/sys/kernel/tainted` printed. The console is shared with
    background jobs, so a stray line (a job's "Killed" notice) may precede it: the
    value is the last line made only of digits."""
    for line in reversed(output.splitlines()):
        if line.strip().isdigit():
            return int(line.strip())
    raise GuestReadError(f"no taint value in the output of `cat /proc/sys/kernel/tainted`: {output[-500:]!r}; the "
                         "guest console carried something else (see the console transcript of the guest)")


class GuestKernel:
    """Module and kernel-log operations on one guest; `scratch` is a guest-writable host dir.
    `kmemleak`: the kernel may have kmemleak (harness.kernel_log.kmemleak.may_have_kmemleak); the guest is then
    asked once, at the first insmod."""

    def __init__(self, guest: Guest, scratch: Path, *, kmemleak: bool = False,
                 decode_inputs: Callable[[], DecodeInputs] | None = None, root: Path = Path("/")) -> None:  # fmt: skip
        self.guest = guest
        self.scratch = scratch
        self.root = root  # the host directory that is the guest's root (harness.guest.engines.GuestSpec.root)
        self._token = secrets.token_hex(4)
        self._counter = itertools.count(1)
        self._verified_not_host = False
        self.unloads = 0  # successful rmmods on this guest: the after-test check lets the kernel settle after one
        self._kmemleak: bool | None = None if kmemleak else False
        self._loaded_from: dict[str, Path] = {}  # module name -> .ko, for naming its frames after the rmmod
        self._unscanned: list[UnloadedModule] = []  # unloaded since the last kmemleak scan
        self._log_stream: KernelLogStream | None = None
        self._decode_inputs = decode_inputs  # KernelSession.decode_inputs: what a crash's frames decode with

    # -- safety ------------------------------------------------------------
    def ensure_not_host(self) -> None:
        """Refuse to load anything unless the target kernel is provably not the host's.

        The guest's boot_id (random per boot) must differ from the host's; the
        same value means the "guest" is the host kernel itself.
        """
        if self._verified_not_host:
            return
        guest_id = self.guest.run(["cat", str(HOST_BOOT_ID)], check=True).output.strip()
        check_not_host(guest_id, host_boot_id())
        self._verified_not_host = True

    # -- kernel log ----------------------------------------------------------
    def _new_mark(self, prefix: str = "knh-mark:") -> LogMark:
        return LogMark(f"{prefix}{self._token}:{next(self._counter)}")

    def _marked(self, command: str = "", *, prefix: str = "knh-mark:",
                check: bool = False) -> tuple[LogMark, CommandResult]:  # fmt: skip
        """A new mark written to /dev/kmsg, then `command` if any, in one guest command: what the
        command makes the kernel print follows the mark."""
        mark = self._new_mark(prefix)
        then = f" && {command}" if command else ""
        return mark, self.guest.run(f"echo {mark.text} > /dev/kmsg{then}", check=check)

    @property
    def _listing(self) -> str:
        """The line that comes before the module list a combined command prints (after its own output)."""
        return f"knh-modules:{self._token}"

    def mark(self) -> LogMark:
        return self._marked(check=True)[0]

    def mark_and_taint(self) -> tuple[LogMark, int]:
        """A new mark and the taint value read after it, in one guest command (shell builtins only):
        a taint from here on also prints after the mark. The log's reader starts with the first one, so
        a flood during the first test is copied as it comes."""
        self._stream()
        mark, result = self._marked(TAINT_COMMAND, check=True)
        return mark, parse_taint(result.output)

    def _stream(self) -> KernelLogStream:
        """The guest's /dev/kmsg copy; its reader starts with the first read of the log (it copies
        the ring buffer from its oldest record, so nothing logged before is missed)."""
        if self._log_stream is None:
            self.scratch.mkdir(parents=True, exist_ok=True)
            stream = KernelLogStream(self.scratch / f"kmsg-{self._token}.log")
            self.guest.run(reader_command(stream.path), check=True)
            self._log_stream = stream
        return self._log_stream

    def _copied(self, end: LogMark, start: LogMark | None) -> list[KernelLine]:
        """The copy's lines from the one holding `start` (None: from the first) up to `end`, a mark just
        written, once the copy holds it; nothing when `start` is not there. Sync lines are left out."""
        stream = self._stream()
        stop = stream.wait_for(end.text, alive=lambda: self.guest.alive)
        first = 0 if start is None else stream.find(start.text, stop)
        if first < 0:
            return []
        return [line for line in stream.lines(first, stop) if not line.text.startswith(SYNC_PREFIX)]

    def log(self, since: LogMark | None = None) -> list[KernelLine]:
        """The kernel log of the guest up to now, parsed: all of it, or from the line holding `since`
        on (nothing when `since` is not in it). "Now" is a sync line written to /dev/kmsg, which
        the copy holds once everything logged before it is in."""
        return self._copied(self._marked(prefix=SYNC_PREFIX, check=True)[0], since)

    def lines_between(self, start: LogMark | None, end: LogMark) -> list[KernelLine]:
        """Kernel log lines after `start` (None: from the guest's first line) and before `end`, a mark just
        written (no sync line needed). Raises KernelLogLost when `start` is not in the log."""
        if start is None:
            return self._copied(end, None)
        return lines_after_mark(self._copied(end, start), start)

    def lines_since(self, mark: LogMark) -> list[KernelLine]:
        """Kernel log lines after `mark` (the mark line itself excluded)."""
        return lines_after_mark(self.log(since=mark), mark)

    def read_value(self, path: str) -> str:
        """The last line of a small file of the guest (a sysfs or procfs value), read by the shell
        itself: a `cat` process costs ~60 ms under TCG. A missing or empty file is a GuestCommandError."""
        quoted = shlex.quote(path)
        command = f"{{ IFS= read -r -d '' v || [ -n \"$v\" ]; }} < {quoted} && printf '%s\\n' \"$v\""
        output = self.guest.run(command, check=True).output.strip()
        return output.splitlines()[-1] if output else ""

    # -- taint -----------------------------------------------------------------
    def taint(self) -> int:
        return parse_taint(self.guest.run(TAINT_COMMAND, check=True).output)

    # -- modules -----------------------------------------------------------------
    def insmod(self, ko: Path, params: Mapping[str, str] | None = None) -> str:
        """Load `ko` in the guest; returns the module name. Raises ModuleLoadError with the kernel's
        words when the kernel refused it, ModuleCrashError when the kernel crashed loading it."""
        return self._insmod(ko, params, listing=False)[0]

    def insmod_listing(self, ko: Path, params: Mapping[str, str] | None = None) -> tuple[str, tuple[str, ...]]:
        """insmod, and the guest's module list after it (module_list), in one guest command."""
        return self._insmod(ko, params, listing=True)

    def _insmod(self, ko: Path, params: Mapping[str, str] | None, *, listing: bool) -> tuple[str, tuple[str, ...]]:
        self.ensure_not_host()
        if self.has_kmemleak():  # objects reported before never blame this module
            self.guest.run(write_argv(CLEAR), check=True)
        argv = [*module_tool("insmod", self.root), str(ko)] + [f"{k}={v}" for k, v in (params or {}).items()]
        listed = f" && {{ echo {self._listing}; {MODULE_LIST_SCRIPT}; }}" if listing else ""
        mark, result = self._marked(shlex.join(argv) + listed)
        if result.status != 0:
            lines = self.lines_since(mark)
            self._raise_if_crashed(f"insmod {ko.name}", result.status, result.output, lines, also=ko)
            raise ModuleLoadError(
                f"insmod {ko.name} failed (status {result.status})", result.output, [ln.text for ln in lines]
            )
        name = ko.stem.replace("-", "_")
        self._loaded_from[name] = ko
        return name, (self._listed(result.output) if listing else ())

    def _listed(self, output: str) -> tuple[str, ...]:
        """The module names a combined command printed after its _listing line."""
        lines = output.splitlines()
        if self._listing not in lines:
            raise GuestReadError(f"no module list ({self._listing} and the names) in the output of a guest command: "
                                 f"{output[-500:]!r}; the guest's shell or console is not in step: rerun the test")
        return tuple(n.strip() for n in lines[lines.index(self._listing) + 1 :] if n.strip())

    def rmmod(self, name: str) -> None:
        """Unload `name`. Raises ModuleBusyError (with holders and reference count) when the kernel
        refuses because the module is in use, ModuleCrashError when it crashed."""
        ko = self._loaded_from.get(name) if self.has_kmemleak() else None
        sections = parse_sections(self.guest.run(sections_argv(name), check=True).output) if ko else {}
        mark, result = self._marked(shlex.join([*module_tool("rmmod", self.root), name]))
        if result.status != 0:
            lines = self.lines_since(mark)
            self._raise_if_crashed(f"rmmod {name}", result.status, result.output, lines)
            usage = self.guest.run(["sh", "-c", USAGE_SCRIPT, "usage", name]).output
            refcnt, holders = parse_usage(usage)
            if refcnt is not None and (refcnt > 0 or holders):
                raise ModuleBusyError(
                    f"rmmod {name} failed (status {result.status}): the module is in use: reference count "
                    f"{refcnt}, holders: {', '.join(holders) or 'none (references taken by code, not modules)'}",
                    result.output, [ln.text for ln in lines],
                )  # fmt: skip
            raise ModuleLoadError(
                f"rmmod {name} failed (status {result.status})", result.output, [ln.text for ln in lines]
            )
        self.unloads += 1
        if ko is not None:
            self._unscanned.append(UnloadedModule(name, ko, tuple(sorted(sections.items())), time.monotonic()))

    def _raise_if_crashed(self, what: str, status: int, output: str, lines: list[KernelLine],
                          also: Path | None = None) -> None:  # fmt: skip
        """A failed insmod/rmmod is a crash, not a refusal, when the kernel printed a splat
        or the command was killed by a signal (an oops in process context kills the task). The
        splats' frames in the modules loaded here (and `also`, being loaded) are decoded."""
        splats = find_splats(lines)
        if not splats and status < 128:
            return
        signal = f", killed by signal {status - 128}" if status > 128 else ""
        text = "\n".join(sp.summary() for sp in splats) or "(no splat in the kernel log; see the guest kernel console)"
        kos, sources, vmlinux = self._decode_inputs() if self._decode_inputs else ({}, {}, None)
        kos = {**kos, **self._loaded_from, **({module_name(also.name): also} if also else {})}
        decoded = [decoded_section(sp.lines, kos, sources, vmlinux) for sp in splats]
        text = "\n".join([text, *(d for d in dict.fromkeys(decoded) if d)])
        raise ModuleCrashError(
            f"{what}: the kernel crashed (status {status}{signal}); this is a bug in the module or the kernel, "
            "not a refusal to load: fix the crash shown below",
            output,
            text,
        )

    def module_list(self) -> tuple[str, ...]:
        """The guest's loaded modules, newest first (the order of /proc/modules); read by the shell
        itself (a `cut` process costs ~45 ms under TCG, the builtin loop one round trip)."""
        output = self.guest.run(MODULE_LIST_SCRIPT, check=True).output
        return tuple(line.strip() for line in output.splitlines() if line.strip())

    def modprobe(self, names: Sequence[str]) -> None:
        """Load modules of the guest kernel's own tree, with what they need (modprobe -a)."""
        self.ensure_not_host()
        mark, result = self._marked(shlex.join(["modprobe", "-a", *names]))
        if result.status != 0:
            lines = self.lines_since(mark)
            self._raise_if_crashed(f"modprobe {' '.join(names)}", result.status, result.output, lines)
            what = f"modprobe of the kernel modules the module depends on ({', '.join(names)})"
            raise ModuleLoadError(f"{what} failed (status {result.status})", result.output, [ln.text for ln in lines])

    def restore_modules(self, before: Sequence[str]) -> None:
        """Unload, newest first, every module loaded since the guest's module list was `before`: one
        rmmod for all of them, picked and unloaded by one guest command; one at a time when it fails (so
        the error names the module) or when kmemleak must learn where a module the harness loaded was
        (GuestKernel.rmmod)."""
        mark = self._new_mark()
        keep = shlex.quote(" " + " ".join(before) + " ")
        rmmod = shlex.join(module_tool("rmmod", self.root))
        # Without kmemleak, the guest's shell picks the modules that are not in `before` and unloads them with one
        # rmmod, in one guest command (the list comes first, then the mark and the rmmod), when that command fits
        # on the console; else the host picks them from the module list
        command = (
            f'knh_x=; while read -r knh_n _; do case {keep} in *" $knh_n "*) ;; *) knh_x="$knh_x $knh_n" ;; esac; '
            f'done < /proc/modules; echo "{self._listing}$knh_x"; '
            f'[ -z "$knh_x" ] || {{ echo {mark.text} > /dev/kmsg && {rmmod} $knh_x; }}'
        )  # fmt: skip
        if self.has_kmemleak() or len(command) > MAX_COMMAND_CHARS:
            extra = [n for n in self.module_list() if n not in before]
            if not extra:
                return
            if self.has_kmemleak() and any(n in self._loaded_from for n in extra):
                for name in extra:
                    self.rmmod(name)
                return
            mark, result = self._marked(shlex.join([*module_tool("rmmod", self.root), *extra]))
        else:
            result = self.guest.run(command)
            listed = [ln for ln in result.output.splitlines() if ln.startswith(self._listing)]
            if not listed:
                raise GuestReadError(f"no list of the modules to unload ({self._listing}) in the output of the "
                                     f"unload: {result.output[-500:]!r}; the guest's shell or console is not in step: "
                                     "rerun the test")  # fmt: skip
            extra = listed[0][len(self._listing) :].split()
            if not extra:
                return
        if result.status == 0:
            self.unloads += 1
            return
        lines = self.lines_since(mark)
        self._raise_if_crashed(f"rmmod {' '.join(extra)}", result.status, result.output, lines)
        for name in [n for n in self.module_list() if n not in before]:
            self.rmmod(name)

    def loaded(self, name: str) -> bool:
        return self.guest.run(["test", "-d", f"/sys/module/{name}"]).status == 0

    # -- kmemleak ----------------------------------------------------------------
    def has_kmemleak(self) -> bool:
        """Whether the kernel lists leaks in KMEMLEAK_PATH, asked once (the answer also stops a scan
        thread, so no scan runs but the harness's)."""
        if self._kmemleak is None:
            self._kmemleak = self.guest.run(write_argv(SCAN_OFF)).status == 0
        return self._kmemleak

    def find_leaks(self) -> LeakReading | None:
        """After rmmods since the last call: scan SCANS times (the last one late enough for what the
        modules allocated), read the report and clear it. None when no module was unloaded since."""
        unloaded, self._unscanned = self._unscanned, []
        if not unloaded:
            return None
        last_rmmod = max(u.unloaded_at for u in unloaded)
        took = []
        for i in range(SCANS):
            if i == SCANS - 1:
                time.sleep(scan_delay(last_rmmod, time.monotonic()))
            start = time.monotonic()
            self.guest.run(write_argv(SCAN), check=True, timeout=SCAN_TIMEOUT_S)
            took.append(time.monotonic() - start)
        report = self.read_file(KMEMLEAK_PATH, "kmemleak")
        self.guest.run(write_argv(CLEAR), check=True)  # the next reading lists only new objects
        return leak_reading(report, unloaded, took)

    def read_file(self, path: str, label: str) -> str:
        """A guest file's text, copied through the scratch directory (not the console)."""
        self.scratch.mkdir(parents=True, exist_ok=True)
        copy = self.scratch / f"{label}-{self._token}-{next(self._counter)}.txt"
        self.guest.run(["cp", path, str(copy)], check=True)
        try:
            return copy.read_text(errors="replace")
        except OSError as e:
            raise GuestReadError(f"the guest's copy of {path} ({copy}) is unreadable on the host: {e}; the guest "
                                 "writes it to the shared results directory, which must be writable by the guest "
                                 "and readable here") from None  # fmt: skip
        finally:
            copy.unlink(missing_ok=True)


MODULE_LIST_SCRIPT = 'while read -r name _; do echo "$name"; done < /proc/modules'
# A module's reference count and holders, for a refused rmmod: "refcnt N" then one "holder NAME" each.
USAGE_SCRIPT = 'echo "refcnt $(cat /sys/module/$1/refcnt)"; for h in /sys/module/$1/holders/*; do ' \
               '[ -e "$h" ] && echo "holder ${h##*/}"; done; true'  # fmt: skip


def parse_usage(output: str) -> tuple[int | None, list[str]]:
    refcnt, holders = None, []
    for line in output.splitlines():
        word, _, value = line.strip().partition(" ")
        if word == "refcnt" and value.strip().isdigit():
            refcnt = int(value)
        elif word == "holder" and value:
            holders.append(value.strip())
    return refcnt, holders


def check_not_host(guest_boot_id: str, host_id: str) -> None:
    if not guest_boot_id:
        raise HostKernelRefused("cannot read the target's boot_id: refusing to load a module")
    if guest_boot_id == host_id:
        raise HostKernelRefused(
            "the target kernel has the host's boot_id: refusing to load a module into the host kernel"
        )


def lines_after_mark(lines: list[KernelLine], mark: LogMark) -> list[KernelLine]:
    for i in range(len(lines) - 1, -1, -1):
        if lines[i].text.strip() == mark.text:
            return lines[i + 1 :]
    raise KernelLogLost(f"kernel log mark {mark.text!r} not found: the kernel's ring buffer wrapped past it or "
                        "something cleared the log (dmesg -C), so the lines since cannot be checked; log less "
                        "between two checks (rate-limit the module's messages) or boot with a bigger log_buf_len "
                        "(harness/guest/cmdline.py BASE_KERNEL_ARGS)")  # fmt: skip
