"""Orchestration: from settings to a live guest with the module built for it.

A KernelSession owns everything for one kernel: the module build, the
accelerator decision and, booted on first use, one guest that is reused by
every test until it dies (then the next user gets a fresh one).
"""

from __future__ import annotations

import functools
import os
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from harness.build.config_items import read_kernel_config
from harness.build.decode import DecodeInputs
from harness.build.kernel import Kernel
from harness.build.kernel_build import modules_dir_for
from harness.build.module_build import BuiltModule, build_module
from harness.build.module_deps import missing_module, module_name, modules_dep_names, read_symvers
from harness.build.progress import Notify
from harness.config import GUEST_SCRIPTS, PROJECT_ROOT, HarnessConfig, default_cache_root
from harness.errors import BootError, HarnessError, MissingKernelDependency, ModuleCrashError
from harness.guest.accel import AccelDecision, choose_accel
from harness.guest.coverage import kernel_supports_coverage, unsupported_message
from harness.guest.engines import GuestSpec, engine_for
from harness.guest.kernel_ops import GuestKernel
from harness.guest.vm import Guest, GuestLaunch, new_guest_name
from harness.kernel_log.kmemleak import may_have_kmemleak


def _silent(_: str) -> None:
    pass


@dataclass(frozen=True)
class ModuleSource:
    """An out-of-tree module source directory and how to build it: make targets, the build choice
    (harness.config.BUILD_CHOICES; None: the module_build setting), make variables added to the
    make_vars setting's, and the .ko to test when the build makes several (None: the one no other
    built module depends on)."""

    directory: Path
    targets: tuple[str, ...] = ()
    build: str | None = None
    make_vars: tuple[str, ...] = ()
    module: str | None = None


@dataclass(frozen=True)
class LoadedModule:
    """A module loaded into the session's guest: its name, the .ko it came from, the insmod parameters,
    and every module loaded for it, in load order, itself last (the kernel's modules it needs, the
    driver's other .ko files, what its init loaded); `before`: the guest's module list before, restored
    at unload (None: unload only the module)."""

    name: str
    path: Path
    params: Mapping[str, str]
    loaded: tuple[str, ...] = ()
    before: tuple[str, ...] | None = None
    guest: str = ""  # the guest it was loaded into (its launch name)


@dataclass
class BootStats:
    boots: int = 0
    retries: int = 0
    boot_times_s: list[float] = field(default_factory=list)


