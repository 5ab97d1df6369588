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
        for item in self.extra_config:
            name, sep, value = item.partition("=")
            if not sep:
                raise KernelBuildError(f"config item {item!r} is not NAME=value")
            out[name.removeprefix("CONFIG_")] = value
        return out

    def fingerprint(self) -> str:
        """Hash of the configuration request (and the virtme-ng version that expands it)."""
        from importlib import metadata

        try:
            vng_version = metadata.version("virtme-ng")
        except metadata.PackageNotFoundError:  # pragma: no cover - virtme-ng is a dependency
            vng_version = "?"
        text = json.dumps([sorted(self.config().items()), self.btf, self.base, str(vng_version)])
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


def _state_paths(tree: Path, cache_root: Path) -> tuple[Path, Path, Path, Path]:
    tid = hashlib.sha256(str(tree.resolve()).encode()).hexdigest()[:12]
    base = cache_root / "kernel-builds"
    return base / f"{tid}.json", base / f"{tid}.log", base / f"{tid}.lock", base / f"{tid}-modules"


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
    cache_root = cache_root or default_cache_root()
    record_path, log, lock, modules_root = _state_paths(tree, cache_root)
    with _locked(lock):
        key = cache_key(tree, options)
        cached = _cached(record_path, key, tree)
        if cached is not None:
            notify(f"kernel tree {tree}: unchanged, using the {cached.release} built before")
            return BuiltKernel(cached, modules_root, True, 0.0, log, key)

        start = time.monotonic()
        log.write_text(f"kernel build of {tree}, key {key}\n")
        steps: list[str] = []
        vng = options.vng or vng_executable()
        fingerprint = options.fingerprint()
        marker = tree / ".knh-config"  # ignored by the kernel's .gitignore (".*")
        current = marker.read_text().strip() if marker.exists() else ""
        if current != fingerprint or not (tree / ".config").exists():
            notify(f"kernel tree {tree}: configuring ({options.base} base + virtme-ng and harness items) ...")
            steps.append("configure")
            _configure(tree, options, vng, run, log)
            marker.write_text(fingerprint + "\n")
        notify(f"kernel tree {tree}: building (vng --build; log {log}) ...")
        steps.append("build")
        argv = [vng, "--build", "--verbose"]
        if options.jobs:
            argv += ["--jobs", str(options.jobs)]
        if run(argv, tree, log) != 0:
            raise KernelBuildError(f"kernel build failed in {tree} ({' '.join(argv)})", log)
        # Another commit's Kconfig may have dropped or renamed a symbol since the tree was configured.
        missing = missing_config(read_config(tree / ".config"), REQUIRED_CONFIG)
        if missing:
            raise KernelBuildError(f"{tree}/.config after the build lacks what the harness needs: "
                                   f"{', '.join(missing)}", log)  # fmt: skip
        image = tree / KIMG
        release = image_release(image) if image.exists() else None
        if release is None:
            raise KernelBuildError(f"the build of {tree} produced no readable {KIMG}", log)

        steps.append("modules_install")
        if modules_root.exists():
            _rmtree(modules_root)
        modules_root.mkdir(parents=True)
        argv = ["make", "-s", f"LOCALVERSION={LOCALVERSION}", "modules_install", f"INSTALL_MOD_PATH={modules_root}"]
        argv += ["INSTALL_MOD_STRIP=1", "DEPMOD=/sbin/depmod"]
        if run(argv, tree, log) != 0:
            raise KernelBuildError(f"make modules_install failed in {tree}", log)
        if not (modules_root / "lib" / "modules" / release / "modules.dep").exists():
            raise KernelBuildError(f"modules_install of {tree} left no lib/modules/{release}/modules.dep", log)

        kernel = Kernel(release, image, tree)
        seconds = time.monotonic() - start
        # Non-git trees: the state after the build, so files the build generated do not count as changes.
        key = key if key.startswith("git:") else cache_key(tree, options)
        record = {"key": key, "release": release, "image": str(image), "seconds": round(seconds, 1)}
        record_path.write_text(json.dumps(record, indent=1) + "\n")
        notify(f"kernel tree {tree}: built {release} in {seconds:.0f} s")
        return BuiltKernel(kernel, modules_root, False, seconds, log, key, tuple(steps))


def _cached(record_path: Path, key: str, tree: Path) -> Kernel | None:
    try:
        record = json.loads(record_path.read_text())
    except (OSError, ValueError):
        return None
    image = Path(record.get("image", ""))
    if record.get("key") != key or not image.is_file() or image_release(image) != record.get("release"):
        return None
    return Kernel(record["release"], image, tree)


