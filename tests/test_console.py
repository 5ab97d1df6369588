"""The console protocol against a real local shell (guest_scripts/guest-shell, no VM)."""

import signal
import time
from collections.abc import Iterator

import pexpect
import pytest

from harness import errors
from harness.config import GUEST_SCRIPTS
from harness.errors import CommandTimeout, HarnessError, LostGuestError
from harness.guest.console import Console, check_command, normalize_output


@pytest.fixture
def console() -> Iterator[Console]:
    # Ctrl-C must act as in a guest, whose shell init starts: a test run started in the background
    # (`cmd &` in a script, as CI may) ignores SIGINT, and bash cannot undo an inherited SIG_IGN.
    child = pexpect.spawn(
        str(GUEST_SCRIPTS / "guest-shell"), encoding="utf-8", echo=False, env={"PATH": "/usr/bin:/bin"},
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    child.delaybeforesend = None
    c = Console(child)
    c.wait_ready(10)
    c.install_prompt(10)
    yield c
    child.close(force=True)


def test_status_and_output(console: Console) -> None:
    r = console.run("echo hello; echo world", 5)
    assert (r.status, r.output) == (0, "hello\nworld\n")
    assert console.run("exit_with() { return $1; }; exit_with 7", 5).status == 7


def test_output_without_trailing_newline(console: Console) -> None:
    assert console.run("printf abc", 5).output == "abc"


def test_fake_prompt_in_output_does_not_end_command(console: Console) -> None:
    r = console.run("echo '__KNH_0000000000000000:0:# '; echo after", 5)
    assert r.output.endswith("after\n") and r.status == 0


def test_timeout_interrupts_and_keeps_shell(console: Console) -> None:
    with pytest.raises(CommandTimeout, match="interrupted; the guest is usable"):
        console.run("sleep 30", 0.5)
    assert console.run("echo alive", 5).output == "alive\n"


def test_timeout_sends_ctrl_c_again_to_a_program_that_survives_the_first(console: Console) -> None:
    survivor = "bash -c 'trap \"trap - INT\" INT; while :; do sleep 0.1; done'"
    with pytest.raises(CommandTimeout, match="interrupted; the guest is usable"):
        console.run(survivor, 0.5)
    assert console.run("echo alive", 5).output == "alive\n"


def test_ctrl_c_at_the_prompt_leaves_no_stale_prompt_for_the_next_command(console: Console) -> None:
    console.child.send("\x03")  # one more prompt in the stream, as a late Ctrl-C makes
    time.sleep(0.3)  # the shell prints it before the next Ctrl-C (two at once would be one signal)
    assert console.interrupt()
    assert console.run("echo one", 5).output == "one\n"
    assert console.run("echo two; exit_with() { return $1; }; exit_with 3", 5).status == 3


def test_incomplete_input_is_an_error(console: Console) -> None:
    with pytest.raises(HarnessError, match="incomplete shell input") as info:
        console.run("echo 'unbalanced", 5)
    _assert_caller_bug(info.value)
    assert console.run("echo ok", 5).output == "ok\n"


def test_shell_exit_is_lost_guest(console: Console) -> None:
    with pytest.raises(LostGuestError):
        console.run("exit 3", 5)


def _assert_caller_bug(err: HarnessError) -> None:
    """A command the console cannot carry is a bug of the code that wrote it: its own class, not infra."""
    cls = getattr(errors, "InvalidGuestCommand", None)
    assert isinstance(cls, type) and isinstance(err, cls), f"want InvalidGuestCommand, got {type(err).__name__}"
    assert err.infra is False


def test_command_checks() -> None:
    with pytest.raises(HarnessError, match="control character") as info:
        check_command("echo \x01x")
    _assert_caller_bug(info.value)
    with pytest.raises(HarnessError, match="at most") as info:
        check_command("x" * 5000)
    _assert_caller_bug(info.value)
    assert normalize_output("a\r\r\nb\r\n") == "a\nb\n"
