"""The kernel watch in pytest: every guest test fails when the kernel broke, whenever it broke.

Before a guest test: the kernel is checked since the previous test on that guest
(a crash in between fails this test at setup, naming the previous one), then the
test's window opens. After its call and after its teardown (an unload gets the
settle first, and on a kmemleak kernel the leak scans): a splat, new taint, a leak
through the unloaded module or a dead guest fails the test; a skip or xfail never
covers one. A test that asks only for knh_kernel_session is host-only unless it uses
the session's guest (loads a module through it, say): then its teardown checks the
kernel since the test began, or since the boot of a guest the test booted. After the
last test, every watched guest is checked before it is shut down. The checks
themselves are harness.kernel_watch.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator
from dataclasses import replace

import pytest

from harness.errors import BootError, HarnessError, KernelCheckError, LostGuestError
from harness.kernel_watch import (
    Cursor,
    KernelVerdict,
    Window,
    check_after_last,
    check_window,
    console_offset,
    cursor_after,
    cursor_current,
    dead_since,
    judge_death,
    open_window,
    window_after_use,
    with_decoded,
)
from harness.pytest_plugin.runstate import fail_on_harness_error, run_state, uses_guest
from harness.session import KernelSession

WINDOW_KEY = pytest.StashKey[Window]()
SESSION_USE_KEY = pytest.StashKey[tuple[KernelSession, "int | None"]]()


@pytest.fixture(autouse=True)
def _knh_kernel_watch(request: pytest.FixtureRequest) -> Iterator[None]:
    """For guest tests: check the kernel since the previous test, open a window (log position,
    taint, console offset) before the test, check it after the call and after the teardown."""
    item = request.node
    if not uses_guest(item):
        if "knh_kernel_session" not in getattr(item, "fixturenames", ()):
            yield
            return
        yield from _watch_session_use(item, request.getfixturevalue("knh_kernel_session"))
        return
    session: KernelSession = request.getfixturevalue("knh_kernel_session")
    window = _open_window(item, session)
    item.stash[WINDOW_KEY] = window
    yield
    # Teardown: fixtures of the test (rmmod among them) are gone; check what they left.
    _close_window(item, window)


def _watch_session_use(item: pytest.Item, session: KernelSession) -> Iterator[None]:
    """A test with the session and no guest fixture: nothing is asked of the guest before it; when it used
    the session's guest (the session counts the requests), its teardown checks the kernel from where the
    guest stood when the test began (the cursor of the test before), or from the boot of the guest it booted.
    A test that did not use the guest is host-only: a crash meanwhile is the next check's to report."""
    state = run_state(item.config)
    cursor = state.cursors.get(session)
    start = cursor if cursor_current(session, cursor) else None
    guest_kernel = getattr(session, "current_guest_kernel", None)
    unloads = guest_kernel.unloads if guest_kernel is not None else 0
    requests = getattr(session, "guest_requests", None)
    item.stash[SESSION_USE_KEY] = (session, requests)
    if start is None and guest_kernel is not None and guest_kernel.guest.alive:
        # a guest without a cursor (the test before it failed its checks and kept it): where it stands now, so that
        # what an earlier test left is not this test's
        try:
            mark, taint = guest_kernel.mark_and_taint()
            start = Cursor(guest_kernel.guest, mark, taint, console_offset(guest_kernel.guest), item.nodeid)
        except HarnessError:
            pass  # the guest broke: its use in the test gets the verdict then
    yield
    if not _used_the_guest(item):
        return
    state.cursors.pop(session, None)
    window = window_after_use(session, start, unloads)
    if window is not None:
        _close_window(item, window)


def _used_the_guest(item: pytest.Item) -> KernelSession | None:
    """The session whose guest the session-only test `item` used (asked for), None for any other test."""
    session, requests = item.stash.get(SESSION_USE_KEY, (None, None))
    if session is None or requests is None or getattr(session, "guest_requests", None) == requests:
        return None
    return session


def _open_window(item: pytest.Item, session: KernelSession) -> Window:
    """Open the test's window; fail its setup if the kernel broke since the previous test."""
    state = run_state(item.config)
    policy = state.policy
    cursor = state.cursors.pop(session, None)
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
        fail_on_harness_error(e)
    except HarnessError as e:
        pytest.fail(f"kernel check error: the kernel checks could not start for {item.nodeid}: {e}", pytrace=False)
    if cursor is not None and between is not None and not between.ok:
        if not between.guest_suspect and window.mark is not None:  # keep watching from here: nothing is lost
            state.cursors[session] = replace(cursor, mark=window.mark, taint=window.taint,
                                                              console_offset=window.console_offset)  # fmt: skip
        _fail_between(item, session, cursor, between)
    return window


def _lost(e: LostGuestError) -> KernelVerdict:
    return judge_death(str(e), "QEMU exited", ())


