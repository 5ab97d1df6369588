"""Settings: what can be configured, from where, and in which order.

Every setting has a command-line option, an environment variable and a pytest
ini key. Precedence is option > environment > ini > default, and a bad value
is reported together with the place it came from.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from harness.errors import ConfigError

PROJECT_ROOT = Path(__file__).resolve().parent.parent
# In a checkout guest_scripts/ sits next to harness/; an installed package carries it as
# harness/guest_scripts (see pyproject.toml).
GUEST_SCRIPTS = (
    PROJECT_ROOT / "guest_scripts"
    if (PROJECT_ROOT / "guest_scripts").is_dir()
    else Path(__file__).resolve().parent / "guest_scripts"
)
DEFAULT_MODULE_DIR = PROJECT_ROOT / "module"
ENGINES = ("vng", "qemu")
ACCEL_CHOICES = ("auto", "kvm", "tcg")
BUILD_CHOICES = ("auto", "dkms", "makefile", "kbuild")  # how a module directory is built (harness.build.plan)
PLACEHOLDERS = ("kdir", "release")  # --make-var values may use {kdir} and {release}
DEFAULT_ALLOWLIST = Path(__file__).resolve().parent / "splat_allowlist.txt"
# Memory-error detectors a stock kernel may have built in and switched off, turned on by a kernel
# argument (harness.build.memdebug), and the ones "auto" turns on: those whose boot-time cost under
# TCG is small (docs/kernels.md, "Memory debugging on stock kernels").
MEMORY_DEBUG_HELPERS = ("kfence", "slub")
MEMORY_DEBUG_DEFAULT: tuple[str, ...] = ("kfence",)

Number = TypeVar("Number", int, float)


def default_cache_root() -> Path:
    """The harness cache: built kernels and modules, initramfs images, foreign architectures' kernels and roots."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "knetlink-harness"


def vng_executable() -> str:
    """virtme-ng from the running interpreter's environment, else from PATH."""
    local = Path(sys.executable).parent / "vng"
    return str(local) if local.exists() else (shutil.which("vng") or "vng")


def _number(convert: Callable[[str], Number], *, allow_zero: bool) -> Callable[[str], Number]:
    """A parser of int or float text that must be > 0, or >= 0 with `allow_zero`."""

    def parse(text: str) -> Number:
        value = convert(text)
        if value < 0 or (value == 0 and not allow_zero):
            raise ValueError("must be >= 0" if allow_zero else "must be > 0")
        return value

    return parse


_positive_float = _number(float, allow_zero=False)
_non_negative_float = _number(float, allow_zero=True)
_positive_int = _number(int, allow_zero=False)
_non_negative_int = _number(int, allow_zero=True)


def _one_of(choices: Sequence[str]) -> Callable[[str], str]:
    """A parser of text that must be one of `choices`."""

    def parse(text: str) -> str:
        if text not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}")
        return text

    return parse


_accel = _one_of(ACCEL_CHOICES)
_engine = _one_of(ENGINES)
_build_choice = _one_of(BUILD_CHOICES)


def _arch(text: str) -> str:
    """An architecture name, or "host" for the host's own."""
    from harness.arches import ARCH_NAMES, host_arch

    if text == "host":
        return host_arch().name
    return _one_of(ARCH_NAMES)(text)


def _taint_letters(text: str) -> str:
    from harness.kernel_log.dmesg import TAINT_FLAGS

    known = {f.letter for f in TAINT_FLAGS}
    bad = sorted(set(text) - known)
    if bad:
        raise ValueError(f"unknown taint letters {''.join(bad)} (known: {''.join(sorted(known))})")
    return text


def _kernel_base(text: str) -> str:
    if text not in ("tiny", "defconfig"):
        raise ValueError("must be tiny or defconfig")
    return text


def _memory_debug(text: str) -> tuple[str, ...]:
    word = text.lower()
    if word in ("auto", "default"):
        return MEMORY_DEBUG_DEFAULT
    if word in ("off", "none", "0"):
        return ()
    if word == "all":
        return MEMORY_DEBUG_HELPERS
    helpers = tuple(dict.fromkeys(_words(word)))
    unknown = [h for h in helpers if h not in MEMORY_DEBUG_HELPERS]
    if unknown or not helpers:
        what = f"unknown helper(s) {', '.join(unknown)}" if unknown else "no helper named"
        raise ValueError(f"{what}; use auto, off, all or a list of {', '.join(MEMORY_DEBUG_HELPERS)}")
    return helpers


def _memory(text: str) -> str:
    digits = text[:-1] if text[-1:].upper() in ("M", "G") else text
    if not digits.isdigit() or int(digits) <= 0:
        raise ValueError("must look like 512M or 2G")
    return text


