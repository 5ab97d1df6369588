"""A driver's dkms.conf, read the way DKMS reads it, and what it says about a build.

DKMS sources dkms.conf with bash after setting its own variables (``kernelver``,
``kernel_source_dir``, ``arch``, ``dkms_tree``...), so values may use them and any
shell the file's authors wrote. `read_dkms_conf` does the same (a fixed script,
the file's path as an argument) and prints every field NUL-separated;
`parse_fields` (pure) turns that into a `DkmsConf`; `exclusion` (pure) applies
DKMS's BUILD_EXCLUSIVE_* rules to a kernel.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from harness.errors import BuildError

DKMS_CONF = "dkms.conf"
SCALARS = ("PACKAGE_NAME", "PACKAGE_VERSION", "CLEAN", "BUILD_EXCLUSIVE_KERNEL", "BUILD_EXCLUSIVE_KERNEL_MIN",
           "BUILD_EXCLUSIVE_KERNEL_MAX", "BUILD_EXCLUSIVE_ARCH", "BUILD_EXCLUSIVE_CONFIG")  # fmt: skip
ARRAYS = ("MAKE", "MAKE_MATCH", "BUILT_MODULE_NAME", "BUILT_MODULE_LOCATION")

# Sourced like DKMS does (inside a function, whose `local` a file may use; its status ignored: a file
# may end in a false test); `s NAME VALUE` for scalars, `a NAME INDEX VALUE` for array items.
READ_SCRIPT = r"""
read_conf() { . "$1"; }
read_conf "$1" >/dev/null
for v in $2; do printf 's %s %s\0' "$v" "${!v}"; done
for a in $3; do
  declare -n arr="$a"
  for i in "${!arr[@]}"; do printf 'a %s %s %s\0' "$a" "$i" "${arr[$i]}"; done
  unset -n arr
done
"""


@dataclass(frozen=True)
class DkmsConf:
    package: str
    version: str
    make: Mapping[int, str]  # MAKE[i]
    make_match: Mapping[int, str]  # MAKE_MATCH[i]: a regex on the kernel release choosing MAKE[i]
    modules: tuple[tuple[str, str], ...]  # (BUILT_MODULE_NAME[i], BUILT_MODULE_LOCATION[i]) in index order
    exclusive_kernel: str = ""
    exclusive_kernel_min: str = ""
    exclusive_kernel_max: str = ""
    exclusive_arch: str = ""
    exclusive_config: str = ""

    def make_command(self, release: str) -> str | None:
        """The make command DKMS runs for `release`: the highest MAKE[i] whose MAKE_MATCH[i] matches
        it, else MAKE[0]; None when the file has none (DKMS's default command applies)."""
        for i in sorted(self.make_match, reverse=True):
            if i in self.make and re.search(self.make_match[i], release):
                return self.make[i]
        return self.make.get(0)


def parse_fields(output: str) -> DkmsConf:
    """The NUL-separated records READ_SCRIPT prints."""
    scalars: dict[str, str] = {}
    arrays: dict[str, dict[int, str]] = {a: {} for a in ARRAYS}
    for record in output.split("\0"):
        if record.startswith("s "):
            _, name, value = record.split(" ", 2)
            scalars[name] = value
        elif record.startswith("a "):
            _, name, index, value = record.split(" ", 3)
            arrays[name][int(index)] = value
    names = arrays["BUILT_MODULE_NAME"]
    locations = arrays["BUILT_MODULE_LOCATION"]
    return DkmsConf(
        package=scalars.get("PACKAGE_NAME", ""),
        version=scalars.get("PACKAGE_VERSION", ""),
        make=arrays["MAKE"],
        make_match=arrays["MAKE_MATCH"],
        modules=tuple((names[i], locations.get(i, "")) for i in sorted(names)),
        exclusive_kernel=scalars.get("BUILD_EXCLUSIVE_KERNEL", ""),
        exclusive_kernel_min=scalars.get("BUILD_EXCLUSIVE_KERNEL_MIN", ""),
        exclusive_kernel_max=scalars.get("BUILD_EXCLUSIVE_KERNEL_MAX", ""),
        exclusive_arch=scalars.get("BUILD_EXCLUSIVE_ARCH", ""),
        exclusive_config=scalars.get("BUILD_EXCLUSIVE_CONFIG", ""),
    )


def read_dkms_conf(path: Path, variables: Mapping[str, str]) -> DkmsConf:
    """Source `path` with bash and DKMS's `variables` set, from the driver's directory (where a value
    such as `PACKAGE_VERSION="$(cat VERSION)"` finds its file), as DKMS does. DKMS knows the package's
    name and version (`dkms build -m NAME -v VERSION`) before it reads the file: the first reading
    finds them, the second has `module` and `module_version` set, as a MAKE[0] built on them needs."""
    first = _source(path, variables)
    return _source(path, {**variables, "module": first.package, "module_version": first.version})


def _source(path: Path, variables: Mapping[str, str]) -> DkmsConf:
    env = {**os.environ, **variables}
    argv = ["bash", "-c", READ_SCRIPT, "dkms.conf", str(path), " ".join(SCALARS), " ".join(ARRAYS)]
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, check=False, timeout=30, cwd=path.parent)
    if proc.returncode != 0:
        raise BuildError(f"{path} cannot be read the way DKMS reads it (bash exited {proc.returncode}); fix the "
                         "file or choose another build with --module-build", proc.stderr)  # fmt: skip
    return parse_fields(proc.stdout)


def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", text)[:3])


def exclusion(conf: DkmsConf, release: str, arch: str, config: Mapping[str, str]) -> str | None:
    """Why DKMS would not build this package for the kernel (its BUILD_EXCLUSIVE_* rules), or None.
    `config`: the kernel's .config as {name without CONFIG_: value}."""
    who = f"dkms.conf of {conf.package or 'the module'}"
    if conf.exclusive_kernel and not re.search(conf.exclusive_kernel, release):
        return f'{who}: BUILD_EXCLUSIVE_KERNEL="{conf.exclusive_kernel}" does not match {release}'
    if conf.exclusive_kernel_min and _version_tuple(release) < _version_tuple(conf.exclusive_kernel_min):
        return f'{who}: BUILD_EXCLUSIVE_KERNEL_MIN="{conf.exclusive_kernel_min}" is newer than {release}'
    if conf.exclusive_kernel_max and _version_tuple(release) > _version_tuple(conf.exclusive_kernel_max):
        return f'{who}: BUILD_EXCLUSIVE_KERNEL_MAX="{conf.exclusive_kernel_max}" is older than {release}'
    if conf.exclusive_arch and not re.search(conf.exclusive_arch, arch):
        return f'{who}: BUILD_EXCLUSIVE_ARCH="{conf.exclusive_arch}" does not match {arch}'
    for word in conf.exclusive_config.split():
        negate = word.startswith("!")
        name = word.lstrip("!").removeprefix("CONFIG_")
        enabled = config.get(name, "n") in ("y", "m")
        if enabled == negate:
            state = f"CONFIG_{name}={config[name]}" if enabled else f"CONFIG_{name} is not set"
            return f'{who}: BUILD_EXCLUSIVE_CONFIG="{conf.exclusive_config}": {state} in {release}\'s .config'
    return None
