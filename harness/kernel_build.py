"""Build a kernel from a source tree, once, and hand it to the harness as a Kernel.

A kernel developer names a tree (``--kernel ~/src/linux``) instead of an
installed release. The tree is configured from virtme-ng's guest options (the
list ``vng --kconfig --dry-run`` prints) and the items the harness and the
module need (:data:`REQUIRED_CONFIG`) on top of ``make allnoconfig`` (base
"tiny", the default) or of x86_64_defconfig (base "defconfig": exactly
``vng --kconfig``), then built with ``vng --build`` (``make LOCALVERSION=-virtme``). Its modules are installed
into the harness cache (never into the host's /lib/modules), for the fast
engine's initramfs and for a guest that autoloads a module.

A build is cached by the tree's state: ``git rev-parse HEAD`` plus a hash of
``git status --porcelain`` and ``git diff HEAD`` for a git tree, the newest
mtime and count of the source files for any other tree, plus a hash of the
configuration. Nothing changed: the previous kernel is returned without running
make. Anything changed: the tree is reconfigured if the configuration changed,
and make rebuilds what it must.

Every external command goes through an injectable runner, so the cache logic
and the failure paths are tested without building a kernel.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .cmdline import vng_executable
from .errors import HarnessError, KernelNotFoundError, MissingDependencyError
from .kernel import Kernel, image_release, resolve_kernel
from .kmod import default_cache_root

KIMG = Path("arch/x86/boot/bzImage")
BUILD_TOOLS_HINT = "apt-get install build-essential flex bison bc libelf-dev libssl-dev zstd"
LOCALVERSION = "-virtme"  # what `vng --build` passes to make

# Symbol -> value the built kernel must have (checked in .config after configuration).
# Built in (=y) rather than modules, so neither engine has to load anything to boot.
REQUIRED_CONFIG: dict[str, str] = {
    "MODULES": "y",  # the module under test is loadable
    "MODULE_UNLOAD": "y",  # ... and unloadable (rmmod between tests)
    "NET": "y",  # netlink is part of the core network stack
    "UNIX": "y",
    "NET_9P": "y",  # host root and shared directories over 9p (both engines)
    "NET_9P_VIRTIO": "y",
    "9P_FS": "y",
    "VIRTIO_PCI": "y",  # virtme-ng's PC machine
    "VIRTIO_MMIO": "y",  # the qemu engine's microvm (devices found through ACPI)
    "VIRTIO_CONSOLE": "y",  # virtio-serial data channel (/dev/vport*)
    "OVERLAY_FS": "y",  # tmpfs overlay over the read-only host root
    "TMPFS": "y",
    "DEVTMPFS": "y",
    "BLK_DEV_INITRD": "y",  # the fast engine's busybox initramfs
    "SERIAL_8250_CONSOLE": "y",  # console on ttyS0, kernel log on ttyS1
    "MAGIC_SYSRQ": "y",  # fast-init powers off with sysrq 'o'
    "PVH": "y",  # QEMU boots the uncompressed vmlinux directly (fast engine)
    "CRYPTO": "y",  # virtme-ng's defaults disable crypto; crypto_user needs it
    "CRYPTO_USER": "m",  # NETLINK_CRYPTO (21) as a module: the protocol-conflict test
    "BPF_SYSCALL": "y",  # eBPF observation tests
    "KPROBES": "y",
}

# Settings that are wanted but not worth failing a build over.
PREFERRED_CONFIG: dict[str, str] = {
    "KERNEL_ZSTD": "y",  # the harness extracts vmlinux from xz/zstd bzImages
    "KPROBE_EVENTS": "y",
    "BPF_EVENTS": "y",
}

BTF_CONFIG: dict[str, str] = {
    "DEBUG_INFO_DWARF_TOOLCHAIN_DEFAULT": "y",
    "DEBUG_INFO_BTF": "y",
    "DEBUG_INFO_BTF_MODULES": "y",
}

# The debug profile (`--kernel debug`, `--kernel debug:TREE`): symbol -> (value, reason). The one
# list of what a debug kernel turns on; docs/kernels.md renders it. Every symbol must end up in the
# final .config with its value, or the build is a KernelBuildError naming it (value "n": absent is fine).
DEBUG_PROFILE: dict[str, tuple[str, str]] = {
    "DEBUG_KERNEL": ("y", "the debugging options below depend on it"),
    "KASAN": ("y", "out-of-bounds and use-after-free accesses to slab, stack and globals: a KASAN report"),
    "KASAN_GENERIC": ("y", "the software mode: every access checked, the mode x86 has"),
    "KASAN_INLINE": ("y", "checks inlined instead of called: a larger kernel, a faster guest"),
    "DEBUG_KMEMLEAK": ("y", "unreferenced allocations (leaks) listed in /sys/kernel/debug/kmemleak"),
    "DEBUG_KMEMLEAK_DEFAULT_OFF": ("n", "kmemleak runs from boot, no kmemleak=on needed"),
    "DEBUG_KMEMLEAK_AUTO_SCAN": (
        "n",
        "no scan thread: the harness scans after a module's rmmod, so a "
        "leak is never reported in the middle of a later test",
    ),
    "PROVE_LOCKING": ("y", "lockdep: lock-order inversions and other deadlock patterns, before they hang"),
    "DEBUG_ATOMIC_SLEEP": (
        "y",
        "'BUG: sleeping function called from invalid context' (sleeping under a "
        "spinlock, in a timer or with interrupts off)",
    ),
    "DEBUG_OBJECTS": ("y", "ODEBUG: object life-cycle checks (freed while active, re-initialized)"),
    "DEBUG_OBJECTS_TIMERS": (
        "y",
        "ODEBUG for timers: an armed timer freed (a module's exit forgetting del_timer_sync)",
    ),
    "DEBUG_OBJECTS_WORK": ("y", "ODEBUG for work items: a queued work freed"),
    "UBSAN": ("y", "undefined behaviour: a UBSAN report"),
    "UBSAN_BOUNDS": ("y", "array index out of bounds of arrays with a known size"),
    "UBSAN_SANITIZE_ALL": (
        "y",
        "instrument the whole kernel and modules (6.1; later kernels always do and have no such symbol)",
    ),
    "SLUB_DEBUG": ("y", "slab consistency checks, needed by SLUB_DEBUG_ON"),
    "SLUB_DEBUG_ON": (
        "y",
        "red zones, poisoning and owner tracking on every cache from boot (slub_debug=FZPU without a kernel argument)",
    ),
    "KFENCE": ("n", "KASAN checks every access; KFENCE's sampled ones would only add noise"),
    "GCOV_KERNEL": ("y", "coverage of modules built with GCOV_PROFILE := y, read from debugfs"),
    "DEBUG_FS": ("y", "kmemleak's and gcov's interface"),
    "DEBUG_BUGVERBOSE": ("y", "file:line in BUG and WARNING reports"),
    "STACKTRACE": ("y", "backtraces in kmemleak and KASAN reports"),
}
# Profile symbols that newer trees dropped (the behaviour became unconditional): absent is not an error.
DEBUG_PROFILE_OPTIONAL = frozenset({"UBSAN_SANITIZE_ALL"})
PROFILES: dict[str, dict[str, tuple[str, str]]] = {"debug": DEBUG_PROFILE}

# The "tiny" base (default): `make allnoconfig` with these, virtme-ng's guest items (from
# `vng --kconfig --dry-run`, minus VIRTME_DROPPED) and the harness items. About a third of
# the objects of virtme-ng's defconfig base, which matters on a 2-core machine.
TINY_BASE: dict[str, str] = {
    "64BIT": "y", "SMP": "y", "PRINTK": "y", "PRINTK_TIME": "y", "BUG": "y", "EARLY_PRINTK": "y",
    "TTY": "y", "SERIAL_8250": "y", "SERIAL_8250_CONSOLE": "y", "UNIX98_PTYS": "y",
    "BINFMT_ELF": "y", "BINFMT_SCRIPT": "y", "PROC_FS": "y", "PROC_SYSCTL": "y", "SYSFS": "y",
    "DEVTMPFS": "y", "DEVTMPFS_MOUNT": "y", "TMPFS": "y", "TMPFS_POSIX_ACL": "y", "SHMEM": "y",
    "FUTEX": "y", "EPOLL": "y", "SIGNALFD": "y", "TIMERFD": "y", "EVENTFD": "y", "AIO": "y",
    "INOTIFY_USER": "y", "FILE_LOCKING": "y", "MULTIUSER": "y", "POSIX_TIMERS": "y", "SYSVIPC": "y",
    "NET": "y", "UNIX": "y", "INET": "y", "PACKET": "y",
    "PCI": "y", "PCI_MSI": "y", "ACPI": "y", "HYPERVISOR_GUEST": "y", "PARAVIRT": "y", "KVM_GUEST": "y",
    "VIRTIO_MENU": "y", "VIRTIO": "y", "NETWORK_FILESYSTEMS": "y", "9P_FS_POSIX_ACL": "y", "FS_POSIX_ACL": "y",
    "RD_GZIP": "y", "RD_ZSTD": "y", "HIGH_RES_TIMERS": "y", "NO_HZ_IDLE": "y", "HPET_TIMER": "y",
    "KALLSYMS": "y", "KALLSYMS_ALL": "y", "DEBUG_FS": "y", "PERF_EVENTS": "y", "FTRACE": "y",
    "FUNCTION_TRACER": "y", "DYNAMIC_FTRACE": "y", "BPF": "y", "BPF_JIT": "y", "CGROUPS": "y",
}  # fmt: skip
# virtme-ng guest items the harness does not use (graphics, sound, KVM host, snaps, virtio-fs:
# the harness always boots with --force-9p): left out of the tiny base to save build time.
VIRTME_DROPPED_PREFIXES = ("DRM", "SND", "SOUND", "FB", "FRAMEBUFFER", "VGA_CONSOLE", "KVM", "SQUASHFS", "FUSE_FS",
                           "VIRTIO_FS", "DAX", "FS_DAX", "MEMORY_HOT", "ZONE_DEVICE", "DEBUG_INFO")  # fmt: skip
BASES = ("tiny", "defconfig")

# Source files whose mtimes stand for a non-git tree's state.
_SOURCE_SUFFIXES = (".c", ".h", ".S", ".rs", ".lds")
_SOURCE_PREFIXES = ("Makefile", "Kconfig", "Kbuild")


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


# runner(argv, cwd, log) -> exit status; appends the command's output to log.
Runner = Callable[[Sequence[str], Path, Path], int]
Notify = Callable[[str], None]


def run_logged(argv: Sequence[str], cwd: Path, log: Path) -> int:
    """Run argv in cwd with stdout and stderr appended to log.

    vng runs its helpers (virtme-configkernel) by name: the directory of an absolute argv[0]
    and of the running interpreter (a venv's bin) go first on PATH.
    """
    env = dict(os.environ)
    extra = [str(Path(argv[0]).parent)] if os.path.isabs(argv[0]) else []
    extra.append(str(Path(sys.executable).parent))
    env["PATH"] = os.pathsep.join([*dict.fromkeys(extra), env.get("PATH", "")])
    with log.open("a") as out:
        out.write(f"\n$ (cd {cwd} && {' '.join(argv)})\n")
        out.flush()
        try:
            proc = subprocess.run(list(argv), cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, check=False)
        except FileNotFoundError:
            hint = "pip install virtme-ng" if "vng" in Path(argv[0]).name else BUILD_TOOLS_HINT
            raise MissingDependencyError(argv[0], hint) from None
        return proc.returncode


def _silent(_: str) -> None:
    pass


@dataclass(frozen=True)
class BuildOptions:
    """What to build: BTF on or off, extra config items (``FOO=y``), make parallelism."""

    btf: bool = False
    extra_config: tuple[str, ...] = ()
    base: str = "tiny"  # "tiny": allnoconfig + what is needed; "defconfig": `vng --kconfig` as is
    jobs: int | None = None
    vng: str = ""  # virtme-ng executable; "" = the one next to the running interpreter
    profile: str = ""  # "" or a key of PROFILES ("debug"): built out of the tree, a cache entry of its own

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> BuildOptions:
        """KNH_KERNEL_BTF=1, KNH_KERNEL_CONFIG="FOO=y BAR=m", KNH_KERNEL_JOBS=N, KNH_KERNEL_BASE=tiny|defconfig,
        KNH_VNG=/path/to/vng."""
        env = os.environ if environ is None else environ
        jobs = env.get("KNH_KERNEL_JOBS", "")
        base = env.get("KNH_KERNEL_BASE", "") or "tiny"
        if base not in BASES:
            raise KernelBuildError(f"KNH_KERNEL_BASE={base!r}: must be one of {', '.join(BASES)}")
        return cls(
            base=base,
            btf=env.get("KNH_KERNEL_BTF", "") in ("1", "yes", "true"),
            extra_config=tuple(env.get("KNH_KERNEL_CONFIG", "").split()),
            jobs=int(jobs) if jobs.isdigit() and int(jobs) > 0 else None,
            vng=env.get("KNH_VNG", ""),
        )

    def config(self) -> dict[str, str]:
        """Every symbol this build sets, later entries winning."""
        out = dict(REQUIRED_CONFIG)
        out.update(PREFERRED_CONFIG)
        if self.btf:
            out.update(BTF_CONFIG)
        out.update({name: value for name, (value, _) in self.profile_config().items()})
        for item in self.extra_config:
            name, sep, value = item.partition("=")
            if not sep:
                raise KernelBuildError(f"config item {item!r} is not NAME=value")
            out[name.removeprefix("CONFIG_")] = value
        return out

    def profile_config(self) -> dict[str, tuple[str, str]]:
        """The profile's items (symbol -> (value, reason)); {} without a profile."""
        if not self.profile:
            return {}
        if self.profile not in PROFILES:
            raise KernelBuildError(f"unknown kernel profile {self.profile!r}: known are {', '.join(PROFILES)}")
        return PROFILES[self.profile]

    def fingerprint(self) -> str:
        """Hash of the configuration request (and the virtme-ng version that expands it)."""
        from importlib import metadata

        try:
            vng_version = metadata.version("virtme-ng")
        except metadata.PackageNotFoundError:  # pragma: no cover - virtme-ng is a dependency
            vng_version = "?"
        parts: list[object] = [sorted(self.config().items()), self.btf, self.base, str(vng_version)]
        if self.profile:
            parts.append(self.profile)
        text = json.dumps(parts)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def is_kernel_tree(path: Path) -> bool:
    """A directory that looks like a Linux source tree (Makefile, Kconfig, arch/)."""
    return path.is_dir() and (path / "Makefile").is_file() and (path / "Kconfig").is_file() and (path / "arch").is_dir()


def _git(tree: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["git", "-C", str(tree), *args], capture_output=True, check=False)


def tree_state(tree: Path) -> str:
    """A string that changes whenever the tree's sources change (see the module docstring)."""
    top = _git(tree, "rev-parse", "--show-toplevel")
    if top.returncode == 0 and Path(top.stdout.decode().strip()).resolve() == tree.resolve():
        head = _git(tree, "rev-parse", "HEAD")
        if head.returncode == 0:
            h = hashlib.sha256()
            h.update(_git(tree, "status", "--porcelain=v1", "-z").stdout)
            h.update(_git(tree, "diff", "HEAD", "--binary").stdout)
            for line in _git(tree, "ls-files", "--others", "--exclude-standard", "-z").stdout.split(b"\0"):
                if line:  # untracked, not ignored: its content counts too
                    with contextlib.suppress(OSError):
                        st = (tree / line.decode()).stat()
                        h.update(line + f":{st.st_size}:{st.st_mtime_ns}".encode())
            return f"git:{head.stdout.decode().strip()}:{h.hexdigest()[:16]}"
    newest, count = 0, 0
    for root, dirs, files in os.walk(tree):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in files:
            if name.endswith(_SOURCE_SUFFIXES) or name.startswith(_SOURCE_PREFIXES):
                with contextlib.suppress(OSError):
                    newest = max(newest, os.stat(os.path.join(root, name)).st_mtime_ns)
                    count += 1
    return f"mtime:{newest}:{count}"


def cache_key(tree: Path, options: BuildOptions) -> str:
    return f"{tree_state(tree)}|config:{options.fingerprint()}"


@dataclass(frozen=True)
class BuiltKernel:
    """Result of build_kernel: the Kernel plus where its modules were installed."""

    kernel: Kernel
    modules_root: Path  # INSTALL_MOD_PATH: <modules_root>/lib/modules/<release>/modules.dep
    cached: bool
    seconds: float
    log: Path
    key: str = ""
    steps: tuple[str, ...] = field(default=())

    @property
    def modules_dir(self) -> Path:
        return self.modules_root / "lib" / "modules" / self.kernel.release


@dataclass(frozen=True)
class BuildLayout:
    """Where one build of a tree lives. A plain build is made in the tree (like `vng --build`); a
    profile build (``debug``) in a directory of the cache (``make O=``), so that the plain and the
    debug kernel of one tree are two cache entries that never overwrite each other's objects."""

    tree: Path
    objdir: Path | None  # make O= directory; None: in the tree
    record: Path
    log: Path
    lock: Path
    modules_root: Path

    @property
    def build_dir(self) -> Path:
        """Where .config, the objects, bzImage and Module.symvers are: KDIR for the module build."""
        return self.objdir or self.tree


def build_layout(tree: Path, cache_root: Path, profile: str = "") -> BuildLayout:
    tid = hashlib.sha256(str(tree.resolve()).encode()).hexdigest()[:12] + (f"-{profile}" if profile else "")
    base = cache_root / "kernel-builds"
    objdir = base / f"{tid}-obj" if profile else None
    return BuildLayout(tree, objdir, base / f"{tid}.json", base / f"{tid}.log", base / f"{tid}.lock",
                       base / f"{tid}-modules")  # fmt: skip


def _state_paths(tree: Path, cache_root: Path) -> tuple[Path, Path, Path, Path]:
    layout = build_layout(tree, cache_root)
    return layout.record, layout.log, layout.lock, layout.modules_root


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)  # another pytest process building the same tree waits
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def config_items(text: str) -> dict[str, str]:
    """`CONFIG_X=v` lines of a .config (or of `vng --kconfig --dry-run` output; later ones win)
    as {X: v}, values as written; "n" for `# CONFIG_X is not set`."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("CONFIG_") and "=" in line:
            name, _, value = line.partition("=")
            out[name.removeprefix("CONFIG_")] = value.strip()
        elif line.startswith("# CONFIG_") and line.endswith(" is not set"):
            out[line[len("# CONFIG_") : -len(" is not set")]] = "n"
    return out


def read_config(path: Path) -> dict[str, str]:
    """A .config as {symbol without CONFIG_: value}, string values unquoted; {} when there is none."""
    if not path.exists():
        return {}
    return {k: v.strip('"') for k, v in config_items(path.read_text(errors="replace")).items()}


def missing_config(config: dict[str, str], wanted: dict[str, str]) -> list[str]:
    return [f"CONFIG_{k}={v} (have {config.get(k, 'unset')})" for k, v in wanted.items() if config.get(k, "n") != v]


def build_kernel(
    tree: Path,
    *,
    options: BuildOptions | None = None,
    cache_root: Path | None = None,
    run: Runner = run_logged,
    notify: Notify = _silent,
) -> BuiltKernel:
    """Configure (if needed) and build `tree`; cached by tree state + config (see module docstring)."""
    tree = tree.resolve()
    if not is_kernel_tree(tree):  # not a build failure of this commit: bisect-run aborts on it
        raise KernelNotFoundError(f"{tree} is not a kernel source tree (no Makefile, Kconfig and arch/)")
    options = options or BuildOptions()
    options.profile_config()  # an unknown profile fails before anything runs
    cache_root = cache_root or default_cache_root()
    layout = build_layout(tree, cache_root, options.profile)
    what = f"kernel tree {tree}" + (f" ({options.profile} profile)" if options.profile else "")
    with _locked(layout.lock):
        key = cache_key(tree, options)
        cached = _cached(layout.record, key, layout.build_dir)
        if cached is not None:
            notify(f"{what}: unchanged, using the {cached.release} built before")
            return BuiltKernel(cached, layout.modules_root, True, 0.0, layout.log, key)

        start = time.monotonic()
        layout.log.write_text(f"kernel build of {tree}, key {key}\n")
        steps: list[str] = []
        vng = options.vng or vng_executable()
        fingerprint = options.fingerprint()
        build_dir = layout.build_dir
        if layout.objdir is not None:
            _check_clean_source(tree, layout.objdir)
            layout.objdir.mkdir(parents=True, exist_ok=True)
        marker = build_dir / ".knh-config"  # ignored by the kernel's .gitignore (".*")
        current = marker.read_text().strip() if marker.exists() else ""
        if current != fingerprint or not (build_dir / ".config").exists():
            extra = f" + the {options.profile} profile" if options.profile else ""
            notify(f"{what}: configuring ({options.base} base + virtme-ng and harness items{extra}) ...")
            steps.append("configure")
            _configure(layout, options, vng, run)
            marker.write_text(fingerprint + "\n")
        jobs = options.jobs or os.cpu_count() or 1
        if layout.objdir is None:
            argv = [vng, "--build", "--verbose"]
            if options.jobs:
                argv += ["--jobs", str(options.jobs)]
        else:
            argv = ["make", f"O={layout.objdir}", f"-j{jobs}", f"LOCALVERSION={localversion(options)}"]
        notify(f"{what}: building with {jobs} job(s) ({' '.join(argv[:2])} ...; log {layout.log}) ...")
        steps.append("build")
        with BuildProgress(layout.log, notify, what, _previous_objects(layout.record)) as progress:
            status = run(argv, tree, layout.log)
        if status != 0:
            raise KernelBuildError(f"kernel build failed in {tree} ({' '.join(argv)})", layout.log)
        # Another commit's Kconfig may have dropped or renamed a symbol since the tree was configured.
        final = read_config(build_dir / ".config")
        missing = missing_config(final, REQUIRED_CONFIG)
        if missing:
            raise KernelBuildError(f"{build_dir}/.config after the build lacks what the harness needs: "
                                   f"{', '.join(missing)}", layout.log)  # fmt: skip
        missing = missing_profile(final, options.profile_config())
        if missing:
            raise KernelBuildError(_profile_error(options.profile, build_dir, missing), layout.log)
        image = build_dir / KIMG
        release = image_release(image) if image.exists() else None
        if release is None:
            raise KernelBuildError(f"the build of {tree} produced no readable {image}", layout.log)

        notify(f"{what}: installing modules into {layout.modules_root} ...")
        steps.append("modules_install")
        modules_root = layout.modules_root
        if modules_root.exists():
            _rmtree(modules_root)
        modules_root.mkdir(parents=True)
        argv = ["make", "-s", f"LOCALVERSION={localversion(options)}", "modules_install",
                f"INSTALL_MOD_PATH={modules_root}", "INSTALL_MOD_STRIP=1", "DEPMOD=/sbin/depmod"]  # fmt: skip
        if layout.objdir is not None:
            argv.insert(1, f"O={layout.objdir}")
        if run(argv, tree, layout.log) != 0:
            raise KernelBuildError(f"make modules_install failed in {tree}", layout.log)
        if not (modules_root / "lib" / "modules" / release / "modules.dep").exists():
            raise KernelBuildError(f"modules_install of {tree} left no lib/modules/{release}/modules.dep", layout.log)

        kernel = Kernel(release, image, build_dir)
        seconds = time.monotonic() - start
        # Non-git trees: the state after the build, so files the build generated do not count as changes.
        key = key if key.startswith("git:") else cache_key(tree, options)
        record = {"key": key, "release": release, "image": str(image), "seconds": round(seconds, 1),
                  "objects": progress.objects, "profile": options.profile}  # fmt: skip
        layout.record.write_text(json.dumps(record, indent=1) + "\n")
        notify(f"{what}: built {release} in {seconds:.0f} s ({progress.objects} objects compiled)")
        return BuiltKernel(kernel, modules_root, False, seconds, layout.log, key, tuple(steps))


def localversion(options: BuildOptions) -> str:
    """LOCALVERSION of a build: `-virtme` (what vng passes), `-virtme-debug` for the debug profile, so
    the two kernels of one tree have different releases (test ids, result paths)."""
    return LOCALVERSION + (f"-{options.profile}" if options.profile else "")


def missing_profile(config: dict[str, str], profile: dict[str, tuple[str, str]]) -> list[str]:
    """Profile symbols the final .config does not have with the wanted value (absent counts as "n";
    symbols of DEBUG_PROFILE_OPTIONAL may be absent)."""
    out = []
    for name, (value, reason) in profile.items():
        have = config.get(name)
        if have is None and name in DEBUG_PROFILE_OPTIONAL:
            continue
        if (have or "n") != value:
            out.append(f"CONFIG_{name}={value} (have {have or 'unset'}; wanted for: {reason})")
    return out


def _profile_error(profile: str, build_dir: Path, missing: list[str]) -> str:
    return (f"the {profile} profile cannot be enabled in {build_dir}/.config: the tree lacks these symbols or "
            "their dependencies turned them off (an older or newer tree, another architecture, a compiler "
            "without the sanitizer):\n    " + "\n    ".join(missing)
            + "\nfix: a tree that has them (`--kernel debug` builds the distribution's linux-source), or drop "
              "the symbols from DEBUG_PROFILE in harness/kernel_build.py")  # fmt: skip


def _check_clean_source(tree: Path, objdir: Path) -> None:
    """make refuses an O= build of a tree that was configured in place (its own check, made clear here)."""
    leftovers = [p for p in (".config", "include/config", "arch/x86/include/generated") if (tree / p).exists()]
    if leftovers:
        raise KernelBuildError(
            f"{tree} has an in-tree build ({', '.join(leftovers)}), and a profile build goes to {objdir} "
            "(make O=), which make refuses for a tree that is not clean. Fix: `make mrproper` in the tree "
            "(its plain build is then redone on next use), or give the profile a clean checkout "
            "(`git worktree add ../linux-debug`) and name that: --kernel debug:../linux-debug"
        )


class BuildProgress:
    """Counts the objects make reports compiling (`  CC ...` lines in the log) while a build runs and
    notifies every `interval` seconds: count, and a percentage when an earlier build of the same entry
    recorded its total."""

    def __init__(self, log: Path, notify: Notify, what: str, expected: int = 0, interval: float = 60.0) -> None:
        import threading

        self.log, self.notify, self.what, self.expected, self.interval = log, notify, what, expected, interval
        self.objects = 0
        self._offset = log.stat().st_size if log.exists() else 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="knh-build-progress", daemon=True)
        self._start = time.monotonic()

    def __enter__(self) -> BuildProgress:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        self.poll()

    def poll(self) -> int:
        """Read what the log gained since the last poll; the number of objects compiled so far."""
        try:
            with self.log.open("rb") as f:
                f.seek(self._offset)
                chunk = f.read()
        except OSError:
            return self.objects
        end = chunk.rfind(b"\n") + 1  # a partial last line is read next time
        self._offset += end
        self.objects += count_compiled(chunk[:end].decode(errors="replace"))
        return self.objects

    def message(self) -> str:
        done = self.poll()
        elapsed = time.monotonic() - self._start
        share = f" (~{min(99, 100 * done // self.expected)}% of the {self.expected} last time)" if self.expected else ""
        return f"{self.what}: building, {done} objects compiled{share}, {elapsed / 60:.0f} min"

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.notify(self.message())


def count_compiled(text: str) -> int:
    """Objects compiled, from make's short output: `  CC      kernel/fork.o`, `  CC [M]  fs/x.o`, `  AS ...`."""
    return sum(1 for line in text.splitlines() if line.startswith(("  CC ", "  AS ")))


