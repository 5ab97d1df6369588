"""pytest plugin: options, markers and fixtures for kernel-module tests in guests.

Registered through the ``pytest11`` entry point ``knetlink_harness``. Settings
come from options, environment variables or ini keys (see harness.config);
option > environment > ini > default.

Fixtures (function scope unless noted):
    knh_config            resolved HarnessConfig (session)
    knh_kernel_session    KernelSession for one kernel; parametrized over the kernel matrix (session)
    built_module          the module built for that kernel (session)
    guest                 the kernel's live guest, booted on first use, replaced after it dies
    guest_kernel          kernel log / module operations on that guest
    kernel_log            a kernel log window opened at the start of the test
    kmod                  the module loaded with the test's parameters, unloaded afterwards
    py_sender, c_sender   in-guest netlink senders bound to the module's protocol
"""

from __future__ import annotations

import time
from collections.abc import Generator, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from .checks import KernelVerdict, judge_death
from .config import DEFAULT_MODULE_DIR, SETTINGS, HarnessConfig, module_params_dict, resolve
from .dmesg import AllowEntry, KernelLine, SplatReport, load_allowlist, parse_link_lines
from .errors import BootError, HarnessError, KernelNotFoundError, LostGuestError
from .kernel import Kernel, expand_kernel_specs
from .kernel_build import resolve_kernel_spec
from .kernelops import GuestKernel, LogMark
from .kmod import BuiltModule
from .senders import CSender, PySender
from .session import KernelSession, ModuleSource
from .vm import Guest
from .watch import (
    Cursor,
    KernelCheckError,
    Policy,
    Window,
    check_after_last,
    check_window,
    console_since,
    cursor_after,
    cursor_current,
    dead_since,
    open_window,
)

CONFIG_KEY = pytest.StashKey[HarnessConfig]()
_ALLOW_KEY = pytest.StashKey[Sequence[AllowEntry]]()
RUN_ROOT_KEY = pytest.StashKey[Path]()
SESSIONS_KEY = pytest.StashKey[list[KernelSession]]()
NOTES_KEY = pytest.StashKey[list[str]]()
SPLATS_KEY = pytest.StashKey[list[dict[str, Any]]]()
OUTCOMES_KEY = pytest.StashKey[dict[str, dict[str, str]]]()

# Modules whose fixtures are part of the plugin (registered in pytest_configure).
FIXTURE_MODULES: tuple[str, ...] = ("harness.ebpf",)

KERNEL_FIXTURES = {"knh_kernel_session", "built_module", "guest", "guest_kernel", "kernel_log", "kmod",
                   "py_sender", "c_sender"}  # fmt: skip


def pytest_addoption(parser: pytest.Parser) -> None:
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
    group.addoption("--run-kernel-build", action="store_true", dest="run_kernel_build", default=False,
                    help="require the kernel_build tests to run: a missing KNH_KERNEL_TREE fails them instead "
                         "of skipping them [env KNH_RUN_KERNEL_BUILD=1]")  # fmt: skip


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "kernel: test boots a guest kernel (added automatically to tests using guest fixtures)"
    )
    config.addinivalue_line("markers", "module_params(**params): insmod parameters for the kmod fixture, e.g. proto=31")
    config.addinivalue_line(
        "markers",
        "kernel_build: builds a kernel from KNH_KERNEL_TREE; skipped without one (a failure with --run-kernel-build)",
    )
    options = {s.name: config.getoption(f"knh_{s.name}") for s in SETTINGS}
    ini = {s.ini: config.getini(s.ini) for s in SETTINGS}
    try:
        cfg = resolve(options, ini=ini)
    except HarnessError as e:
        raise pytest.UsageError(str(e)) from None
    if not cfg.results_dir.is_absolute():
        cfg = _with_results_dir(cfg, config.rootpath / cfg.results_dir)
    try:  # a bad allowlist stops the run before any test, naming the file and line
        config.stash[_ALLOW_KEY] = load_allowlist(cfg.splat_allowlist)
    except HarnessError as e:
        raise pytest.UsageError(f"splat allowlist ({cfg.sources.get('splat_allowlist', 'default')}): {e}") from None
    config.stash[CONFIG_KEY] = cfg
    config.stash[RUN_ROOT_KEY] = cfg.results_dir / time.strftime("run-%Y%m%d-%H%M%S")
    config.stash[SESSIONS_KEY] = []
    config.stash[NOTES_KEY] = []
    config.stash[SPLATS_KEY] = []
    config.stash[OUTCOMES_KEY] = {}
    config.stash[CURSORS_KEY] = {}
    config.stash[CRASHES_KEY] = []
    config.stash[SKIPS_KEY] = []
    import importlib

    for name in FIXTURE_MODULES:
        if not config.pluginmanager.has_plugin(name):
            config.pluginmanager.register(importlib.import_module(name), name)