def _words(text: str) -> tuple[str, ...]:
    return tuple(w for w in text.replace(",", " ").split() if w)


def _flag(text: str) -> bool:
    word = text.lower()
    if word in ("1", "yes", "true", "on"):
        return True
    if word in ("0", "no", "false", "off"):
        return False
    raise ValueError("must be 1 or 0 (yes/no, true/false, on/off)")


def _param(text: str) -> str:
    name, sep, _ = text.partition("=")
    if not sep or not name.isidentifier():
        raise ValueError("must be NAME=VALUE")
    return text


def _make_var(text: str) -> str:
    try:
        expand_make_vars([text], Path("/kdir"), "release")
    except ConfigError as e:
        raise ValueError(str(e)) from None
    return text


def expand_make_vars(make_vars: Sequence[str], kdir: Path, release: str) -> tuple[str, ...]:
    """NAME=VALUE items with {kdir} and {release} replaced; any other {placeholder} is a ConfigError."""
    out = []
    values = {"kdir": str(kdir), "release": release}
    for item in make_vars:
        name, sep, value = item.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise ConfigError(f"make variable {item!r} is not NAME=VALUE")
        unknown = sorted(set(re.findall(r"{(\w*)}", value)) - set(PLACEHOLDERS))
        if unknown:
            raise ConfigError(f"make variable {item!r} uses {{{unknown[0]}}}; the placeholders are "
                              f"{', '.join('{' + p + '}' for p in PLACEHOLDERS)}")  # fmt: skip
        for key, text in values.items():
            value = value.replace("{" + key + "}", text)
        out.append(f"{name}={value}")
    return tuple(out)


@dataclass(frozen=True)
class Setting:
    """One configurable value and the three places it can be set."""

    name: str  # attribute of HarnessConfig
    option: str  # command-line option (pytest and CLI)
    env: str  # environment variable
    ini: str  # pytest ini key
    default: str
    help: str
    parse: Callable[[str], Any] = str
    multi: bool = False  # option may repeat; env/ini hold a space/comma separated list
    flag: bool = False  # the option takes no value and means "1"; env/ini hold 1/0
    item_parse: Callable[[str], Any] | None = None