def _previous_objects(record_path: Path) -> int:
    try:
        value = json.loads(record_path.read_text()).get("objects", 0)
    except (OSError, ValueError, AttributeError):
        return 0
    return value if isinstance(value, int) else 0


def _cached(record_path: Path, key: str, tree: Path) -> Kernel | None:
    try:
        record = json.loads(record_path.read_text())
    except (OSError, ValueError):
        return None
    image = Path(record.get("image", ""))
    if record.get("key") != key or not image.is_file() or image_release(image) != record.get("release"):
        return None
    return Kernel(record["release"], image, tree)


def _configure(layout: BuildLayout, options: BuildOptions, vng: str, run: Runner) -> None:
    build_dir, log = layout.build_dir, layout.log
    wanted = options.config()
    items = []
    for name, value in wanted.items():
        items += ["--configitem", f"CONFIG_{name}={value}"]
    if options.base == "defconfig":
        _configure_defconfig(layout, options, vng, items, run)
    else:
        _configure_tiny(layout, options, vng, items, run)
    config = read_config(build_dir / ".config")
    missing = missing_config(config, {**REQUIRED_CONFIG, **_extra(options)})
    if missing:
        raise KernelBuildError(
            f"the configured {build_dir}/.config lacks what the harness needs (an older tree without "
            f"these symbols, or a dependency turned them off): {', '.join(missing)}",
            log,
        )
    missing = missing_profile(config, options.profile_config())
    if missing:
        raise KernelBuildError(_profile_error(options.profile, build_dir, missing), log)