def _with_results_dir(cfg: HarnessConfig, path: Path) -> HarnessConfig:
    return replace(cfg, results_dir=path)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if KERNEL_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.kernel)


@dataclass(frozen=True)
class _KernelParam:
    spec: str
    kernel: Kernel | None
    error: HarnessError | None

    @property
    def label(self) -> str:
        return self.kernel.label if self.kernel else (self.spec or "default-kernel")


def _kernel_params(config: pytest.Config) -> list[_KernelParam]:
    cfg = config.stash[CONFIG_KEY]
    params = []
    for spec in expand_kernel_specs(cfg.kernels):
        try:
            # A source tree is built here (once, then cached): say so, it takes minutes.
            params.append(_KernelParam(spec, resolve_kernel_spec(spec or None, notify=_notify(config)), None))
        except HarnessError as e:
            params.append(_KernelParam(spec, None, e))
    return params


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "knh_kernel_session" in metafunc.fixturenames:
        params = _kernel_params(metafunc.config)
        metafunc.parametrize("knh_kernel_session", params, indirect=True, scope="session",
                             ids=[p.label for p in params])  # fmt: skip


def _notify(config: pytest.Config) -> Any:
    def notify(message: str) -> None:
        config.stash[NOTES_KEY].append(message)
        reporter = config.pluginmanager.get_plugin("terminalreporter")
        if reporter is None or config.getoption("quiet", 0) > 1:
            return
        capture = config.pluginmanager.get_plugin("capturemanager")
        if capture is not None:
            with capture.global_and_fixture_disabled():
                reporter.write_line(f"[knh] {message}")
        else:
            reporter.write_line(f"[knh] {message}")

    return notify


@pytest.fixture(scope="session")
def knh_config(pytestconfig: pytest.Config) -> HarnessConfig:
    return pytestconfig.stash[CONFIG_KEY]


@pytest.fixture(scope="session")
def knh_kernel_session(request: pytest.FixtureRequest, knh_config: HarnessConfig) -> Iterator[KernelSession]:
    param: _KernelParam = request.param
    if param.error is not None or param.kernel is None:
        error = param.error or KernelNotFoundError("no kernel")
        raise HarnessFailed(f"kernel {param.spec or '(default)'} unusable: {error}", infra=error.infra)
    session = KernelSession(knh_config, param.kernel, request.config.stash[RUN_ROOT_KEY],
                            notify=_notify(request.config), spec=param.spec)  # fmt: skip
    request.config.stash[SESSIONS_KEY].append(session)
    try:
        yield session
        failure = _check_after_last_test(request.config, session)
        if failure:
            pytest.fail(failure, pytrace=False)
    finally:
        session.close()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> Generator[None, None, None]:
    """After the run's last test, check every guest still watched before teardown shuts it down
    (also when a conftest overrides knh_kernel_session and its finalizer is not ours)."""
    failures: list[str | None] = []
    if nextitem is None:
        watched: list[KernelSession] = list(item.config.stash[CURSORS_KEY].keys())
        failures = [_check_after_last_test(item.config, session) for session in watched]
    result = yield
    if any(failures):
        pytest.fail("\n".join(f for f in failures if f), pytrace=False)
    return result


