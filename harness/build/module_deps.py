"""What a built module needs from the kernel, and in which order a driver's .ko files load.

Pure functions over the files the kernel's build leaves (``Module.symvers``,
``modules.dep``, the build log's modpost lines, a source tree's Makefiles) and
each ``.ko``'s ``depends=``: the load order of a driver's own modules, the in-tree
modules to ``modprobe`` first, and for a dependency the kernel lacks, a message
naming it and the config option that builds it.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

MODPOST_UNDEFINED = re.compile(r'(?:WARNING|ERROR): modpost: "([^"]+)" \[([^\]]+)\] undefined!')
MODULE_SUFFIX = re.compile(r"\.ko(\.xz|\.zst|\.gz)?$")


def module_name(text: str) -> str:
    """The kernel's name of a module: file name without .ko[.xz|.zst|.gz], '-' as '_'."""
    return MODULE_SUFFIX.sub("", Path(text).name).replace("-", "_")


def parse_depends(field: str) -> tuple[str, ...]:
    """modinfo's depends= field ("videodev,mc" or empty) as module names."""
    return tuple(module_name(d) for d in field.strip().split(",") if d.strip())


def modules_dep_names(text: str) -> dict[str, str]:
    """modules.dep: {module name: its path in the module tree}."""
    out = {}
    for line in text.splitlines():
        path, sep, _ = line.partition(":")
        if sep:
            out[module_name(path)] = path
    return out


def parse_symvers(text: str) -> dict[str, str]:
    """Module.symvers: {symbol: the module exporting it, as a tree path ("vmlinux" for the kernel image)}."""
    out = {}
    for line in text.splitlines():
        fields = line.split("\t")
        if len(fields) >= 3:
            out[fields[1]] = fields[2]
    return out


def read_symvers(build_dir: Path) -> dict[str, str]:
    """The kernel build directory's Module.symvers, parsed; {} when it has none."""
    try:
        return parse_symvers((build_dir / "Module.symvers").read_text(errors="replace"))
    except OSError:
        return {}


def undefined_symbols(build_log: str) -> list[tuple[str, str]]:
    """(symbol, module) pairs modpost found undefined in a build log."""
    return MODPOST_UNDEFINED.findall(build_log)


def load_order(depends: Mapping[str, Sequence[str]], preferred: Sequence[str] = ()) -> list[str]:
    """The built modules in an order where each comes after the built modules it depends on; ties keep
    `preferred`'s order (a dkms.conf's BUILT_MODULE_NAME), then names. A cycle keeps the given order."""
    names = list(preferred) + sorted(n for n in depends if n not in preferred)
    order: list[str] = []
    visiting: set[str] = set()

    def visit(name: str) -> None:
        if name in order or name in visiting or name not in depends:
            return
        visiting.add(name)
        for dep in depends[name]:
            visit(dep)
        visiting.discard(name)
        order.append(name)

    for name in names:
        visit(name)
    return order


def closure(depends: Mapping[str, Sequence[str]], name: str) -> set[str]:
    """`name` and the built modules it needs, directly or not."""
    seen: set[str] = set()
    todo = [name]
    while todo:
        current = todo.pop()
        if current in seen or current not in depends:
            continue
        seen.add(current)
        todo.extend(depends[current])
    return seen


def under_test(depends: Mapping[str, Sequence[str]], order: Sequence[str]) -> str:
    """The module a test is about when a driver builds several: the last one no other built module
    depends on (the client, not its core)."""
    needed = {d for deps in depends.values() for d in deps}
    leaves = [n for n in order if n not in needed]
    return (leaves or list(order))[-1]


def kernel_dependencies(depends: Mapping[str, Sequence[str]]) -> tuple[str, ...]:
    """The modules the built ones need that the build did not make: the kernel's own, to modprobe."""
    seen: list[str] = []
    for deps in depends.values():
        seen += [d for d in deps if d not in depends and d not in seen]
    return tuple(seen)


def config_option(tree: Path, module_path: str) -> str | None:
    """The CONFIG_ option that builds `module_path` (a Module.symvers path such as
    drivers/media/v4l2-core/videodev), from the Makefile of its directory in a source tree."""
    path = Path(module_path)
    for name in ("Makefile", "Kbuild"):
        makefile = tree / path.parent / name
        try:
            text = makefile.read_text(errors="replace")
        except OSError:
            continue
        match = re.search(rf"obj-\$\((CONFIG_\w+)\)\s*[+:]?=(?:[^\n]*\\\n)*[^\n]*\b{re.escape(path.name)}\.o\b", text)
        if match:
            return match.group(1)
    return None