class KernelSession:
    """Module build, accelerator and a lazily booted, reusable guest for one kernel."""

    def __init__(
        self,
        config: HarnessConfig,
        kernel: Kernel,
        run_root: Path,
        *,
        notify: Notify = _silent,
        requested_kernel: str | None = None,
    ) -> None:
        self.config = config
        self.kernel = kernel
        self.run_root = run_root
        self.notify = notify
        self.requested_kernel = requested_kernel  # the --kernel text the user gave (release, image, tree), if any
        self.stats = BootStats()
        self._builds: dict[ModuleSource, BuiltModule] = {}
        self._build_errors: dict[ModuleSource, HarnessError] = {}  # one make per kernel and source
        self._accel: AccelDecision | None = None
        self._guest: Guest | None = None
        self.last_guest: Guest | None = None  # kept after it died, for its logs
        self._guest_kernel: GuestKernel | None = None
        # Calls of guest() (and through it guest_kernel(), load(), unload()...): the kernel watch tells a test
        # that used the guest through this session alone from one that did not (harness.pytest_plugin.watch)
        self.guest_requests = 0
        self._said_engine = False
        self._boot_error: BootError | None = None

    @property
    def results_dir(self) -> Path:
        return self.config.results_dir.resolve()

    @property
    def scratch(self) -> Path:
        """Guest-writable shared directory for files the guest writes and the host reads."""
        return self.results_dir / ".scratch"

    @property
    def spec_for_reproduction(self) -> str:
        """A --kernel value naming this kernel: what the user gave, else the release if installed, else the image."""
        if self.requested_kernel and self.requested_kernel != "all":
            return self.requested_kernel
        if self.kernel.foreign or Path(f"/boot/vmlinuz-{self.kernel.release}").exists():
            return self.kernel.spec
        return str(self.kernel.image)

    def default_source(self) -> ModuleSource:
        return ModuleSource(self.config.module_dir.resolve(), self.config.make_targets)

    def build(self, source: ModuleSource | None = None) -> BuiltModule:
        """Build `source` (default: the configured module) for this kernel, once per session: a build
        that failed (or that a dkms.conf excludes) raises the same error again without a new make."""
        source = source or self.default_source()
        if source in self._build_errors:
            raise self._build_errors[source]
        if source not in self._builds:
            try:
                self._builds[source] = self._build(source)
            except HarnessError as e:
                self._build_errors[source] = e
                raise
        return self._builds[source]

    def _build(self, source: ModuleSource) -> BuiltModule:
        coverage = self.config.module_coverage and kernel_supports_coverage(self.kernel)
        if self.config.module_coverage and not coverage:
            self.notify(unsupported_message(self.kernel.release))
        self.notify(f"building {source.directory} for {self.kernel.release}{' for gcov' if coverage else ''} ...")
        start = time.monotonic()
        built = build_module(source.directory, self.kernel, targets=source.targets, coverage=coverage,
                             choice=source.build or self.config.module_build,
                             make_vars=self.config.make_vars + source.make_vars)  # fmt: skip
        how = "cached" if built.cached else f"built in {time.monotonic() - start:.1f} s"
        self.notify(f"module for {self.kernel.release}: {how} ({built.directory}); {built.choice}")
        return built

    @property
    def accel_decision(self) -> AccelDecision | None:
        """The accelerator decision, once taken (None before the first boot or build needed it)."""
        return self._accel

    def accel(self) -> AccelDecision:
        if self._accel is None:
            self._accel = choose_accel(self.config.accel, self.kernel.image, foreign=self.kernel.foreign)
            self.notify(self._accel.notice())
        return self._accel

    def launch(self, name: str, run_dir: Path) -> GuestLaunch:
        """The command that boots this kernel with the configured engine."""
        accel = self.accel().accel
        engine = engine_for(self.engine_name)
        self.results_dir.mkdir(parents=True, exist_ok=True)
        channel = Path(tempfile.mkdtemp(prefix="knh-")) / "channel.sock"  # unix socket paths must be short
        root, shared = self.guest_root()
        argv = engine.argv(GuestSpec(
            kernel=self.kernel, name=name, accel=accel, run_dir=run_dir, shell=GUEST_SCRIPTS / "guest-shell",
            cache=default_cache_root(), rw_dirs=(self.results_dir,), channel=channel, memory=self.config.memory,
            cpus=self.config.cpus, cwd=Path(os.getcwd()), tree_modules=modules_dir_for(self.kernel),
            memory_debug=self.config.memory_debug, root=root, shared_dirs=shared,
        ))  # fmt: skip
        return GuestLaunch(tuple(argv), name, self.kernel.release, accel, engine.name, channel, root)

    @property
    def engine_name(self) -> str:
        """The configured engine; the qemu engine for a foreign kernel (virtme-ng's init and its guest tools
        are the host's programs, which a foreign guest cannot run)."""
        if self.kernel.foreign and self.config.engine != "qemu":
            if not self._said_engine:
                self.notify(f"{self.kernel.arch} guests boot with the qemu engine (engine {self.config.engine} "
                            "runs the host's programs in the guest)")  # fmt: skip
                self._said_engine = True
            return "qemu"
        return self.config.engine

    def guest_root(self) -> tuple[Path, tuple[Path, ...]]:
        """The guest's root and the host directories shared into it: the host's root, or a foreign architecture's
        (made once, harness.build.foreign) with the project and the working directory at their own paths."""
        if not self.kernel.foreign:
            return Path("/"), ()
        from harness.arches import arch_named
        from harness.build.foreign import make_root

        root = make_root(arch_named(self.kernel.arch), notify=self.notify)
        wanted = (PROJECT_ROOT, GUEST_SCRIPTS, Path(os.getcwd()))  # the guest shell's directory may be elsewhere
        shared = tuple(d for d in dict.fromkeys(wanted) if not any(d != o and d.is_relative_to(o) for o in wanted))
        return root, shared

    def guest(self) -> Guest:
        """The live guest, booting one (with retries) if there is none or it died."""
        self.guest_requests += 1
        if self._guest is not None and self._guest.alive:
            return self._guest
        if self._guest is not None:
            self.notify(
                f"guest {self._guest.launch.name} is gone ({self._guest.dead_reason or 'exited'}); booting a fresh one"
            )
            self._guest.close()
            self._guest, self._guest_kernel = None, None
        if self._boot_error is not None:
            raise self._boot_error
        attempts = self.config.boot_retries + 1
        failures: list[BootError] = []
        for attempt in range(1, attempts + 1):
            name = new_guest_name()
            run_dir = self.run_root / self.kernel.label / name
            launch = self.launch(name, run_dir)
            self.notify(
                f"booting {self.kernel.release} ({launch.engine}, {launch.accel}) as {name}, "
                f"attempt {attempt}/{attempts} ..."
            )
            guest = Guest(launch, run_dir, command_timeout=self.config.command_timeout)
            try:
                guest.start(self.config.boot_timeout)
            except BootError as e:
                failures.append(e)
                self.notify(f"boot attempt {attempt} failed: {e.args[0].splitlines()[0]} (logs in {run_dir})")
                if attempt < attempts:
                    self.stats.retries += 1
                continue
            self.stats.boots += 1
            assert guest.boot_time_s is not None
            self.stats.boot_times_s.append(guest.boot_time_s)
            self.notify(f"guest ready in {guest.boot_time_s:.1f} s")
            self._guest = self.last_guest = guest
            self.scratch.mkdir(parents=True, exist_ok=True)
            kmemleak = may_have_kmemleak(read_kernel_config(self.kernel))  # stock kernels: no guest command
            self._guest_kernel = GuestKernel(guest, self.scratch, kmemleak=kmemleak, decode_inputs=self.decode_inputs,
                                             root=guest.launch.root)  # fmt: skip
            return guest
        self._boot_error = every_attempt(failures)  # do not boot again for every remaining test
        raise self._boot_error

    def load(self, params: Mapping[str, str] | None = None, source: ModuleSource | None = None) -> LoadedModule:
        """Build `source` (default: the configured module) if needed, boot if needed, load the kernel's
        modules it depends on (modprobe), then the driver's own .ko files in dependency order, the one
        under test last with `params`. Raises MissingKernelDependency (before loading anything),
        ModuleLoadError (refused), ModuleCrashError (the kernel crashed) or BuildError; after a refusal
        the guest's module list is back to what it was."""
        source = source or self.default_source()
        built = self.build(source)
        kos = built.load_plan(source.module)
        deps = built.kernel_dependencies_of(kos)
        check_kernel_provides(self.kernel, deps)  # before any load, with the option that provides each
        params = dict(params or {})
        guest_kernel = self.guest_kernel()
        guest = self.guest().launch.name
        before = guest_kernel.module_list()
        try:
            if deps:
                guest_kernel.modprobe(deps)
            for other in kos[:-1]:
                guest_kernel.insmod(other)
            name, after = guest_kernel.insmod_listing(kos[-1], params)
        except ModuleCrashError:
            raise  # the kernel broke: the guest is for the kernel watch, not for more rmmods
        except HarnessError as e:
            self._restore_after_refusal(guest_kernel, before, e)
            raise
        loaded = tuple(n for n in reversed(after) if n not in before)
        return LoadedModule(name, kos[-1], params, loaded=loaded, before=before, guest=guest)

    def _restore_after_refusal(self, guest_kernel: GuestKernel, before: tuple[str, ...], error: HarnessError) -> None:
        """Unload what a refused load left (its dependencies); a failure to do so is a note on `error`."""
        if self._guest is None or not self._guest.alive:
            return
        try:
            guest_kernel.restore_modules(before)
        except HarnessError as cleanup:  # said, not raised: the refusal is the error to report
            self.notify(f"after the refused load ({error.args[0].splitlines()[0]}), unloading what was loaded "
                        f"for it failed too: {cleanup.args[0].splitlines()[0]}")  # fmt: skip

    def unload(self, module: LoadedModule) -> None:
        """Unload `module` and what was loaded for it, newest first, back to the module list of the guest
        before the load (a test may have unloaded some itself); nothing when that guest is gone.
        Raises ModuleBusyError naming holders and reference count when the kernel refuses."""
        guest = self._guest
        if guest is None or not guest.alive or (module.guest and module.guest != guest.launch.name):
            return
        if module.before is not None:
            self.guest_kernel().restore_modules(module.before)
        elif self.guest_kernel().loaded(module.name):
            self.guest_kernel().rmmod(module.name)

    def decode_inputs(self) -> DecodeInputs:
        """What decodes a splat's frames (harness.build.decode): the modules built in this session ({name:
        .ko}), their sources ({build copy: source directory}) and the kernel's image with debug info."""
        kos = {module_name(ko.name): ko for built in self._builds.values() for ko in built.modules}
        sources = {built.directory: source.directory for source, built in self._builds.items()}
        return kos, sources, self.kernel_debug_image()

    def kernel_debug_image(self) -> Path | None:
        """The kernel's image with debug info, when at hand: the vmlinux of a kernel built here, or a
        distribution's debug package (/usr/lib/debug); None otherwise."""
        for path in (self.kernel.build_dir / "vmlinux", Path("/usr/lib/debug/boot") / f"vmlinux-{self.kernel.release}",
                     Path("/usr/lib/debug/lib/modules") / self.kernel.release / "vmlinux"):  # fmt: skip
            if path.is_file():
                return path
        return None

    def module_param(self, module: LoadedModule, name: str) -> str:
        """The loaded module's parameter as the kernel holds it (/sys/module/<name>/parameters/<param>)."""
        return self.guest_kernel().read_value(f"/sys/module/{module.name}/parameters/{name}")

    def guest_kernel(self) -> GuestKernel:
        self.guest()
        assert self._guest_kernel is not None
        return self._guest_kernel

    @property
    def current_guest(self) -> Guest | None:
        return self._guest

    @property
    def current_guest_kernel(self) -> GuestKernel | None:
        """The current guest's GuestKernel (None without a guest); never boots one."""
        return self._guest_kernel

    def recycle(self, reason: str) -> None:
        """Throw the guest away so the next user boots a fresh one."""
        if self._guest is not None:
            self.notify(f"discarding guest {self._guest.launch.name}: {reason}")
            self._guest.close()
            self._guest, self._guest_kernel = None, None

    def close(self) -> None:
        if self._guest is not None:
            self._guest.close()
            self._guest, self._guest_kernel = None, None