def _check_after_last_test(config: pytest.Config, session: KernelSession) -> str | None:
    """Before the guest is shut down: a crash after the last test fails the run, never ends it green."""
    cursor = config.stash[CURSORS_KEY].pop(session, None)
    if cursor is None or not cursor_current(session, cursor):
        return None
    verdict = check_after_last(session, cursor, _policy(config))
    if verdict.ok:
        return None
    what = "died" if verdict.died else "was not clean"
    headline = (f"the guest kernel {what} after the last test on it: {cursor.test} passed its checks, and "
                f"the kernel broke before the guest was shut down (guest {cursor.guest.launch.name}, "
                f"{session.kernel.release})")  # fmt: skip
    _record_crash(config, session, "(end of run)", "after the last test", cursor.test, verdict)
    config.stash[SPLATS_KEY].extend(
        {"test": cursor.test, "kernel": session.kernel.release, "phase": "after the last test",
         "kind": sp.kind, "fingerprint": sp.fingerprint, "allowed": False} for sp in verdict.splats.failures
    )  # fmt: skip
    return f"{headline}\n{verdict.message()}"


class HarnessFailed(pytest.fail.Exception):  # type: ignore[name-defined,misc]
    """A test failed because of a harness error; `infra` comes from the error's type and is
    recorded in the test's report (JUnit property ``knh_failure``: infra or test)."""

    def __init__(self, message: str, *, infra: bool) -> None:
        super().__init__(message, pytrace=False)
        self.infra = infra


def _fail_on_harness_error(e: HarnessError) -> None:
    raise HarnessFailed(str(e), infra=e.infra) from None


@pytest.fixture(scope="session")
def knh_module_source(knh_config: HarnessConfig) -> ModuleSource:
    """The module under test. Override this fixture in a conftest.py to test another module."""
    return ModuleSource(knh_config.module_dir.resolve(), knh_config.make_targets)


@pytest.fixture
def built_module(knh_kernel_session: KernelSession, knh_module_source: ModuleSource) -> BuiltModule:
    """The module built for the current kernel (built once per session and source)."""
    try:
        return knh_kernel_session.build(knh_module_source)
    except HarnessError as e:
        _fail_on_harness_error(e)
        raise


@pytest.fixture
def guest(knh_kernel_session: KernelSession) -> Guest:
    try:
        return knh_kernel_session.guest()
    except HarnessError as e:
        _fail_on_harness_error(e)
        raise


@pytest.fixture
def guest_kernel(guest: Guest, knh_kernel_session: KernelSession) -> GuestKernel:
    return knh_kernel_session.ops()


class KernelLogWindow:
    """Kernel log lines written since the window opened."""

    def __init__(self, ops: GuestKernel, mark: LogMark) -> None:
        self.ops = ops
        self.mark = mark

    def lines(self) -> list[KernelLine]:
        return self.ops.lines_since(self.mark)

    def texts(self) -> list[str]:
        return [ln.text for ln in self.lines()]

    def links(self) -> list[bytes]:
        """Payloads of the module's link: lines, unescaped, in order."""
        return [link.payload for link in parse_link_lines(self.lines())]

    def assert_links(self, expected: Sequence[str | bytes]) -> None:
        want = [e.encode() if isinstance(e, str) else e for e in expected]
        got = self.links()
        if got != want:
            shown = "\n".join(self.texts()[-40:])
            raise AssertionError(
                f"link: lines differ\n expected ({len(want)}): {want[:10]!r}{' ...' if len(want) > 10 else ''}\n"
                f"      got ({len(got)}): {got[:10]!r}{' ...' if len(got) > 10 else ''}\n"
                f"--- kernel log window ---\n{shown}"
            )

    def restart(self) -> None:
        self.mark = self.ops.mark()