def _fail_between(item: pytest.Item, session: KernelSession, cursor: Cursor, verdict: KernelVerdict) -> None:
    """The kernel broke after `cursor.test` passed its checks: fail this test's setup, naming it."""
    verdict = with_decoded(verdict, session)
    what = "died" if verdict.died else "was not clean"
    headline = (f"the guest kernel {what} between tests: after {cursor.test} passed its checks and before "
                f"{item.nodeid} began (guest {cursor.guest.launch.name}, {session.kernel.release})")  # fmt: skip
    state = run_state(item.config)
    state.record_crash(session, item.nodeid, "between tests", cursor.test, verdict)
    state.record_splats(item.nodeid, session.kernel.release, "between tests", verdict.splats, with_allowed=False,
                        frames=verdict.frames)  # fmt: skip
    if verdict.guest_suspect:
        session.recycle(headline)
    pytest.fail(f"{headline}\n{verdict.message()}", pytrace=False)


def _close_window(item: pytest.Item, window: Window) -> None:
    """The teardown check: what the test's fixtures left (an unload gets the settle first)."""
    verdict = _check(item, window, "teardown")
    if verdict is not None and verdict.ok:
        cursor = cursor_after(window, item.nodeid)
        if cursor is not None:
            run_state(item.config).cursors[window.session] = cursor
    if verdict is None or verdict.ok:
        return
    message = verdict.message()
    if _failed_before_teardown(item):  # one failure per test: the rest goes into its report
        item.add_report_section("teardown", "kernel checks", message)
    else:
        window.kernel_failed.add("teardown")
        pytest.fail(message, pytrace=False)


def _failed_before_teardown(item: pytest.Item) -> bool:
    phases = run_state(item.config).outcomes.get(item.nodeid, {})
    return "failed" in (phases.get("setup"), phases.get("call"))


def _check(item: pytest.Item, window: Window, phase: str) -> KernelVerdict | None:
    """Check the test's window; None once the window is closed (its guest was thrown away)."""
    if window.closed:
        return None
    try:
        verdict = check_window(window, run_state(item.config).policy)
    except KernelCheckError as e:
        _discard(window, f"its kernel checks could not run after the {phase}", item)
        raise type(e)(f"kernel check error after the {phase} of {item.nodeid}: {e}") from e
    release = window.session.kernel.release
    state = run_state(item.config)
    state.record_splats(item.nodeid, release, "guest died" if verdict.died else phase,
                        verdict.splats, with_allowed=verdict.died is None, frames=verdict.frames)  # fmt: skip
    if verdict.leaks is not None:
        state.record_leaks(item.nodeid, release, phase, verdict.leaks)
        if verdict.leaks.kernel or verdict.leaks.allowed:  # reported, never failing: the test's report says so
            item.add_report_section(phase, "kmemleak", verdict.leaks.kernel_message())
    if verdict.guest_suspect:
        _discard(window, f"{verdict.suspect_reason()} in the {phase}", item, died=verdict.died is not None)
    return verdict


def _discard(window: Window, reason: str, item: pytest.Item, *, died: bool = False) -> None:
    """Close the window and have the session boot a fresh guest for the next test; a guest that had
    not died is remembered as discarded by the harness (the test's report says so)."""
    window.closed = True
    if not died:
        window.discarded = reason
    window.session.recycle(f"{reason} of {item.nodeid}")


_OUTCOME_EXCEPTIONS = (pytest.skip.Exception, pytest.xfail.Exception)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, None, None]:
    window = item.stash.get(WINDOW_KEY, None)
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


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> Generator[None, None, None]:
    """After the run's last test, check every guest still watched before teardown shuts it down
    (also when a conftest overrides knh_kernel_session and its finalizer is not ours)."""
    failures: list[str | None] = []
    # A session-only test that used its guest is checked by its own teardown, from where the guest stood when it
    # began: that session's after-the-last check comes after it, from where that check ended.
    used = _used_the_guest(item) if nextitem is None else None
    if nextitem is None:
        watched: list[KernelSession] = [s for s in run_state(item.config).cursors if s is not used]
        failures = [check_after_last_test(item.config, session) for session in watched]
    result = yield
    if used is not None:
        failures.append(check_after_last_test(item.config, used))
    if any(failures):
        pytest.fail("\n".join(f for f in failures if f), pytrace=False)
    return result


def check_after_last_test(config: pytest.Config, session: KernelSession) -> str | None:
    """Before the guest is shut down: a crash after the last test fails the run, never ends it green."""
    state = run_state(config)
    cursor = state.cursors.pop(session, None)
    if cursor is None or not cursor_current(session, cursor):
        return None
    verdict = check_after_last(session, cursor, state.policy)
    if verdict.ok:
        return None
    what = "died" if verdict.died else "was not clean"
    headline = (f"the guest kernel {what} after the last test on it: {cursor.test} passed its checks, and "
                f"the kernel broke before the guest was shut down (guest {cursor.guest.launch.name}, "
                f"{session.kernel.release})")  # fmt: skip
    state.record_crash(session, "(end of run)", "after the last test", cursor.test, verdict)
    state.record_splats(cursor.test, session.kernel.release, "after the last test", verdict.splats,
                        with_allowed=False, frames=verdict.frames)  # fmt: skip
    return f"{headline}\n{verdict.message()}"
