"""Kernels in parallel with pytest-xdist: one guest per worker, one run directory for all.

- ``-n auto`` starts one worker per selected kernel, at most one per core
  (``pytest_xdist_auto_num_workers``), and one per core when ``-m`` leaves out
  the tests marked ``kernel`` (``-m "not kernel"``: host-side tests only);
  ``-n N`` starts N.
- Tests are scheduled by kernel (the harness's own scheduler for ``--dist load``,
  the default of ``-n``): each kernel's tests stay on one worker, which boots it
  once; tests of no kernel are spread like pytest-xdist's load scheduling.
- Workers write into the controller's run directory; each sends what it
  recorded (kernels, outcomes, splats, crashes, skips) back when it ends, and the
  controller writes the one summary.json and terminal summary.
- A worker's guests get ``max(1, cores // workers)`` vCPUs unless the cpus
  setting was given.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from harness.build.kernel import expand_kernel_specs
from harness.config import HarnessConfig
from harness.errors import HarnessError
from harness.pytest_plugin.runstate import kernel_params, resolve_settings, run_state

RUN_ROOT_INPUT = "knh_run_root"
STATE_OUTPUT = "knh_state"


def is_worker(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput")


def worker_run_root(config: pytest.Config) -> Path | None:
    """The controller's run directory, in a worker (None elsewhere)."""
    root = getattr(config, "workerinput", {}).get(RUN_ROOT_INPUT)
    return Path(root) if root else None


def worker_cpus(config: pytest.Config, cfg: HarnessConfig) -> int:
    """Guest vCPUs: the setting if given, else the cores shared among the workers."""
    workers = int(getattr(config, "workerinput", {}).get("workercount", 1))
    if workers <= 1 or cfg.sources.get("cpus", "default") != "default":
        return cfg.cpus
    return max(1, (os.cpu_count() or 1) // workers)


def selects_kernel_tests(markexpr: str) -> bool:
    """Whether a test marked `kernel` may pass the -m expression `markexpr` ("" passes all): with none of the
    expression's other markers, or with all of them (`-m full` selects kernel tests too). An expression this
    pytest cannot read counts as passing (pytest reports it itself)."""
    if not markexpr.strip():
        return True
    try:
        from _pytest.mark.expression import Expression  # pytest's own -m parser
    except ImportError:
        return True
    try:
        expression = Expression.compile(markexpr)
    except Exception:  # SyntaxError in pytest 9, the module's own ParseError before: pytest reports it itself
        return True

    def kernel_and(others: bool) -> Callable[..., bool]:
        def matcher(name: str, /, **_: str | int | bool | None) -> bool:
            return name == "kernel" or others

        return matcher

    return any(bool(expression.evaluate(kernel_and(others))) for others in (False, True))


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """-n auto: one worker per selected kernel, at most one per core; one per core for host-side tests alone."""
    cores = os.cpu_count() or 1
    if not selects_kernel_tests(str(config.getoption("markexpr", "") or "")):
        return cores
    try:
        kernels = len(expand_kernel_specs(resolve_settings(config).kernels, arch=resolve_settings(config).arch)) or 1
    except HarnessError:
        return 1  # the bad setting is reported once the run is configured

    return max(1, min(kernels, cores))


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    node.workerinput[RUN_ROOT_INPUT] = str(run_state(node.config).run_root)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: Any) -> None:
    recorded = getattr(node, "workeroutput", {}).get(STATE_OUTPUT)
    if recorded:
        run_state(node.config).remote.append(recorded)


def kernel_scope(nodeid: str, labels: Sequence[str]) -> str:
    """The scheduling scope of a test: its kernel's label when its id names one, else the test itself."""
    params = nodeid.partition("[")[2]
    return next((label for label in labels if label in params), nodeid)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """For --dist load (what -n means alone): one kernel's tests on one worker, others anywhere."""
    if config.getoption("dist", "no") != "load":
        return None
    from xdist.scheduler import LoadScopeScheduling  # type: ignore[import-untyped]

    labels = sorted((p.label for p in kernel_params(config)), key=len, reverse=True)  # longest match first

    class KernelScheduling(LoadScopeScheduling):  # type: ignore[misc]
        def _split_scope(self, nodeid: str) -> str:
            return kernel_scope(nodeid, labels)

    return KernelScheduling(config, log)