@pytest.fixture
def kernel_log(guest_kernel: GuestKernel) -> KernelLogWindow:
    return KernelLogWindow(guest_kernel, guest_kernel.mark())


@dataclass(frozen=True)
class LoadedModule:
    name: str
    path: Path
    params: dict[str, str]

    @property
    def proto(self) -> int:
        return int(self.params.get("proto", "21"))


def module_params_for(item: pytest.Item, cfg: HarnessConfig) -> dict[str, str]:
    params = module_params_dict(cfg.module_params)
    for mark in reversed(list(item.iter_markers("module_params"))):
        params.update({k: str(v) for k, v in mark.kwargs.items()})
    return params


@pytest.fixture
def kmod(
    request: pytest.FixtureRequest, knh_config: HarnessConfig, built_module: BuiltModule,
    guest_kernel: GuestKernel, kernel_log: KernelLogWindow,
) -> Iterator[LoadedModule]:  # fmt: skip
    params = module_params_for(request.node, knh_config)
    ko = built_module.module()
    try:
        name = guest_kernel.insmod(ko, params)
    except HarnessError as e:
        _fail_on_harness_error(e)
        raise
    yield LoadedModule(name, ko, params)
    if guest_kernel.guest.alive and guest_kernel.loaded(name):
        guest_kernel.rmmod(name)


@pytest.fixture
def py_sender(guest: Guest, kmod: LoadedModule, knh_kernel_session: KernelSession) -> Iterator[PySender]:
    sender = PySender(guest, kmod.proto, stderr=knh_kernel_session.scratch / "nl_send.stderr")
    yield sender
    sender.release()


@pytest.fixture
def c_sender(guest: Guest, kmod: LoadedModule, built_module: BuiltModule) -> CSender:
    return CSender(guest, built_module.directory / "sender" / "knl_send", kmod.proto)


# -- after-test kernel checks, artifacts and reproduction ----------------------

_WINDOW_KEY = pytest.StashKey[Window]()
CURSORS_KEY = pytest.StashKey[dict[KernelSession, Cursor]]()
CRASHES_KEY = pytest.StashKey[list[dict[str, Any]]]()  # kernels found broken between tests or at the end
SKIPS_KEY = pytest.StashKey[list[dict[str, str]]]()  # skipped kernel tests: test, kernel, reason


# The kernel fixtures that put a guest under the test (the session and the module build alone do not).
GUEST_FIXTURES = KERNEL_FIXTURES - {"knh_kernel_session", "built_module"}


def _uses_guest(item: pytest.Item) -> bool:
    return bool(GUEST_FIXTURES & set(getattr(item, "fixturenames", ())))


def _policy(config: pytest.Config) -> Policy:
    cfg = config.stash[CONFIG_KEY]
    return Policy(_allowlist(config), cfg.allowed_taint, cfg.settle)


@pytest.fixture(autouse=True)
def _knh_kernel_watch(request: pytest.FixtureRequest) -> Iterator[None]:
    """For guest tests: check the kernel since the previous test, open a window (log position,
    taint, console offset) before the test, check it after the call and after the teardown."""
    item = request.node
    if not _uses_guest(item):
        yield
        return
    session: KernelSession = request.getfixturevalue("knh_kernel_session")
    window = _open_window(item, session)
    item.stash[_WINDOW_KEY] = window
    yield
    # Teardown: fixtures of the test (rmmod among them) are gone; check what they left.
    _close_window(item, window)


