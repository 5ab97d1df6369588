"""knetlink-harness: test Linux kernel modules in throwaway guests.

The package is laid out by layer (docs/architecture.md): kernel_log/ and formats/ (pure),
build/, guest/, the orchestrator (session, kernel_watch, loadcheck), and the two faces,
pytest_plugin/ and cli/; the module layer is its own subpackage on top.

Modules moved into those folders keep their old import names (``from harness.vm import
Guest`` still works): :data:`MOVED` is the one table of old and new names (docs/changelog.md).
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import types
from collections.abc import Sequence

__version__ = "0.1.0"

MOVED = {
    "harness.dmesg": "harness.kernel_log.dmesg",
    "harness.splatframes": "harness.kernel_log.frames",
    "harness.kmemleak": "harness.kernel_log.kmemleak",
    "harness.bpftrace": "harness.kernel_log.bpftrace",
    "harness.junit": "harness.formats.junit",
    "harness.summary_md": "harness.formats.summary_md",
    "harness.elf": "harness.formats.elf",
    "harness.kernel": "harness.build.kernel",
    "harness.kernel_build": "harness.build.kernel_build",
    "harness.kernel_config": "harness.build.config_items",
    "harness.kernel_configure": "harness.build.configure",
    "harness.kernel_source": "harness.build.kernel_source",
    "harness.build_progress": "harness.build.progress",
    "harness.kmod": "harness.build.module_build",
    "harness.build_plan": "harness.build.plan",
    "harness.dkms": "harness.build.dkms",
    "harness.module_deps": "harness.build.module_deps",
    "harness.initramfs": "harness.build.initramfs",
    "harness.memdebug": "harness.build.memdebug",
    "harness.decode": "harness.build.decode",
    "harness.accel": "harness.guest.accel",
    "harness.cmdline": "harness.guest.cmdline",
    "harness.engines": "harness.guest.engines",
    "harness.vm": "harness.guest.vm",
    "harness.console": "harness.guest.console",
    "harness.channel": "harness.guest.channel",
    "harness.guest_kernel": "harness.guest.kernel_ops",
    "harness.ebpf": "harness.guest.ebpf",
    "harness.coverage": "harness.guest.coverage",
    "harness.checks": "harness.kernel_watch",
    "harness.plugin": "harness.pytest_plugin.plugin",
    "harness.fixtures": "harness.pytest_plugin.fixtures",
    "harness.watch": "harness.pytest_plugin.watch",
    "harness.report": "harness.pytest_plugin.report",
    "harness.parallel": "harness.pytest_plugin.parallel",
    "harness.runstate": "harness.pytest_plugin.runstate",
    "harness.ebpf_fixtures": "harness.pytest_plugin.ebpf_fixtures",
    "harness.loadcheck_suite": "harness.pytest_plugin.loadcheck_suite",
    "harness.cli_base": "harness.cli.base",
    "harness.bisect": "harness.cli.bisect_run",
    "harness.doctor": "harness.cli.doctor",
    "harness.shards": "harness.cli.shards",
}


class _MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports an old name as the module object of its new name (one object, so isinstance
    and monkeypatching see the same classes and globals)."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: types.ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        return importlib.machinery.ModuleSpec(fullname, self) if fullname in MOVED else None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType | None:
        return None

    def exec_module(self, module: types.ModuleType) -> None:
        sys.modules[module.__name__] = importlib.import_module(MOVED[module.__name__])


if not any(isinstance(finder, _MovedModules) for finder in sys.meta_path):
    sys.meta_path.append(_MovedModules())
