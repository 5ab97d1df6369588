"""The load/unload check (harness.loadcheck) as a test of a suite: collected when the load_check
setting (--load-check N, KNH_LOAD_CHECK, knh_load_check) is above 0, once per kernel of the matrix,
on the module the suite's knh_module_source names."""

from __future__ import annotations

import pytest

from harness.config import HarnessConfig, module_params_dict
from harness.loadcheck import CheckPolicy, check_kernel, format_table
from harness.pytest_plugin.runstate import HarnessFailed, run_state
from harness.session import KernelSession, ModuleSource

pytestmark = pytest.mark.kernel


def test_load_unload_cycles(request: pytest.FixtureRequest, knh_config: HarnessConfig,
                            knh_kernel_session: KernelSession, knh_module_source: ModuleSource) -> None:  # fmt: skip
    policy = CheckPolicy(knh_config.load_check, module_params_dict(knh_config.module_params),
                         run_state(request.config).allowlist, knh_config.allowed_taint, 1024)  # fmt: skip
    row = check_kernel(knh_kernel_session, knh_module_source, policy)
    print(format_table([row]))  # in the report of a passing test too (-rA, -rP)
    if row.outcome == "skip":
        pytest.skip(f"not built for this kernel: {'; '.join(row.problems)}")
    if row.outcome != "pass":  # infra: nothing was tested (a bisection skips the commit)
        raise HarnessFailed(f"load/unload check failed:\n{format_table([row])}", infra=row.infra)