def _open_window(item: pytest.Item, session: KernelSession) -> Window:
    """Open the test's window; fail its setup if the kernel broke since the previous test."""
    policy = _policy(item.config)
    cursor = item.config.stash[CURSORS_KEY].pop(session, None)
    if not cursor_current(session, cursor):
        cursor = None
    if cursor is not None:
        dead = dead_since(cursor, policy)
        if dead is not None:
            _fail_between(item, session, cursor, dead)
    try:
        window, between = open_window(session, cursor, policy)
    except LostGuestError as e:
        if cursor is not None:
            _fail_between(item, session, cursor, dead_since(cursor, policy) or _lost(e))
        pytest.fail(f"the guest died before {item.nodeid} began: {e}", pytrace=False)
    except BootError as e:
        _fail_on_harness_error(e)
    except HarnessError as e:
        pytest.fail(f"kernel check error: the kernel checks could not start for {item.nodeid}: {e}", pytrace=False)
    if cursor is not None and between is not None and not between.ok:
        if not between.guest_suspect:  # keep watching from here: nothing after this point is lost
            item.config.stash[CURSORS_KEY][session] = replace(cursor, mark=window.mark, taint=window.taint,
                                                              console_offset=window.console_offset)  # fmt: skip
        _fail_between(item, session, cursor, between)
    return window


def _lost(e: LostGuestError) -> KernelVerdict:
    return judge_death(str(e), "QEMU exited", ())


def _fail_between(item: pytest.Item, session: KernelSession, cursor: Cursor, verdict: KernelVerdict) -> None:
    """The kernel broke after `cursor.test` passed its checks: fail this test's setup, naming it."""
    what = "died" if verdict.died else "was not clean"
    headline = (f"the guest kernel {what} between tests: after {cursor.test} passed its checks and before "
                f"{item.nodeid} began (guest {cursor.guest.launch.name}, {session.kernel.release})")  # fmt: skip
    _record_crash(item.config, session, item.nodeid, "between tests", cursor.test, verdict)
    _record_splats(item, session.kernel.release, "between tests", verdict.splats, with_allowed=False)
    if verdict.guest_suspect:
        session.recycle(headline)
    pytest.fail(f"{headline}\n{verdict.message()}", pytrace=False)


def _record_crash(config: pytest.Config, session: KernelSession, test: str, phase: str, previous: str,
                  verdict: KernelVerdict) -> None:  # fmt: skip
    config.stash[CRASHES_KEY].append({
        "test": test, "kernel": session.kernel.release, "phase": phase, "previous_test": previous,
        "died": verdict.died.reason if verdict.died else None,
        "splats": [s.fingerprint for s in verdict.splats.failures],
        "message": verdict.message(),
    })  # fmt: skip


def _close_window(item: pytest.Item, window: Window) -> None:
    """The teardown check: what the test's fixtures left (an unload gets the settle first)."""
    verdict = _check(item, window, "teardown")
    if verdict is not None and verdict.ok:
        cursor = cursor_after(window, item.nodeid)
        if cursor is not None:
            item.config.stash[CURSORS_KEY][window.session] = cursor
    if verdict is None or verdict.ok:
        return
    message = verdict.message()
    if _failed_before_teardown(item):  # one failure per test: the rest goes into its report
        item.add_report_section("teardown", "kernel checks", message)
    else:
        window.kernel_failed.add("teardown")
        pytest.fail(message, pytrace=False)


def _failed_before_teardown(item: pytest.Item) -> bool:
    phases = item.config.stash[OUTCOMES_KEY].get(item.nodeid, {})
    return "failed" in (phases.get("setup"), phases.get("call"))


def _allowlist(config: pytest.Config) -> Sequence[AllowEntry]:
    return config.stash[_ALLOW_KEY]


def _record_splats(
    item: pytest.Item, release: str, phase: str, report: SplatReport, *, with_allowed: bool = True
) -> None:
    """Add a check's splats to the run summary (summary.json and the terminal summary);
    the allowlisted ones too, with their reason, unless `with_allowed` is False."""
    record = item.config.stash[SPLATS_KEY]
    base = {"test": item.nodeid, "kernel": release, "phase": phase}
    for splat in report.failures:
        record.append({**base, "kind": splat.kind, "fingerprint": splat.fingerprint, "allowed": False})
    for entry in report.allowed if with_allowed else ():
        record.append({**base, "kind": entry.splat.kind, "fingerprint": entry.splat.fingerprint,
                       "allowed": True, "reason": entry.reason})  # fmt: skip