SETTINGS: tuple[Setting, ...] = (
    Setting("kernels", "--kernel", "KNH_KERNEL", "knh_kernels", "",
            "kernel to boot: installed release, path to a kernel image, or 'all' (every installed kernel "
            "with headers); repeat for a matrix (default: newest installed kernel with headers)", multi=True),
    Setting("arch", "--arch", "KNH_ARCH", "knh_arch", "host",
            "guest architecture of the kernels named without one (x86_64, arm64; host: the host's); a --kernel "
            "value may carry its own (arm64:6.1.0-57-arm64). A foreign one boots under TCG on the qemu engine, with "
            "cross-built modules and a root filesystem made by `python -m harness arch-setup ARCH`", _arch),
    Setting("accel", "--accel", "KNH_ACCEL", "knh_accel", "auto",
            "QEMU accelerator: auto (KVM if a probe guest runs on it, else TCG), kvm or tcg", _accel),
    Setting("engine", "--engine", "KNH_ENGINE", "knh_engine", "vng",
            "how guests boot: vng (virtme-ng) or qemu (direct QEMU boot of the same kernel with a busybox "
            "initramfs; much faster under TCG)", _engine),
    Setting("boot_timeout", "--boot-timeout", "KNH_BOOT_TIMEOUT", "knh_boot_timeout", "120",
            "seconds from QEMU start to a usable guest shell", _positive_float),
    Setting("boot_retries", "--boot-retries", "KNH_BOOT_RETRIES", "knh_boot_retries", "1",
            "fresh boots tried after a boot misses its deadline", _non_negative_int),
    Setting("command_timeout", "--command-timeout", "KNH_COMMAND_TIMEOUT", "knh_command_timeout", "60",
            "default seconds a guest command may run", _positive_float),
    Setting("settle", "--settle", "KNH_SETTLE", "knh_settle", "0.1",
            "seconds the guest kernel gets after a test unloaded a module, before its checks run: a timer "
            "or work item left armed fires into freed module code and fails the test that unloaded it "
            "(0: no wait, still one liveness round trip)", _non_negative_float),
    Setting("memory", "--guest-memory", "KNH_MEMORY", "knh_memory", "1G",
            "guest memory (QEMU -m)", _memory),
    Setting("cpus", "--guest-cpus", "KNH_CPUS", "knh_cpus", "2",
            "guest CPUs", _positive_int),
    Setting("results_dir", "--results-dir", "KNH_RESULTS_DIR", "knh_results_dir", "results",
            "directory for console transcripts, kernel logs and reports (the only path the guest may write)",
            lambda s: Path(s)),
    Setting("module_dir", "--module-dir", "KNH_MODULE_DIR", "knh_module_dir", str(DEFAULT_MODULE_DIR),
            "out-of-tree module source directory (a dkms.conf, a Makefile or a Kbuild file)", lambda s: Path(s)),
    Setting("module_build", "--module-build", "KNH_MODULE_BUILD", "knh_module_build", "auto",
            "how the module is built: auto (dkms.conf, else the Makefile, else Kbuild), dkms (MAKE[i] of "
            "dkms.conf), makefile (make in the directory, the kernel build directory as KDIR, KERNEL_DIR, "
            "KERNELDIR, KSRC... and the release as KVER) or kbuild (make -C <kernel build dir> M=<dir> modules)",
            _build_choice),
    Setting("make_vars", "--make-var", "KNH_MAKE_VARS", "knh_make_vars", "",
            "NAME=VALUE for make on every kernel ({kdir}: the kernel build directory, {release}: its release); "
            "repeatable", multi=True, item_parse=_make_var),
    Setting("make_targets", "--make-targets", "KNH_MAKE_TARGETS", "knh_make_targets", "",
            "make targets for the module build (default: the Makefile's default goal)", multi=True),
    Setting("splat_allowlist", "--splat-allowlist", "KNH_SPLAT_ALLOWLIST", "knh_splat_allowlist",
            str(DEFAULT_ALLOWLIST), "file of '<regex> ## <reason>' lines: kernel splats that do not fail a test",
            lambda s: Path(s)),
    Setting("allowed_taint", "--allowed-taint", "KNH_ALLOWED_TAINT", "knh_allowed_taint", "OE",
            "taint letters a test may add (O: out-of-tree module, E: unsigned module)", _taint_letters),
    Setting("module_params", "--module-param", "KNH_MODULE_PARAMS", "knh_module_params", "",
            "NAME=VALUE passed to insmod; repeatable", multi=True, item_parse=_param),
    Setting("require_ebpf", "--require-ebpf", "KNH_REQUIRE_EBPF", "knh_require_ebpf", "0",
            "1: an eBPF test whose guest cannot run bpftrace (or cannot time a call) fails instead of "
            "skipping", _flag, flag=True),
    Setting("full", "--full", "KNH_FULL", "knh_full", "0",
            "1: the full tier: tests marked `full` run, and tests size their work for it (e.g. 10,000 fuzzed "
            "frames instead of 500); 0: the quick tier", _flag, flag=True),
    Setting("kernel_base", "--kernel-base", "KNH_KERNEL_BASE", "knh_kernel_base", "tiny",
            "configuration base of a kernel built from a source tree: tiny (allnoconfig + what is needed) or "
            "defconfig (virtme-ng's own)", _kernel_base),
    Setting("kernel_btf", "--kernel-btf", "KNH_KERNEL_BTF", "knh_kernel_btf", "0",
            "1: a kernel built from a source tree gets DEBUG_INFO_BTF (CO-RE eBPF; slower, needs pahole)",
            _flag, flag=True),
    Setting("kernel_config", "--kernel-config", "KNH_KERNEL_CONFIG", "knh_kernel_config", "",
            "extra config item NAME=VALUE for a kernel built from a source tree; repeatable", multi=True,
            item_parse=_param),
    Setting("kernel_jobs", "--kernel-jobs", "KNH_KERNEL_JOBS", "knh_kernel_jobs", "0",
            "make -j for a kernel built from a source tree (0: one per core)", _non_negative_int),
    Setting("vng", "--vng", "KNH_VNG", "knh_vng", "",
            "the virtme-ng executable that configures and builds source trees (empty: the one next to the "
            "running Python)"),
    Setting("run_kernel_build", "--run-kernel-build", "KNH_RUN_KERNEL_BUILD", "knh_run_kernel_build", "0",
            "1: the kernel_build tests must run: a missing KNH_KERNEL_TREE fails them instead of skipping them",
            _flag, flag=True),
    Setting("load_check", "--load-check", "KNH_LOAD_CHECK", "knh_load_check", "0",
            "N > 0: the suite gets test_load_unload_cycles per kernel: the module (knh_module_source) loaded with "
            "its dependencies and unloaded N + 1 times, the module list restored each time, no splat, taint, slab "
            "growth or leak (python -m harness check as a test); 0: off", _non_negative_int),
    Setting("memory_debug", "--memory-debug", "KNH_MEMORY_DEBUG", "knh_memory_debug", "auto",
            "memory-error detectors a stock kernel has built in but switched off, turned on by a kernel argument "
            "where the kernel's configuration has them: auto (kfence), off, all, or a list of kfence (KFENCE "
            "sampling) and slub (slub_debug=FZPU)", _memory_debug),
    Setting("module_coverage", "--module-coverage", "KNH_MODULE_COVERAGE", "knh_module_coverage", "0",
            "1: build the module with GCOV_PROFILE=y on kernels with CONFIG_GCOV_KERNEL (--kernel debug) and write "
            "an HTML and a JSON coverage report (gcovr) per kernel under the run's results directory",
            _flag, flag=True),
)  # fmt: skip