def exporting_files(tree: Path, symbols: Sequence[str]) -> dict[str, Path]:
    """The source files of a kernel source tree that export `symbols` (one grep for all of them); {}
    for a headers package (no sources) or when none does."""
    if not symbols or not (tree / "kernel").is_dir():
        return {}
    patterns = [arg for sym in symbols for arg in ("-e", rf"EXPORT_SYMBOL(_GPL)?(_NS(_GPL)?)?\(\s*{re.escape(sym)}\b")]
    try:
        proc = subprocess.run(["grep", "-rHoE", "--include=*.c", *patterns, str(tree)], capture_output=True,
                              text=True, check=False, timeout=120)  # fmt: skip
    except subprocess.TimeoutExpired:
        return {}
    found: dict[str, Path] = {}
    for line in proc.stdout.splitlines():
        path, _, match = line.partition(":")
        name = re.sub(r"^EXPORT_SYMBOL\w*\(\s*", "", match)
        found.setdefault(name, Path(path))
    return found


def option_for_file(tree: Path, source: Path) -> str | None:
    """The CONFIG_ option whose Makefile line builds `source`'s object (directly or through a composite)."""
    rel = source.relative_to(tree)
    obj = rel.with_suffix(".o").name
    try:
        text = (tree / rel.parent / "Makefile").read_text(errors="replace")
    except OSError:
        return None
    text = text.replace("\\\n", " ")
    direct = re.search(rf"obj-\$\((CONFIG_\w+)\)\s*[+:]?=[^\n]*\b{re.escape(obj)}", text)
    if direct:
        return direct.group(1)
    composite = re.search(rf"^(\w+)-(?:objs|y)\s*[+:]?=[^\n]*\b{re.escape(obj)}", text, re.M)
    if composite:
        return config_option(tree, str(rel.parent / composite.group(1)))
    return None


@dataclass(frozen=True)
class MissingDependency:
    """A module or symbol the kernel does not provide, and what would provide it."""

    what: str  # "module videodev" or "symbol video_register_device"
    option: str | None  # CONFIG_VIDEO_DEV, when a source tree tells
    where: str | None  # the tree path of the module that would provide it

    def describe(self, release: str, config: Mapping[str, str]) -> str:
        if self.option:
            value = config.get(self.option.removeprefix("CONFIG_"), "n")
            state = f"{self.option}={value}" if value != "n" else f"{self.option} is not set"
            return f"{self.what}: provided by {self.option} ({self.where or 'in the kernel'}); {state} in {release}"
        if self.where:
            return (f"{self.what}: built from {self.where} in the kernel tree, not in {release}'s module tree "
                    "(enable the option that builds it)")  # fmt: skip
        return (f"{self.what}: no module of {release} nor the kernel image exports it (Module.symvers); the "
                "subsystem that provides it is not configured in this kernel")  # fmt: skip


def missing_symbols(symbols: Sequence[str], symvers: Mapping[str, str], tree: Path) -> list[MissingDependency]:
    """What would provide each of `symbols`, which the kernel's Module.symvers lacks: the option building
    the file that exports it in a source tree (a kernel built here), else nothing known."""
    root = tree.resolve()
    sources = exporting_files(root, [s for s in symbols if s not in symvers])
    out = []
    for symbol in symbols:
        if symbol in symvers:
            out.append(MissingDependency(f"symbol {symbol}", None, symvers[symbol]))
        elif symbol in sources:
            source = sources[symbol]
            option = option_for_file(root, source)
            out.append(MissingDependency(f"symbol {symbol}", option, str(source.relative_to(root))))
        else:
            out.append(MissingDependency(f"symbol {symbol}", None, None))
    return out


def missing_module(name: str, symvers: Mapping[str, str], tree: Path) -> MissingDependency:
    """What would provide module `name`, which the kernel's module tree lacks."""
    paths = {p for p in symvers.values() if module_name(p) == name}
    where = sorted(paths)[0] if paths else None
    option = config_option(tree.resolve(), where) if where else None
    return MissingDependency(f"module {name}", option, where)