def _check(item: pytest.Item, window: Window, phase: str) -> KernelVerdict | None:
    """Check the test's window; None once the window is closed (its guest was thrown away)."""
    if window.closed:
        return None
    try:
        verdict = check_window(window, _policy(item.config))
    except KernelCheckError as e:
        window.closed = True
        window.session.recycle(f"kernel checks failed after the {phase} of {item.nodeid}")
        raise KernelCheckError(f"kernel check error after the {phase} of {item.nodeid}: {e}") from e
    release = window.session.kernel.release
    _record_splats(item, release, "guest died" if verdict.died else phase, verdict.splats,
                   with_allowed=verdict.died is None)  # fmt: skip
    if verdict.guest_suspect:
        window.closed = True
        window.session.recycle(f"{phase} of {item.nodeid}: {verdict.message().splitlines()[0]}")
    return verdict


_OUTCOME_EXCEPTIONS = (pytest.skip.Exception, pytest.xfail.Exception)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, None, None]:
    window = item.stash.get(_WINDOW_KEY, None)
    try:
        result = yield
    except BaseException as e:
        if window is not None:
            _after_raising_call(item, window, e)
        raise
    if window is not None:
        verdict = _check(item, window, "call")
        if verdict is not None and not verdict.ok:
            _fail_or_defer(item, window, verdict)
    return result


def _after_raising_call(item: pytest.Item, window: Window, e: BaseException) -> None:
    """The test raised: a skip or xfail over a kernel splat becomes a failure; any other
    exception stays the reported failure, with the kernel's verdict beside it."""
    try:
        verdict = _check(item, window, "call")
    except KernelCheckError as err:
        if isinstance(e, _OUTCOME_EXCEPTIONS) or item.get_closest_marker("xfail") is not None:
            window.kernel_failed.add("call")
            pytest.fail(str(err), pytrace=False)
        item.add_report_section("call", "kernel checks", str(err))
        return
    if verdict is None or verdict.ok:
        return
    if isinstance(e, _OUTCOME_EXCEPTIONS):
        _fail_or_defer(item, window, verdict, because=f"the test raised {type(e).__name__}: {e}")
    if item.get_closest_marker("xfail") is not None:  # an expected failure is no excuse for a splat
        _fail_or_defer(item, window, verdict, because=f"the xfail-marked test raised {type(e).__name__}")
    item.add_report_section("call", "kernel checks", verdict.message())


def _fail_or_defer(item: pytest.Item, window: Window, verdict: KernelVerdict, because: str = "") -> None:
    """Fail the call over the kernel's verdict. An xfail marker does not make it expected:
    the report hook turns an xfail caused by a kernel failure back into a failure."""
    window.kernel_failed.add("call")
    message = verdict.message() + (f"\n({because}; a kernel splat is never skipped)" if because else "")
    pytest.fail(message, pytrace=False)


def reproduce_command(item: pytest.Item, kernel_spec: str | None) -> str:
    """One command that reruns this test on the same kernel, engine and parameters."""
    cfg = item.config.stash[CONFIG_KEY]
    argv = ["python", "-m", "pytest", item.nodeid]
    if kernel_spec:
        argv += ["--kernel", kernel_spec]
    argv += ["--engine", cfg.engine, "--accel", cfg.accel]
    for p in cfg.module_params:
        argv += ["--module-param", p]
    if cfg.module_dir.resolve() != DEFAULT_MODULE_DIR.resolve():
        argv += ["--module-dir", str(cfg.module_dir)]
    import shlex

    return shlex.join(argv)