SETTINGS_BY_NAME = {s.name: s for s in SETTINGS}


def _default(name: str) -> Any:
    """A setting's default value, parsed like any other value."""
    setting = SETTINGS_BY_NAME[name]
    if setting.multi:
        check = setting.item_parse or str
        return tuple(check(item) for item in _words(setting.default))
    return setting.parse(setting.default)


@dataclass(frozen=True)
class HarnessConfig:
    """Resolved settings; `sources` says where each value came from. A field's default is its
    Setting's default, parsed (the table above is the one place defaults are written)."""

    kernels: tuple[str, ...] = _default("kernels")
    arch: str = _default("arch")
    accel: str = _default("accel")
    engine: str = _default("engine")
    boot_timeout: float = _default("boot_timeout")
    boot_retries: int = _default("boot_retries")
    command_timeout: float = _default("command_timeout")
    settle: float = _default("settle")
    memory: str = _default("memory")
    cpus: int = _default("cpus")
    results_dir: Path = _default("results_dir")  # noqa: RUF009 (a Path is immutable)
    module_dir: Path = _default("module_dir")  # noqa: RUF009
    module_build: str = _default("module_build")
    make_vars: tuple[str, ...] = _default("make_vars")
    make_targets: tuple[str, ...] = _default("make_targets")
    splat_allowlist: Path = _default("splat_allowlist")  # noqa: RUF009
    allowed_taint: str = _default("allowed_taint")
    module_params: tuple[str, ...] = _default("module_params")
    require_ebpf: bool = _default("require_ebpf")
    full: bool = _default("full")
    kernel_base: str = _default("kernel_base")
    kernel_btf: bool = _default("kernel_btf")
    kernel_config: tuple[str, ...] = _default("kernel_config")
    kernel_jobs: int = _default("kernel_jobs")
    vng: str = _default("vng")
    run_kernel_build: bool = _default("run_kernel_build")
    load_check: int = _default("load_check")
    memory_debug: tuple[str, ...] = _default("memory_debug")
    module_coverage: bool = _default("module_coverage")
    sources: Mapping[str, str] = field(default_factory=dict, compare=False)


def _parse(setting: Setting, raw: str | Sequence[str], where: str) -> Any:
    try:
        if setting.multi:
            items = _words(raw) if isinstance(raw, str) else tuple(raw)
            check = setting.item_parse or str
            return tuple(check(item) for item in items)
        assert isinstance(raw, str)
        return setting.parse(raw.strip())
    except ValueError as e:
        raise ConfigError(f"invalid {setting.name.replace('_', ' ')} {raw!r} from {where}: {e}") from None


def resolve(
    options: Mapping[str, Any],
    environ: Mapping[str, str] | None = None,
    ini: Mapping[str, Any] | None = None,
) -> HarnessConfig:
    """Build a HarnessConfig from option values (None = not given), env and ini values."""
    environ = os.environ if environ is None else environ
    ini = ini or {}
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for s in SETTINGS:
        opt = options.get(s.name)
        if opt not in (None, [], ()):
            raw, where = opt, f"option {s.option}"
        elif environ.get(s.env, "").strip():
            raw, where = environ[s.env], f"environment variable {s.env}"
        elif ini.get(s.ini) not in (None, "", []):
            raw, where = ini[s.ini], f"ini key {s.ini}"
        else:
            raw, where = s.default, "default"
        if isinstance(raw, (int, float)) and not isinstance(raw, bool):
            raw = str(raw)
        values[s.name] = _parse(s, raw, where)
        sources[s.name] = where
    return HarnessConfig(**values, sources=sources)


def module_params_dict(params: Sequence[str]) -> dict[str, str]:
    """["proto=31", "require_cap=1"] -> {"proto": "31", "require_cap": "1"}."""
    out: dict[str, str] = {}
    for p in params:
        name, _, value = _param(p).partition("=")
        out[name] = value
    return out
