"""pytest plugin for kernel-module tests in throwaway guests: options, ini keys, markers, the
kernel matrix. Registered through the ``pytest11`` entry point ``knetlink_harness``.

Settings come from options, environment variables or ini keys (see harness.config);
option > environment > ini > default. The plugin's other parts are plugins of their
own, loaded below: harness.pytest_plugin.fixtures (the fixtures), harness.pytest_plugin.watch (the kernel watch
around every guest test), harness.pytest_plugin.report (artifacts, summaries), harness.pytest_plugin.parallel
(pytest-xdist: a worker per kernel) and harness.pytest_plugin.ebpf_fixtures.
"""

from __future__ import annotations

import importlib
import math
import time
from dataclasses import replace
from pathlib import Path
from types import ModuleType

import pytest

from harness.build.kernel_source import parse_profile_spec
from harness.config import SETTINGS
from harness.errors import HarnessError
from harness.kernel_log.dmesg import load_allowlist
from harness.pytest_plugin import parallel
from harness.pytest_plugin.runstate import (
    KERNEL_FIXTURES,
    RUN_KEY,
    KernelParam,
    RunState,
    kernel_params,
    resolve_settings,
    run_state,
)

# In import order: a module listed later may import an earlier one (pytest rewrites asserts only on first import).
# harness.pytest_plugin.parallel is imported here already, so it is registered in pytest_addoption instead.
pytest_plugins = [
    "harness.pytest_plugin.watch",
    "harness.pytest_plugin.report",
    "harness.pytest_plugin.fixtures",
    "harness.pytest_plugin.ebpf_fixtures",
]


def pytest_addoption(parser: pytest.Parser, pluginmanager: pytest.PytestPluginManager) -> None:
    if not pluginmanager.has_plugin("harness.pytest_plugin.parallel"):
        pluginmanager.register(parallel, "harness.pytest_plugin.parallel")
    group = parser.getgroup("knetlink-harness", "kernel module tests in throwaway guests")
    for s in SETTINGS:
        extra = f" [env {s.env}, ini {s.ini}, default: {s.default or 'none'}]"
        if s.multi:
            group.addoption(s.option, action="append", dest=f"knh_{s.name}", default=None, help=s.help + extra)
            parser.addini(s.ini, s.help, type="args", default=[])
        elif s.flag:
            group.addoption(s.option, dest=f"knh_{s.name}", action="store_const", const="1", default=None,
                            help=s.help + extra)  # fmt: skip
            parser.addini(s.ini, s.help, default="")
        else:
            group.addoption(s.option, dest=f"knh_{s.name}", default=None, help=s.help + extra)
            parser.addini(s.ini, s.help, default="")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "kernel: test boots a guest kernel (added automatically to tests using guest fixtures)"
    )
    config.addinivalue_line("markers", "module_params(**params): insmod parameters for the kmod fixture, e.g. proto=31")
    config.addinivalue_line("markers", "full: runs only in the full tier (--full, KNH_FULL=1, tox -e kernel-full)")
    config.addinivalue_line(
        "markers",
        "one_kernel(cost=1): the harness's own behaviour, the same whatever the guest kernel (QEMU's cleanup "
        "after a signal, a boot timeout): in the quick tier each case runs on one kernel of the matrix, the cases "
        "handed out costliest first to the kernel with the least cost so far (cost: the case's seconds under TCG, "
        "roughly); on every kernel in the full tier",
    )
    config.addinivalue_line(
        "markers",
        "debug_kernel: runs only on a debug-profile kernel (--kernel debug, debug:TREE; tox -e debug); deselected "
        "for every other kernel of the matrix",
    )
    config.addinivalue_line(
        "markers",
        "kernel_build: builds a kernel from KNH_KERNEL_TREE; skipped without one (a failure with --run-kernel-build)",
    )
    try:
        cfg = resolve_settings(config)
    except HarnessError as e:
        raise pytest.UsageError(str(e)) from None
    if not cfg.results_dir.is_absolute():
        cfg = replace(cfg, results_dir=config.rootpath / cfg.results_dir)
    try:  # a bad allowlist stops the run before any test, naming the file and line
        allowlist = load_allowlist(cfg.splat_allowlist)
    except HarnessError as e:
        raise pytest.UsageError(f"splat allowlist ({cfg.sources.get('splat_allowlist', 'default')}): {e}") from None
    cfg = replace(cfg, cpus=parallel.worker_cpus(config, cfg))
    run_root = parallel.worker_run_root(config) or cfg.results_dir / time.strftime("run-%Y%m%d-%H%M%S")
    config.stash[RUN_KEY] = RunState(cfg, allowlist, run_root)