def _artifact_dir(item: pytest.Item, release: str) -> Path:
    safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in item.nodeid)[-150:]
    return item.config.stash[RUN_ROOT_KEY] / release / "tests" / safe


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report: pytest.TestReport = yield
    if report.failed:  # JUnit takes the properties of the teardown report, which copies the item's
        kind = ("knh_failure", "infra" if _infra_failure(call) else "test")
        item.user_properties.append(kind)
        if report.when == "teardown":
            report.user_properties.append(kind)
    window = item.stash.get(_WINDOW_KEY, None)
    if window is not None and report.when in window.kernel_failed and hasattr(report, "wasxfail"):
        report.outcome = "failed"  # xfail covers the test's own failure, never the kernel's
        del report.wasxfail
    if _uses_guest(item):
        outcomes = item.config.stash[OUTCOMES_KEY].setdefault(item.nodeid, {})
        if report.when == "call" or report.failed or report.skipped:
            outcomes[report.when] = report.outcome
    if report.skipped and item.get_closest_marker("kernel") is not None:
        _record_skip(item, report)
    if not _uses_guest(item) or not report.failed:
        return report
    session = window.session if window is not None else None
    kernel_spec = session.spec_for_reproduction if session else None
    lines = []
    try:
        if window is not None:
            lines += _collect_artifacts(item, window)
    except Exception as e:  # never let evidence gathering hide the test's own failure
        lines.append(f"(collecting artifacts failed: {type(e).__name__}: {e})")
    lines.append("reproduce: " + reproduce_command(item, kernel_spec))
    report.sections.append(("knetlink-harness", "\n".join(lines)))
    return report


def _collect_artifacts(item: pytest.Item, window: Window) -> list[str]:
    """Write this test's kernel log window (and, for a dead guest, its kernel console
    since the test began) next to the run's logs; return the report lines."""
    directory = _artifact_dir(item, window.session.kernel.release)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "kernel-window.log").write_text("".join(ln.raw + "\n" for ln in window.lines))
    lines = []
    guest = window.guest
    if not guest.alive:
        (directory / "kernel-console.log").write_text(console_since(guest, window.console_offset))
        lines.append(f"the guest died; its kernel console since the test began: {directory / 'kernel-console.log'}")
    lines.append(f"console transcript: {guest.paths.transcript}")
    lines.append(f"guest kernel console: {guest.paths.kernel_log}")
    lines.append(f"kernel log of this test: {directory / 'kernel-window.log'}")
    return lines


def _infra_failure(call: pytest.CallInfo[None]) -> bool:
    """True when the failure means "nothing was tested" (by the error's type, never its words)."""
    return call.excinfo is not None and bool(getattr(call.excinfo.value, "infra", False))


def _kernel_label(item: pytest.Item) -> str:
    callspec = getattr(item, "callspec", None)
    param = callspec.params.get("knh_kernel_session") if callspec is not None else None
    return param.label if isinstance(param, _KernelParam) else "(no kernel)"


def _record_skip(item: pytest.Item, report: pytest.TestReport) -> None:
    """Remember a skipped kernel test and its reason: the summary lists them per kernel."""
    longrepr = report.longrepr
    reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
    if hasattr(report, "wasxfail"):
        reason = f"xfail: {report.wasxfail}" if report.wasxfail else "xfail"
    item.config.stash[SKIPS_KEY].append({"test": item.nodeid, "kernel": _kernel_label(item),
                                         "reason": reason.removeprefix("Skipped: ")})  # fmt: skip