def _make_o(layout: BuildLayout) -> list[str]:
    return ["make", f"O={layout.objdir}"] if layout.objdir is not None else ["make"]


def _configure_defconfig(layout: BuildLayout, options: BuildOptions, vng: str, items: list[str],
                         run: Runner) -> None:  # fmt: skip
    """virtme-ng's own: x86_64_defconfig + its guest items + ours (`vng --kconfig`; for a profile
    build in O=, the same made by hand: defconfig, then the items, then olddefconfig)."""
    tree, log = layout.tree, layout.log
    config = layout.build_dir / ".config"
    if layout.objdir is None:
        if run([vng, "--kconfig", "--verbose", *items], tree, log) != 0:
            raise KernelBuildError(f"configuring {tree} failed ({vng} --kconfig)", log)
    else:
        listing = log.with_suffix(".vng-items")
        listing.write_text("")
        if run([vng, "--kconfig", "--dry-run", *items], tree, listing) != 0:
            raise KernelBuildError(f"{vng} --kconfig --dry-run failed in {tree}", listing)
        if run([*_make_o(layout), "-s", "x86_64_defconfig"], tree, log) != 0:
            raise KernelBuildError(f"make x86_64_defconfig (O={layout.objdir}) failed in {tree}", log)
        wanted = {**config_items(listing.read_text()), **options.config()}
        with config.open("a") as f:  # later assignments win when make reads .config
            f.write("".join(_config_line(k, v) for k, v in wanted.items()))
        if run([*_make_o(layout), "-s", "olddefconfig"], tree, log) != 0:
            raise KernelBuildError(f"make olddefconfig (O={layout.objdir}) failed in {tree}", log)
    if not options.btf:
        # virtme-ng turns DWARF debug info on; without BTF it only makes the build slower and larger.
        argv = ["scripts/config", "--file", str(config), "-d", "DEBUG_INFO_DWARF_TOOLCHAIN_DEFAULT",
                "-d", "DEBUG_INFO_DWARF4", "-d", "DEBUG_INFO_DWARF5", "-e", "DEBUG_INFO_NONE"]  # fmt: skip
        if run(argv, tree, log) != 0 or run([*_make_o(layout), "-s", "olddefconfig"], tree, log) != 0:
            raise KernelBuildError(f"adjusting the configuration of {tree} failed", log)