_DIRECTORIES = pytest.StashKey[dict[Path, pytest.Directory]]()


@pytest.hookimpl(tryfirst=True)
def pytest_make_collect_report(collector: pytest.Collector) -> None:
    """Remember the Directory nodes collected (the load check's test joins the suite's)."""
    if isinstance(collector, pytest.Directory):
        collector.config.stash.setdefault(_DIRECTORIES, {})[collector.path] = collector


class LoadCheckModule(pytest.Module):
    """harness/pytest_plugin/loadcheck_suite.py collected as if it were a file of the suite (its conftest.py files
    and knh_module_source apply), without pytest importing it by path."""

    def _getobj(self) -> ModuleType:
        return importlib.import_module("harness.pytest_plugin.loadcheck_suite")


def suite_dir(session: pytest.Session, items: list[pytest.Item]) -> Path:
    """Where the suite's tests are: the first collected test's directory, else the first directory
    argument (its conftest.py overrides knh_module_source), else the rootdir."""
    if items:
        return items[0].path.parent
    for arg in session.config.args:
        path = session.config.invocation_params.dir / arg.split("::")[0]
        if path.exists():
            return path if path.is_dir() else path.parent
    return session.config.rootpath


def load_check_items(session: pytest.Session, items: list[pytest.Item]) -> list[pytest.Item]:
    """test_load_unload_cycles, one per kernel, for the load_check setting, in the suite's directory."""
    directory = suite_dir(session, items)
    # The collected Directory node: pytest scopes a conftest.py's fixtures to it (knh_module_source).
    parent: pytest.Collector = session.config.stash.get(_DIRECTORIES, {}).get(directory, session)
    module = LoadCheckModule.from_parent(parent, path=directory / "knh_load_check.py")
    return [node for node in module.collect() if isinstance(node, pytest.Item)]


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    if run_state(config).config.load_check:
        items.extend(load_check_items(session, items))
    for item in items:
        if KERNEL_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.kernel)
    full = run_state(config).config.full
    kept: list[pytest.Item] = []
    deselected: list[pytest.Item] = []  # the tiers, and says so
    for item in items:
        if item.get_closest_marker("one_kernel") is not None:
            one_kernel_args(item)  # a bad argument stops every tier, not only the quick one
        (kept if selected(item, full=full) else deselected).append(item)
    if not full and any(item.get_closest_marker("one_kernel") is not None for item in kept):
        deselected += spread_over_kernels(kept)
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        left_out = set(map(id, deselected))
        items[:] = [item for item in items if id(item) not in left_out]


def one_kernel_args(item: pytest.Item) -> tuple[float, str | None]:
    """What an item's one_kernel marker declares: its relative cost (`cost=`, default 1), what the quick tier
    balances, and its group (`group=`, default none): the cases of one group run on the same kernel (tests that
    share one expensive fixture)."""
    marker = item.get_closest_marker("one_kernel")
    kwargs = marker.kwargs if marker is not None else {}
    cost, group = kwargs.get("cost", 1), kwargs.get("group")
    if isinstance(cost, bool) or not isinstance(cost, (int, float)) or not math.isfinite(cost) or cost <= 0:
        raise pytest.UsageError(f"{item.nodeid}: one_kernel(cost={cost!r}): the cost is a positive number (the "
                                "case's seconds under TCG, roughly), e.g. @pytest.mark.one_kernel(cost=6)")  # fmt: skip
    if group is not None and (not isinstance(group, str) or not group):
        raise pytest.UsageError(f"{item.nodeid}: one_kernel(group={group!r}): the group is a name, e.g. "
                                '@pytest.mark.one_kernel(group="crash-inner-run")')  # fmt: skip
    return float(cost), group


