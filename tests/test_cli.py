"""CLI wiring with the session replaced by a fake (no guest is booted)."""

from typing import Any

import pytest

from harness import cli
from harness.config import HarnessConfig
from harness.console import CommandResult
from harness.errors import BuildError, LostGuestError


class FakeGuest:
    def __init__(self, outcome: Any) -> None:
        self.outcome = outcome
        self.commands: list[Any] = []

    def run(self, argv: Any, timeout: float | None = None) -> CommandResult:
        self.commands.append(argv)
        if isinstance(self.outcome, Exception):
            raise self.outcome
        return CommandResult(str(argv), self.outcome, "out\n", 0.0)


class FakeSession:
    def __init__(self, outcome: Any, build_error: Exception | None = None) -> None:
        self.config = HarnessConfig()
        self._guest = FakeGuest(outcome)
        self.build_error = build_error
        self.closed = False
        self.booted = False

    def build(self) -> Any:
        if self.build_error:
            raise self.build_error
        raise AssertionError("--no-module runs must not build")

    def ops(self) -> Any:
        self.booted = True
        return object()

    def guest(self) -> FakeGuest:
        return self._guest

    def close(self) -> None:
        self.closed = True


def run(monkeypatch: pytest.MonkeyPatch, session: Any, argv: list[str]) -> int:
    monkeypatch.setattr(cli, "open_session", lambda cfg, out: session)
    return cli.main(argv)


def test_exec_returns_the_guest_commands_status(monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    s = FakeSession(7)
    assert run(monkeypatch, s, ["exec", "--no-module", "-q", "--", "sh", "-c", "exit 7"]) == 7
    assert s._guest.commands == [["sh", "-c", "exit 7"]] and s.closed
    assert capsys.readouterr().out == "out\n"


def test_exec_guest_death_is_255(monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    s = FakeSession(LostGuestError("guest console closed"))
    assert run(monkeypatch, s, ["exec", "--no-module", "-q", "--", "true"]) == cli.EXIT_GUEST_DIED
    assert "guest console closed" in capsys.readouterr().err and s.closed


def test_exec_build_failure_is_254_and_boots_nothing(monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    s = FakeSession(0, build_error=BuildError("module build failed for 6.1", "knetlink.c:1: error: x"))
    assert run(monkeypatch, s, ["exec", "-q", "--", "true"]) == cli.EXIT_HARNESS
    assert "module build failed" in capsys.readouterr().err
    assert not s.booted and s.closed


def test_exec_unknown_kernel_is_254(capsys: Any) -> None:
    assert cli.main(["exec", "--kernel", "0.0.0-none", "-q", "--", "true"]) == cli.EXIT_HARNESS
    assert "not installed" in capsys.readouterr().err


def test_exec_without_command_is_a_usage_error(capsys: Any) -> None:
    assert cli.main(["exec", "-q"]) == 2
    assert "exec needs a command" in capsys.readouterr().err


def test_open_session_rejects_two_kernels() -> None:
    cfg = HarnessConfig(kernels=("a", "b"))
    with pytest.raises(Exception, match="one --kernel"):
        cli.open_session(cfg, cli.Output(True))