def _configure(tree: Path, options: BuildOptions, vng: str, run: Runner, log: Path) -> None:
    wanted = options.config()
    items = []
    for name, value in wanted.items():
        items += ["--configitem", f"CONFIG_{name}={value}"]
    if options.base == "defconfig":
        _configure_defconfig(tree, options, vng, items, run, log)
    else:
        _configure_tiny(tree, options, vng, items, run, log)
    missing = missing_config(read_config(tree / ".config"), {**REQUIRED_CONFIG, **_extra(options)})
    if missing:
        raise KernelBuildError(
            f"the configured {tree}/.config lacks what the harness needs (an older tree without "
            f"these symbols, or a dependency turned them off): {', '.join(missing)}",
            log,
        )


def _configure_defconfig(tree: Path, options: BuildOptions, vng: str, items: list[str], run: Runner,
                         log: Path) -> None:  # fmt: skip
    """virtme-ng's own: x86_64_defconfig + its guest items + ours (`vng --kconfig`)."""
    if run([vng, "--kconfig", "--verbose", *items], tree, log) != 0:
        raise KernelBuildError(f"configuring {tree} failed ({vng} --kconfig)", log)
    if not options.btf:
        # virtme-ng turns DWARF debug info on; without BTF it only makes the build slower and larger.
        argv = ["scripts/config", "--file", ".config", "-d", "DEBUG_INFO_DWARF_TOOLCHAIN_DEFAULT",
                "-d", "DEBUG_INFO_DWARF4", "-d", "DEBUG_INFO_DWARF5", "-e", "DEBUG_INFO_NONE"]  # fmt: skip
        if run(argv, tree, log) != 0 or run(["make", "-s", "olddefconfig"], tree, log) != 0:
            raise KernelBuildError(f"adjusting the configuration of {tree} failed", log)


def tiny_fragment(virtme: dict[str, str], options: BuildOptions) -> dict[str, str]:
    """The KCONFIG_ALLCONFIG for `make allnoconfig`: base, virtme-ng's kept items, ours."""
    out = dict(TINY_BASE)
    out.update({k: v for k, v in virtme.items() if v != "n" and not k.startswith(VIRTME_DROPPED_PREFIXES)})
    out.update(options.config())
    return out


def _configure_tiny(tree: Path, options: BuildOptions, vng: str, items: list[str], run: Runner,
                    log: Path) -> None:  # fmt: skip
    """allnoconfig + TINY_BASE + virtme-ng's guest items (its --dry-run list) + ours."""
    listing = log.with_suffix(".vng-items")
    listing.write_text("")
    if run([vng, "--kconfig", "--dry-run", *items], tree, listing) != 0:
        raise KernelBuildError(f"{vng} --kconfig --dry-run failed in {tree}", listing)
    fragment = tiny_fragment(config_items(listing.read_text()), options)
    allconfig = tree / ".knh-allconfig"  # ignored by the kernel's .gitignore (".*")
    allconfig.write_text("".join(f"CONFIG_{k}={v}\n" for k, v in fragment.items()))
    if run(["make", "-s", f"KCONFIG_ALLCONFIG={allconfig}", "allnoconfig"], tree, log) != 0:
        raise KernelBuildError(f"make allnoconfig (KCONFIG_ALLCONFIG={allconfig}) failed in {tree}", log)


def _extra(options: BuildOptions) -> dict[str, str]:
    return {k: v for k, v in options.config().items() if k not in REQUIRED_CONFIG and k not in PREFERRED_CONFIG}


def _rmtree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def modules_dir_for(kernel: Kernel, cache_root: Path | None = None) -> Path | None:
    """Where the modules of a kernel built here were installed (for the fast engine's initramfs),
    or None for any other kernel."""
    _, _, _, modules_root = _state_paths(kernel.build_dir, cache_root or default_cache_root())
    moddir = modules_root / "lib" / "modules" / kernel.release
    return moddir if (moddir / "modules.dep").exists() else None


def resolve_kernel_spec(
    spec: str | None,
    *,
    options: BuildOptions | None = None,
    notify: Notify = _silent,
    run: Runner = run_logged,
    cache_root: Path | None = None,
) -> Kernel:
    """resolve_kernel plus source trees: a directory with Makefile, Kconfig and arch/ is built
    (or taken from the cache) and its Kernel returned; anything else goes to resolve_kernel."""
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
