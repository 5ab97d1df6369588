"""Project-level pytest setup.

The harness plugin itself is registered by the package's ``pytest11`` entry
point (``pip install -e .``); this file checks that it is active, so a run
without the package installed fails with the fix instead of collecting nothing
useful, and loads the knetlink module layer's fixtures.
"""

from __future__ import annotations

import pytest

# pytester: tests/test_plugin.py runs pytest on generated test files; harness.knetlink.fixtures: this
# project's module layer (kmod with its protocol, kernel_log with links(), the senders).
pytest_plugins = ["pytester", "harness.knetlink.fixtures"]


def pytest_configure(config: pytest.Config) -> None:
    if not config.pluginmanager.has_plugin("knetlink_harness"):
        raise pytest.UsageError(
            "the knetlink-harness pytest plugin is not active: install the project with\n"
            "    python3 -m pip install -e .\n"
            "(or run through tox, which does it)"
        )