def every_attempt(failures: list[BootError]) -> BootError:
    """The error of a boot whose attempts all failed: the last one's, followed by what each earlier attempt
    ended with (its first line and the last lines of its console), since a retry can fail otherwise than the
    first attempt (a guest shell that cannot start, then a kernel that died of something else)."""
    if len(failures) == 1:
        return failures[0]
    earlier = []
    for n, error in enumerate(failures[:-1], 1):
        console = [line for line in error.console_tail.splitlines() if line.strip()][-3:]
        earlier.append(f"attempt {n}: {error.args[0].splitlines()[0]}" + "".join(f"\n    {ln}" for ln in console))
    last = failures[-1]
    combined = BootError(f"{last.args[0]}\n--- earlier boot attempts ---\n" + "\n".join(earlier))
    combined.console_tail, combined.kernel_log, combined.transcript = (last.console_tail, last.kernel_log,
                                                                       last.transcript)  # fmt: skip
    return combined


def kernel_modules_dir(kernel: Kernel) -> Path:
    """The module tree the guest sees at /lib/modules/<release> (a tree-built kernel's own, mapped there)."""
    return modules_dir_for(kernel) or Path("/lib/modules") / kernel.release


@functools.lru_cache(maxsize=8)
def _module_tree(modules_dep: Path, mtime_ns: int) -> dict[str, str]:
    """modules.dep parsed once per file version (15 ms for a distribution kernel's)."""
    return modules_dep_names(modules_dep.read_text())


def check_kernel_provides(kernel: Kernel, modules: tuple[str, ...]) -> None:
    """Raise MissingKernelDependency when the kernel's module tree (modules.dep, read on the host: the
    guest sees the same files) lacks any of `modules`, naming each and the option that builds it."""
    if not modules:
        return
    tree = kernel_modules_dir(kernel)
    try:
        available = _module_tree(tree / "modules.dep", (tree / "modules.dep").stat().st_mtime_ns)
    except OSError as e:
        raise MissingKernelDependency(f"the module needs {', '.join(modules)} from {kernel.release}'s modules, but "
                                      f"{tree}/modules.dep is unreadable ({e.strerror}); fix: install the "
                                      "kernel's modules package or run depmod for it") from None  # fmt: skip
    missing = [m for m in modules if m not in available]
    if missing:
        symvers, config = read_symvers(kernel.build_dir), read_kernel_config(kernel)
        lines = [missing_module(m, symvers, kernel.build_dir).describe(kernel.release, config) for m in missing]
        raise MissingKernelDependency(f"{kernel.release} lacks modules the module under test depends on "
                                      "(nothing was loaded):\n  " + "\n  ".join(lines))  # fmt: skip
