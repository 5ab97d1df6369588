"""How a module directory is built, chosen from what it holds, as the kernel and DKMS build it.

- ``dkms``: a ``dkms.conf``: its ``MAKE[i]`` (or DKMS's default command), run from the build
  directory with DKMS's variables set; ``BUILT_MODULE_NAME``/``LOCATION`` name the ``.ko`` files;
- ``makefile``: the module's own Makefile, run from the build directory with ``PWD`` set to it and
  the kernel build directory under every name real Makefiles use, the release as ``KVER``
  (never ``KERNELRELEASE``, which switches a Makefile into its kbuild branch);
- ``kbuild``: a Kbuild-only directory: ``make -C <kernel build dir> M=<dir> modules``.

Everything here is pure: the choice, the argv and the environment of the make command.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from harness.config import BUILD_CHOICES
from harness.errors import ConfigError

# Names under which real out-of-tree Makefiles take the kernel build directory and the release.
KERNEL_DIR_NAMES = ("KDIR", "KERNEL_DIR", "KERNELDIR", "KSRC", "KERNEL_SRC", "KERNEL_SOURCE", "KBUILD_DIR",
                    "KERNEL_BUILD", "KERNEL_PATH", "KLIB_BUILD", "LINUX_DIR")  # fmt: skip
RELEASE_NAMES = ("KVER", "KVERSION", "KERNEL_VER")


@dataclass(frozen=True)
class MakeCommand:
    """One make run: argv, the directory it runs in, and the environment it adds."""

    argv: tuple[str, ...]
    cwd: Path
    env: Mapping[str, str]

    def shown(self) -> str:
        """The command as the build log and the progress line print it (the environment it adds aside);
        the kernel build directory's and release's aliases are folded into one word each."""
        words: list[str] = []
        for arg in self.argv:
            name, _, _ = arg.partition("=")
            if name in KERNEL_DIR_NAMES[1:] or name in RELEASE_NAMES[1:]:
                continue
            alias = KERNEL_DIR_NAMES if name == KERNEL_DIR_NAMES[0] else RELEASE_NAMES
            folded = name in (KERNEL_DIR_NAMES[0], RELEASE_NAMES[0]) and any(
                a.startswith(f"{alias[1]}=") for a in self.argv)
            words.append(f"{arg} (also as {', '.join(alias[1:])})" if folded else arg)
        return f"(cd {self.cwd} && {' '.join(words)})"


def choose_build(src: Path, override: str = "auto") -> str:
    """The build choice for `src`: `override` unless it is "auto", else dkms, makefile or kbuild from
    the files present. A forced choice the directory cannot satisfy is a ConfigError."""
    if override not in BUILD_CHOICES:
        raise ConfigError(f"module build {override!r} is not one of {', '.join(BUILD_CHOICES)}")
    makefile = next((src / n for n in ("GNUmakefile", "makefile", "Makefile") if (src / n).is_file()), None)
    present = {
        "dkms": (src / "dkms.conf").is_file(),
        "makefile": makefile is not None and not kbuild_only(makefile.read_text(errors="replace")),
        "kbuild": (src / "Kbuild").is_file() or (src / "Makefile").is_file(),
    }
    if override != "auto":
        if not present[override]:
            wanted = {"dkms": "dkms.conf", "makefile": "Makefile", "kbuild": "Kbuild or Makefile"}[override]
            raise ConfigError(f"module build {override!r} was asked for, but {src} has no {wanted}; fix: set "
                              "--module-build auto or point --module-dir at the driver's directory")  # fmt: skip
        return override
    for choice in ("dkms", "makefile", "kbuild"):
        if present[choice]:
            return choice
    raise ConfigError(f"{src} has no dkms.conf, Makefile or Kbuild: not a module source directory; fix: point "
                      "--module-dir (or knh_module_source) at the directory that builds the .ko")  # fmt: skip


RULE = re.compile(r"^(?!\t)[^#=\s][^=#]*?(?<![:+?!])::?(?!=)", re.M)


def kbuild_only(makefile: str) -> bool:
    """True for a Makefile that is really a Kbuild file (`obj-m += x.o` and no rule): make alone
    says "No targets"; the kernel's make builds it (drivers that build into src/ ship one)."""
    text = makefile.replace("\\\n", " ")
    return bool(re.search(r"^\s*obj-(m|y|\$\()", text, re.M)) and not RULE.search(text)


def makefile_command(copy: Path, kdir: Path, release: str, *, jobs: int | None, make_vars: Sequence[str] = (),
                     targets: Sequence[str] = ()) -> MakeCommand:  # fmt: skip
    """The module's own Makefile, run the way its README says (`make` in its directory)."""
    argv = ["make"] + ([f"-j{jobs}"] if jobs else [])
    argv += [f"{name}={kdir}" for name in KERNEL_DIR_NAMES] + [f"{name}={release}" for name in RELEASE_NAMES]
    return MakeCommand(tuple(argv + list(make_vars) + list(targets)), copy, {"PWD": str(copy)})


def kbuild_command(copy: Path, kdir: Path, *, jobs: int | None, make_vars: Sequence[str] = (),
                   targets: Sequence[str] = ()) -> MakeCommand:  # fmt: skip
    """The kernel's build system on a Kbuild directory (`make -C <kdir> M=<dir> modules`)."""
    argv = ["make", "-C", str(kdir), f"M={copy}"] + ([f"-j{jobs}"] if jobs else [])
    return MakeCommand(tuple(argv + list(make_vars) + list(targets or ["modules"])), copy, {"PWD": str(copy)})


def dkms_variables(kdir: Path, release: str, arch: str, dkms_tree: Path, source_tree: Path) -> dict[str, str]:
    """What DKMS defines before it sources dkms.conf and runs MAKE[i]."""
    return {"kernelver": release, "kernel_source_dir": str(kdir), "arch": arch, "dkms_tree": str(dkms_tree),
            "source_tree": str(source_tree), "kernel_version": release}  # fmt: skip


def dkms_command(copy: Path, make: str | None, kdir: Path, variables: Mapping[str, str], *, jobs: int | None,
                 make_vars: Sequence[str] = ()) -> MakeCommand:  # fmt: skip
    """MAKE[i] run by bash from the build directory as DKMS runs it: a leading bare `make` becomes
    `make -jN KERNELRELEASE=<release>` (DKMS's own rewrite); DKMS's default command when there is
    none. The user's make variables go in MAKEFLAGS, which every make the command starts honours
    as command-line variables (a MAKE[0] may run several, or `cd src && make`)."""
    env = {**variables, "PWD": str(copy)}
    if make_vars:
        env["MAKEFLAGS"] = " ".join(v.replace("\\", "\\\\").replace(" ", "\\ ") for v in make_vars)
    release = variables["kernelver"]
    parallel = [f"-j{jobs}"] if jobs else []
    if make is None:
        return MakeCommand(("make", *parallel, f"KERNELRELEASE={release}", "-C", str(kdir), f"M={copy}"), copy, env)
    script = re.sub(r"^make\b", " ".join(["make", *parallel, f"KERNELRELEASE={release}"]), make.strip())
    return MakeCommand(("bash", "-c", script), copy, env)