def spread_over_kernels(items: list[pytest.Item]) -> list[pytest.Item]:
    """The copies of one_kernel tests to leave out: a case (a test with the same values of its other parameters),
    or a group of cases (one_kernel's `group`), keeps the copies of one kernel among those of the matrix that
    resolved (all of them when none did). The cases and groups are handed out costliest first (one_kernel's
    `cost`, a group's the sum of its cases'), each to the kernel with the least cost so far (the first such
    kernel of the matrix on a tie), so that every kernel's quick tier takes about the same time. Ties between
    cases go by their node ids without the kernel: the same in every run and xdist worker, whatever order the
    items are in."""
    copies: dict[tuple[str, str], list[tuple[tuple[str, str], int, bool, pytest.Item]]] = {}  # with each one's case
    costs: dict[tuple[str, str], dict[tuple[str, str], float]] = {}  # per case or group: its cases' costs
    params = kernel_params(items[0].config) if items else []
    for item in items:
        if not isinstance(item, pytest.Function) or item.get_closest_marker("one_kernel") is None:
            continue
        param = item.callspec.params.get("knh_kernel_session") if hasattr(item, "callspec") else None
        if not isinstance(param, KernelParam) or param not in params:
            continue
        # the test's node id without its kernel: the kernel's id comes first in the brackets
        case = (item.parent.nodeid if item.parent else "", item.name.replace(f"[{param.label}", "[", 1))
        cost, group = one_kernel_args(item)
        key = ("", group) if group is not None else case  # no node id is empty
        copies.setdefault(key, []).append((case, params.index(param), param.error is None, item))
        costs.setdefault(key, {})[case] = cost
    total = {key: math.fsum(sorted(found.values())) for key, found in costs.items()}  # the same in any item order
    load = [0.0] * len(params)
    left_out = []
    for key in sorted(copies, key=lambda k: (-total[k], k)):
        keep = min(common_kernels(key, copies[key]), key=lambda i: (load[i], i))
        load[keep] += total[key]
        left_out += [item for _, index, _, item in copies[key] if index != keep]
    return left_out


def common_kernels(key: tuple[str, str], copies: list[tuple[tuple[str, str], int, bool, pytest.Item]]) -> list[int]:
    """The kernels (indices in the matrix) on which every case of `key` (a case, or a group of cases) has a copy:
    those that resolved, else all of them. A group whose cases share no kernel is a usage error."""
    cases = {case for case, _, _, _ in copies}
    for wanted in (True, None):
        shared = set.intersection(*({i for c, i, ok, _ in copies if c == case and wanted in (None, ok)}
                                    for case in cases))  # fmt: skip
        if shared:
            return sorted(shared)
    names = ", ".join(sorted(name.removesuffix("[]") for _, name in cases))
    raise pytest.UsageError(f"one_kernel(group={key[1]!r}): its cases ({names}) have no kernel of the matrix in "
                            "common; give them a group each or none")  # fmt: skip


def selected(item: pytest.Item, *, full: bool) -> bool:
    """Whether the run's tier and kernel keep `item`: `full` tests only in the full tier,
    `debug_kernel` tests only when their kernel is a debug-profile one."""
    if not full and item.get_closest_marker("full") is not None:
        return False
    if item.get_closest_marker("debug_kernel") is not None:
        callspec = getattr(item, "callspec", None)
        param = callspec.params.get("knh_kernel_session") if callspec is not None else None
        return isinstance(param, KernelParam) and parse_profile_spec(param.spec) is not None
    return True


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "knh_kernel_session" in metafunc.fixturenames:
        params = kernel_params(metafunc.config)
        metafunc.parametrize("knh_kernel_session", params, indirect=True, scope="session",
                             ids=[p.label for p in params])  # fmt: skip