def _config_line(name: str, value: str) -> str:
    return f"# CONFIG_{name} is not set\n" if value == "n" else f"CONFIG_{name}={value}\n"


def tiny_fragment(virtme: dict[str, str], options: BuildOptions) -> dict[str, str]:
    """The KCONFIG_ALLCONFIG for `make allnoconfig`: base, virtme-ng's kept items, ours."""
    out = dict(TINY_BASE)
    out.update({k: v for k, v in virtme.items() if v != "n" and not k.startswith(VIRTME_DROPPED_PREFIXES)})
    out.update(options.config())
    return out


def _configure_tiny(layout: BuildLayout, options: BuildOptions, vng: str, items: list[str],
                    run: Runner) -> None:  # fmt: skip
    """allnoconfig + TINY_BASE + virtme-ng's guest items (its --dry-run list) + ours."""
    tree, log = layout.tree, layout.log
    listing = log.with_suffix(".vng-items")
    listing.write_text("")
    if run([vng, "--kconfig", "--dry-run", *items], tree, listing) != 0:
        raise KernelBuildError(f"{vng} --kconfig --dry-run failed in {tree}", listing)
    fragment = tiny_fragment(config_items(listing.read_text()), options)
    allconfig = layout.build_dir / ".knh-allconfig"  # ignored by the kernel's .gitignore (".*")
    allconfig.write_text("".join(_config_line(k, v) for k, v in fragment.items()))
    argv = [*_make_o(layout), "-s", f"KCONFIG_ALLCONFIG={allconfig}", "allnoconfig"]
    if run(argv, tree, log) != 0:
        raise KernelBuildError(f"{' '.join(argv)} failed in {tree}", log)