def summary_dict(config: pytest.Config) -> dict[str, Any]:
    """The run's JSON summary: kernels, accelerators, boots, test outcomes and splats."""
    sessions = config.stash.get(SESSIONS_KEY, [])
    tests: dict[str, str] = {}
    for nodeid, phases in config.stash.get(OUTCOMES_KEY, {}).items():
        if any(v == "failed" for v in phases.values()):
            tests[nodeid] = "error" if phases.get("call") in (None, "passed") else "failed"
        elif "skipped" in phases.values():
            tests[nodeid] = "skipped"
        else:
            tests[nodeid] = phases.get("call", "unknown")
    counts: dict[str, int] = {}
    for outcome in tests.values():
        counts[outcome] = counts.get(outcome, 0) + 1
    cfg = config.stash[CONFIG_KEY]
    return {
        "engine": cfg.engine,
        "kernels": [
            {
                "release": s.kernel.release,
                "accel": s._accel.accel if s._accel else None,
                "accel_reason": s._accel.reason if s._accel else None,
                "boots": s.stats.boots,
                "boot_retries": s.stats.retries,
                "boot_times_s": [round(t, 3) for t in s.stats.boot_times_s],
            }
            for s in sessions
        ],
        "tests": {"total": len(tests), **counts},
        "outcomes": tests,
        "splats": config.stash.get(SPLATS_KEY, []),
        "crashes": [{k: v for k, v in c.items() if k != "message"} for c in config.stash.get(CRASHES_KEY, [])],
        "skipped": config.stash.get(SKIPS_KEY, []),
    }


def _anything_recorded(config: pytest.Config) -> bool:
    return bool(config.stash.get(SESSIONS_KEY, []) or config.stash.get(SPLATS_KEY, [])
                or config.stash.get(CRASHES_KEY, []) or config.stash.get(SKIPS_KEY, []))  # fmt: skip


def pytest_sessionfinish(session: pytest.Session) -> None:
    config = session.config
    if not _anything_recorded(config):
        return
    if session.exitstatus == pytest.ExitCode.OK and _unreported_breakage(config):
        # Last line of defence: a run whose summary lists a splat or a crash is never green.
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
    import json

    run_root = config.stash[RUN_ROOT_KEY]
    run_root.mkdir(parents=True, exist_ok=True)
    (run_root / "summary.json").write_text(json.dumps(summary_dict(config), indent=2) + "\n")


def _unreported_breakage(config: pytest.Config) -> bool:
    splats = [s for s in config.stash.get(SPLATS_KEY, []) if not s["allowed"]]
    return bool(splats or config.stash.get(CRASHES_KEY, []))


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    sessions = config.stash.get(SESSIONS_KEY, [])
    if not _anything_recorded(config):
        return
    terminalreporter.section("knetlink-harness")
    for s in sessions:
        accel = s._accel.notice() if s._accel else "accelerator not chosen"
        times = ", ".join(f"{t:.1f}s" for t in s.stats.boot_times_s) or "none"
        terminalreporter.write_line(
            f"{s.kernel.release}: boots {s.stats.boots} (boot times {times}), boot retries {s.stats.retries}; {accel}"
        )
    splats = [s for s in config.stash.get(SPLATS_KEY, []) if not s["allowed"]]
    terminalreporter.write_line(
        f"kernel splats: {len(splats)}" + "".join(f"\n  {s['test']}: {s['fingerprint']}" for s in splats)
    )
    for crash in config.stash.get(CRASHES_KEY, []):
        terminalreporter.write_line(
            f"KERNEL BROKE {crash['phase']} on {crash['kernel']}, after {crash['previous_test']} "
            f"(reported on {crash['test']}):\n{crash['message']}", red=True
        )
    _write_skips(terminalreporter, config.stash.get(SKIPS_KEY, []))
    terminalreporter.write_line(f"results: {config.stash[RUN_ROOT_KEY]} (summary.json)")


def _write_skips(terminalreporter: Any, skips: list[dict[str, str]]) -> None:
    """One block: every skipped kernel test with its reason, grouped by kernel."""
    if not skips:
        return
    terminalreporter.write_line(f"skipped kernel tests: {len(skips)}")
    for kernel in dict.fromkeys(s["kernel"] for s in skips):
        terminalreporter.write_line(f"  {kernel}:")
        for s in skips:
            if s["kernel"] == kernel:
                terminalreporter.write_line(f"    {s['test']}: {s['reason']}")
