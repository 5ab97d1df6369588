"""The shape of the code, as the folders show it: every module belongs to one layer and imports
only its own layer and the layers below; the pure parsers start no process; nothing below the
faces imports pytest; the two faces do not import each other; the core never names the module
layer; no import cycle, no grab-bag file; docs/architecture.md names every module."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
HARNESS = ROOT / "harness"

# Bottom to top. A module may import modules of its own layer and of the layers below it.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("data", ("harness.errors",)),
    ("pure", ("harness.kernel_log", "harness.formats")),
    ("settings", ("harness.config", "harness.arches")),
    ("build", ("harness.build",)),
    ("guest", ("harness.guest",)),
    ("orchestrator", ("harness.session", "harness.kernel_watch", "harness.loadcheck")),
    ("faces", ("harness.pytest_plugin", "harness.cli")),
    ("module layer", ("harness.knetlink",)),
    ("entry", ("harness.__main__",)),
)
PACKAGE_ROOT = "harness"  # harness/__init__.py: the table of moved names, imports nothing of the harness
FACES = ("harness.pytest_plugin", "harness.cli")
# Imports that start processes or drive a terminal: never in the pure layer.
PROCESS_MODULES = {"subprocess", "pexpect", "pty", "multiprocessing", "asyncio", "shutil", "signal"}
PROCESS_CALLS = re.compile(r"\bos\.(system|popen|exec\w*|spawn\w*|fork\w*|posix_spawn\w*)\b")
PYTEST_MODULES = {"pytest", "_pytest", "xdist", "pluggy"}
# Names that belong to the knetlink module layer only.
KNETLINK_WORDS = re.compile(r"knetlink(?![-_]harness)|\bKnetlink|link:|knl_send|nl_send|py_sender|c_sender|\b21\b")
MAX_LINES = 450
LONG_ALLOWED = {"harness.kernel_log.dmesg"}  # the pure kernel-log parser: patterns and their docs


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    return ".".join(p for p in rel.parts if p != "__init__")


MODULES = {_module_name(p): p for p in sorted(HARNESS.rglob("*.py"))}


def layer_of(module: str) -> int:
    """Index of `module`'s layer in LAYERS; -1 for the package root."""
    if module == PACKAGE_ROOT:
        return -1
    for index, (_, prefixes) in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return index
    raise AssertionError(f"{module} is in no layer of tests/test_layers.py: add it to LAYERS")


def _imports(path: Path, module: str) -> set[str]:
    """Every module `path` imports (also under TYPE_CHECKING and inside functions), dotted."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                name = f"{base}.{node.module}" if node.module else base
            else:
                name = node.module or ""
            found.add(name)
            found.update(f"{name}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return found


def harness_imports(module: str) -> set[str]:
    return {i for i in _imports(MODULES[module], module) if i in MODULES and i != module}


def _top_levels(module: str) -> set[str]:
    return {i.split(".")[0] for i in _imports(MODULES[module], module)}


def layer_violations(module: str, imported: set[str]) -> list[str]:
    """The imports of `module` that go up a layer or across the faces."""
    own = layer_of(module)
    bad = [f"{module} ({LAYERS[own][0]}) imports {i} ({LAYERS[layer_of(i)][0]})"
           for i in sorted(imported) if layer_of(i) > own]  # fmt: skip
    face = next((f for f in FACES if module.startswith(f)), None)
    if face:
        bad += [f"{module} imports the other face's {i}" for i in sorted(imported)
                if any(i.startswith(f) for f in FACES if f != face)]  # fmt: skip
    return bad


CORE = sorted(m for m in MODULES if not m.startswith("harness.knetlink") and m != "harness.__main__")
PURE = sorted(m for m in MODULES if m != PACKAGE_ROOT and LAYERS[layer_of(m)][0] == "pure")
BELOW_FACES = sorted(m for m in MODULES if layer_of(m) < layer_of("harness.cli"))


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_go_down_the_layers(module: str) -> None:
    assert not layer_violations(module, harness_imports(module))


@pytest.mark.parametrize("module", PURE)
def test_pure_layer_starts_no_process(module: str) -> None:
    text = MODULES[module].read_text()
    assert not _top_levels(module) & PROCESS_MODULES, f"{module} imports {_top_levels(module) & PROCESS_MODULES}"
    assert not PROCESS_CALLS.search(text), f"{module} calls {PROCESS_CALLS.search(text)}"


@pytest.mark.parametrize("module", BELOW_FACES)
def test_nothing_below_the_faces_imports_pytest(module: str) -> None:
    assert not _top_levels(module) & PYTEST_MODULES


def test_a_wrong_import_is_caught() -> None:
    """The rules above are live: an import up a layer and one across the faces are named."""
    assert layer_violations("harness.kernel_log.dmesg", {"harness.guest.vm"}) == [
        "harness.kernel_log.dmesg (pure) imports harness.guest.vm (guest)"
    ]
    assert layer_violations("harness.cli.commands", {"harness.pytest_plugin.runstate"}) == [
        "harness.cli.commands imports the other face's harness.pytest_plugin.runstate"
    ]
    assert layer_violations("harness.guest.vm", {"harness.kernel_log.dmesg", "harness.config"}) == []


@pytest.mark.parametrize("module", CORE)
def test_core_file_names_no_knetlink_thing(module: str) -> None:
    path = MODULES[module]
    hits = [f"{module}:{n}: {line.strip()}" for n, line in enumerate(path.read_text().splitlines(), 1)
            if KNETLINK_WORDS.search(line) and "harness.knetlink" not in line]  # fmt: skip
    assert not hits, "knetlink-specific text in the core:\n" + "\n".join(hits)


def test_no_import_cycle() -> None:
    graph = {m: harness_imports(m) for m in MODULES}
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


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_grab_bag_file(module: str) -> None:
    lines = len(MODULES[module].read_text().splitlines())
    assert module in LONG_ALLOWED or lines <= MAX_LINES, f"{module} has {lines} lines: split it by job"


def test_architecture_doc_names_every_module() -> None:
    doc = (ROOT / "docs" / "architecture.md").read_text()
    missing = [str(p.relative_to(ROOT)) for m, p in MODULES.items()
               if p.name != "__init__.py" and str(p.relative_to(ROOT)) not in doc]  # fmt: skip
    assert not missing, "docs/architecture.md does not name: " + ", ".join(missing)
