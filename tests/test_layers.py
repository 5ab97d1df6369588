"""The shape of the code: a generic core that knows no module, a knetlink layer on top of it,
no import cycle, no grab-bag file."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

HARNESS = Path(__file__).resolve().parent.parent / "harness"
CORE = sorted(p for p in HARNESS.glob("*.py") if p.name != "__main__.py")  # __main__ composes core + layer
# Names that belong to the knetlink module layer only.
KNETLINK_WORDS = re.compile(r"knetlink(?![-_]harness)|\bKnetlink|link:|knl_send|nl_send|py_sender|c_sender|\b21\b")
MAX_LINES = 450
LONG_ALLOWED = {"dmesg.py"}  # the pure kernel-log parser: patterns and their docs


def _imports(path: Path) -> set[str]:
    """harness modules `path` imports (also under TYPE_CHECKING), as dotted names."""
    package = "harness" if path.parent == HARNESS else "harness.knetlink"
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                name = f"{base}.{node.module}" if node.module else base
                found.add(name)
                found.update(f"{name}.{a.name}" for a in node.names)
            elif node.module and node.module.startswith("harness"):
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("harness"))
    return found


def _module_name(path: Path) -> str:
    rel = path.relative_to(HARNESS.parent).with_suffix("")
    return ".".join(p for p in rel.parts if p != "__init__")


MODULES = {_module_name(p): p for p in [*HARNESS.glob("*.py"), *HARNESS.glob("knetlink/*.py")]}


def _graph() -> dict[str, set[str]]:
    return {name: {i for i in _imports(path) if i in MODULES and i != name} for name, path in MODULES.items()}


@pytest.mark.parametrize("path", CORE, ids=lambda p: p.name)
def test_core_file_names_no_knetlink_thing(path: Path) -> None:
    hits = [f"{path.name}:{n}: {line.strip()}" for n, line in enumerate(path.read_text().splitlines(), 1)
            if KNETLINK_WORDS.search(line) and "harness.knetlink" not in line]  # fmt: skip
    assert not hits, "knetlink-specific text in the core:\n" + "\n".join(hits)


@pytest.mark.parametrize("path", CORE, ids=lambda p: p.name)
def test_core_does_not_import_the_module_layer(path: Path) -> None:
    assert not {i for i in _imports(path) if i.startswith("harness.knetlink")}


def test_no_import_cycle() -> None:
    graph = _graph()
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                raise AssertionError("import cycle: " + " -> ".join([*path[path.index(nxt):], nxt]))
            if nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)


@pytest.mark.parametrize("path", sorted(MODULES.values()), ids=lambda p: str(p.relative_to(HARNESS)))
def test_no_grab_bag_file(path: Path) -> None:
    lines = len(path.read_text().splitlines())
    assert path.name in LONG_ALLOWED or lines <= MAX_LINES, f"{path.name} has {lines} lines: split it by job"
