"""The harness's pytest fixtures (function scope unless noted).

    knh_config            resolved HarnessConfig (session)
    knh_kernel_session    KernelSession for one kernel; parametrized over the kernel matrix (session)
    knh_module_source     the module under test (session); override it in a conftest.py
    built_module          the module built for that kernel
    guest                 the kernel's live guest, booted on first use, replaced after it dies
    guest_kernel          kernel log / module operations on that guest
    kernel_log            a kernel log window opened at the start of the test
    kmod                  the module loaded with the test's parameters, unloaded afterwards

With --module-coverage, the kernel's session keeps a harness.guest.coverage.KernelCoverage: `guest` resets
the counters of a guest before its first test, `built_module` names the coverage builds, `kmod`
copies the counters out after its rmmod, and the session's teardown copies them once more and writes
the reports (harness.pytest_plugin.report prints them).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from harness.build.module_build import BuiltModule
from harness.config import HarnessConfig, module_params_dict
from harness.errors import HarnessError, KernelNotFoundError
from harness.guest.coverage import KernelCoverage
from harness.guest.kernel_ops import GuestKernel, LogMark
from harness.guest.vm import Guest
from harness.kernel_log.dmesg import KernelLine
from harness.pytest_plugin.report import COVERAGE_KEY
from harness.pytest_plugin.runstate import HarnessFailed, KernelParam, fail_on_harness_error, notifier, run_state
from harness.pytest_plugin.watch import check_after_last_test
from harness.session import KernelSession, LoadedModule, ModuleSource


@pytest.fixture(scope="session")
def knh_config(pytestconfig: pytest.Config) -> HarnessConfig:
    return run_state(pytestconfig).config


_SESSION_COVERAGE = pytest.StashKey[dict[KernelSession, KernelCoverage]]()


def coverage_for(config: pytest.Config, session: KernelSession) -> KernelCoverage | None:
    """The session's coverage collector, when the run measures module coverage."""
    return config.stash.get(_SESSION_COVERAGE, {}).get(session)


def _finish_coverage(config: pytest.Config, session: KernelSession) -> None:
    """After the kernel's last test: a last copy of the counters, then the reports (summary entries)."""
    coverage = config.stash.get(_SESSION_COVERAGE, {}).pop(session, None)
    if coverage is None:
        return
    guest = session.current_guest
    try:
        if guest is not None:
            coverage.snapshot(guest)
    except HarnessError as e:  # the copies of earlier snapshots still make a report
        session.notify(f"module coverage: the last copy of the counters failed: {e}")
    config.stash.setdefault(COVERAGE_KEY, []).extend(coverage.report())


@pytest.fixture(scope="session")
def knh_kernel_session(request: pytest.FixtureRequest, knh_config: HarnessConfig) -> Iterator[KernelSession]:
    param: KernelParam = request.param
    if param.error is not None or param.kernel is None:
        error = param.error or KernelNotFoundError("no kernel")
        raise HarnessFailed(f"kernel {param.spec or '(default)'} unusable: {error}", infra=error.infra)
    state = run_state(request.config)
    session = KernelSession(knh_config, param.kernel, state.run_root, notify=notifier(request.config),
                            requested_kernel=param.spec)  # fmt: skip
    state.sessions.append(session)
    if knh_config.module_coverage:
        directory = state.run_root / param.kernel.label / "coverage"
        request.config.stash.setdefault(_SESSION_COVERAGE, {})[session] = KernelCoverage.for_kernel(
            param.kernel, directory)  # fmt: skip
    try:
        yield session
        failure = check_after_last_test(request.config, session)
        _finish_coverage(request.config, session)
        if failure:
            pytest.fail(failure, pytrace=False)
    finally:
        session.close()


@pytest.fixture(scope="session")
def knh_module_source(knh_config: HarnessConfig) -> ModuleSource:
    """The module under test. Override this fixture in a conftest.py to test another module."""
    return ModuleSource(knh_config.module_dir.resolve(), knh_config.make_targets)


@pytest.fixture
def built_module(request: pytest.FixtureRequest, knh_kernel_session: KernelSession,
                 knh_module_source: ModuleSource) -> BuiltModule:  # fmt: skip
    """The module built for the current kernel (built once per session and source)."""
    try:
        built = knh_kernel_session.build(knh_module_source)
    except HarnessError as e:
        fail_on_harness_error(e)
        raise
    coverage = coverage_for(request.config, knh_kernel_session)
    if coverage is not None:
        coverage.track(built)
    return built


@pytest.fixture
def guest(request: pytest.FixtureRequest, knh_kernel_session: KernelSession) -> Guest:
    try:
        live = knh_kernel_session.guest()
        coverage = coverage_for(request.config, knh_kernel_session)
        if coverage is not None:
            coverage.reset(live)
        return live
    except HarnessError as e:
        fail_on_harness_error(e)
        raise


@pytest.fixture
def guest_kernel(guest: Guest, knh_kernel_session: KernelSession) -> GuestKernel:
    return knh_kernel_session.guest_kernel()


class KernelLogWindow:
    """Kernel log lines written since the window opened."""

    def __init__(self, guest_kernel: GuestKernel, mark: LogMark) -> None:
        self.guest_kernel = guest_kernel
        self.mark = mark

    def lines(self) -> list[KernelLine]:
        return self.guest_kernel.lines_since(self.mark)

    def texts(self) -> list[str]:
        return [ln.text for ln in self.lines()]

    def restart(self) -> None:
        self.mark = self.guest_kernel.mark()


@pytest.fixture
def kernel_log(guest_kernel: GuestKernel) -> KernelLogWindow:
    return KernelLogWindow(guest_kernel, guest_kernel.mark())


def module_params_for(item: pytest.Item, cfg: HarnessConfig) -> dict[str, str]:
    """insmod parameters of a test: the configured ones, then its module_params markers (closest wins)."""
    params = module_params_dict(cfg.module_params)
    for mark in reversed(list(item.iter_markers("module_params"))):
        params.update({k: str(v) for k, v in mark.kwargs.items()})
    return params


@pytest.fixture
def kmod(
    request: pytest.FixtureRequest, knh_config: HarnessConfig, knh_kernel_session: KernelSession,
    knh_module_source: ModuleSource, built_module: BuiltModule, guest_kernel: GuestKernel,
    kernel_log: KernelLogWindow,
) -> Iterator[LoadedModule]:  # fmt: skip
    """The module loaded with the test's parameters, unloaded after the test."""
    try:
        loaded = knh_kernel_session.load(module_params_for(request.node, knh_config), knh_module_source)
    except HarnessError as e:
        fail_on_harness_error(e)
        raise
    yield loaded
    knh_kernel_session.unload(loaded)
    coverage = coverage_for(request.config, knh_kernel_session)
    guest = knh_kernel_session.current_guest
    if coverage is not None and guest is not None:
        try:
            coverage.snapshot(guest)
        except HarnessError as e:
            fail_on_harness_error(e)