def _extra(options: BuildOptions) -> dict[str, str]:
    """Items beyond the required and preferred ones that must hold; the profile's are checked by
    missing_profile (with reasons and optional symbols)."""
    skip = {*REQUIRED_CONFIG, *PREFERRED_CONFIG, *options.profile_config()}
    return {k: v for k, v in options.config().items() if k not in skip}


def _rmtree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def modules_dir_for(kernel: Kernel, cache_root: Path | None = None) -> Path | None:
    """Where the modules of a kernel built here were installed (for the fast engine's initramfs),
    or None for any other kernel."""
    build_dir = kernel.build_dir
    if build_dir.name.endswith("-obj") and build_dir.parent.name == "kernel-builds":  # a profile build (O=)
        modules_root = build_dir.with_name(build_dir.name.removesuffix("-obj") + "-modules")
    else:
        _, _, _, modules_root = _state_paths(build_dir, cache_root or default_cache_root())
    moddir = modules_root / "lib" / "modules" / kernel.release
    return moddir if (moddir / "modules.dep").exists() else None


SOURCE_DIR = Path("/usr/src")
SOURCE_HINT = ("apt-get install linux-source-6.1 (Debian 12; scripts/setup.sh does it) or linux-source (Ubuntu), "
               "or name your own tree: --kernel debug:~/src/linux")  # fmt: skip


def parse_profile_spec(spec: str) -> tuple[str, str] | None:
    """`debug` -> ("debug", ""): the distribution's source; `debug:TREE` -> ("debug", TREE); None for a
    spec without a profile. A directory named like a profile is reached as ./debug."""
    name, sep, tree = spec.partition(":")
    if name not in PROFILES or (sep and not tree):
        return None
    return name, tree


def find_distro_source(src: Path | None = None) -> Path | None:
    """The newest linux-source tarball: Debian's /usr/src/linux-source-6.1.tar.xz, Ubuntu's
    /usr/src/linux-source-<ver>/linux-source-<ver>.tar.bz2."""
    from .kernel import release_sort_key

    src = src or SOURCE_DIR
    found = [p for pattern in ("linux-source-*.tar.*", "linux-source-*/linux-source-*.tar.*") for p in src.glob(pattern)
             if p.is_file() and p.name.endswith((".tar.xz", ".tar.bz2", ".tar.gz"))]  # fmt: skip
    return max(found, key=lambda p: release_sort_key(p.name), default=None)


def unpack_source(tarball: Path, cache_root: Path, *, notify: Notify = _silent) -> Path:
    """Unpack a source tarball once into <cache>/kernel-src/<name> and return the tree. A tarball that
    changed since (a distribution update: other size or mtime) is unpacked again."""
    import shutil
    import tempfile

    name = tarball.name.split(".tar.")[0]
    base = cache_root / "kernel-src"
    tree, stamp = base / name, base / f"{name}.json"
    st = tarball.stat()
    identity = {"tarball": str(tarball), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    base.mkdir(parents=True, exist_ok=True)
    with _locked(base / f"{name}.lock"):
        with contextlib.suppress(OSError, ValueError):
            if json.loads(stamp.read_text()) == identity and is_kernel_tree(tree):
                return tree
        notify(f"unpacking {tarball} into {tree} (once) ...")
        start = time.monotonic()
        tmp = Path(tempfile.mkdtemp(prefix=".unpack-", dir=base))
        try:
            proc = subprocess.run(["tar", "-xf", str(tarball), "-C", str(tmp)], capture_output=True, check=False)
            if proc.returncode != 0:
                raise KernelBuildError(f"unpacking {tarball} failed (tar -xf): "
                                       f"{proc.stderr.decode(errors='replace').strip()[-500:]}")  # fmt: skip
            tops = [p for p in tmp.iterdir() if p.is_dir()]
            if len(tops) != 1 or not is_kernel_tree(tops[0]):
                raise KernelBuildError(
                    f"{tarball} does not hold one kernel source tree (found {len(tops)} directories)"
                )
            if tree.exists():
                shutil.rmtree(tree)
            tops[0].rename(tree)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        stamp.write_text(json.dumps(identity) + "\n")
        notify(f"unpacked {tarball} in {time.monotonic() - start:.0f} s")
        return tree


def profile_tree(tree: str, *, cache_root: Path, notify: Notify = _silent, src: Path | None = None) -> Path:
    """The tree a profile spec builds: the named one, or the distribution's source unpacked into the cache."""
    if tree:
        path = Path(tree).expanduser()
        if not is_kernel_tree(path):
            raise KernelNotFoundError(f"debug:{tree}: {path} is not a kernel source tree (it needs Makefile, "
                                      "Kconfig and arch/)")  # fmt: skip
        return path
    src = src or SOURCE_DIR
    tarball = find_distro_source(src)
    if tarball is None:
        raise KernelNotFoundError(f"--kernel debug builds the distribution's kernel source, and {src} has no "
                                  f"linux-source-*.tar.*: {SOURCE_HINT}")  # fmt: skip
    return unpack_source(tarball, cache_root, notify=notify)


def resolve_kernel_spec(
    spec: str | None,
    *,
    options: BuildOptions | None = None,
    notify: Notify = _silent,
    run: Runner = run_logged,
    cache_root: Path | None = None,
) -> Kernel:
    """resolve_kernel plus source trees and profiles: a directory with Makefile, Kconfig and arch/ is
    built (or taken from the cache) and its Kernel returned; `debug` builds the distribution's source
    with the debug profile, `debug:TREE` that tree; anything else goes to resolve_kernel."""
    profile = parse_profile_spec(spec) if spec else None
    if profile is not None:
        name, tree = profile
        cache_root = cache_root or default_cache_root()
        path = profile_tree(tree, cache_root=cache_root, notify=notify)
        base = options or BuildOptions.from_env()
        options = BuildOptions(btf=base.btf, extra_config=base.extra_config, base=base.base, jobs=base.jobs,
                               vng=base.vng, profile=name)  # fmt: skip
        return build_kernel(path, options=options, notify=notify, run=run, cache_root=cache_root).kernel
    if spec and Path(spec).is_dir():
        path = Path(spec)
        if not is_kernel_tree(path):
            raise KernelNotFoundError(
                f"{spec} is a directory but not a kernel source tree (it needs Makefile, Kconfig and arch/); "
                "name a release, a vmlinuz path or a tree"
            )
        options = options or BuildOptions.from_env()
        return build_kernel(path, options=options, notify=notify, run=run, cache_root=cache_root).kernel
    return resolve_kernel(spec)
