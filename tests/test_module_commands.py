"""The combined guest commands of GuestKernel, run by bash on the host against stand-ins of the guest's files:
insmod with the module list after it (insmod_listing), and the unload of every module loaded since a module
list (restore_modules), which picks the modules in the shell and unloads them with one rmmod. /proc/modules,
/dev/kmsg and the module tools are files and scripts of the test's directory."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from harness.errors import GuestReadError
from harness.guest.console import check_command
from harness.guest.kernel_ops import GuestKernel
from harness.guest.vm import CommandResult

TOOL = """#!/bin/sh
echo "$(basename "$0") $*" >> {calls}
exit {status}
"""


class ShellGuest:
    """Runs GuestKernel's commands with bash, its guest paths replaced by the test's files; the boot id
    is a guest's (the commands never reach the host's kernel)."""

    def __init__(self, directory: Path, modules: list[str]) -> None:
        self.directory = directory
        self.modules = directory / "modules"
        self.kmsg = directory / "kmsg"
        self.calls = directory / "calls"
        self.modules.write_text("".join(f"{name} 16384 0 - Live 0x0000000000000000\n" for name in modules))
        self.kmsg.touch()
        self.alive = True

    def tool(self, name: str, status: int = 0) -> Path:
        path = self.directory / name
        path.write_text(TOOL.format(calls=self.calls, status=status))
        path.chmod(0o755)
        return path

    def run(self, command: object, *, timeout: float | None = None, check: bool = False) -> CommandResult:
        text = " ".join(map(str, command)) if isinstance(command, list) else str(command)
        check_command(text)  # what the console refuses (a command too long for the tty, a NUL)
        if "boot_id" in text:
            return CommandResult(text, 0, "11111111-2222-3333-4444-555555555555\n", 0.0)
        script = text.replace("/proc/modules", str(self.modules)).replace("/dev/kmsg", str(self.kmsg))
        proc = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=False)
        assert proc.returncode == 0 or not check, (text, proc.stdout, proc.stderr)
        return CommandResult(text, proc.returncode, proc.stdout + proc.stderr, 0.0)

    def called(self) -> list[str]:
        return self.calls.read_text().splitlines() if self.calls.exists() else []


@pytest.fixture
def shell_guest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ShellGuest:
    g = ShellGuest(tmp_path, ["knetlink", "crc7", "overlay", "9p"])
    monkeypatch.setattr("harness.guest.kernel_ops.module_tool", lambda name, root=Path("/"): (str(g.tool(name)),))
    return g


def test_restore_unloads_what_is_not_in_the_list_before_with_one_rmmod_newest_first(shell_guest: ShellGuest) -> None:
    guest = shell_guest
    ops = GuestKernel(guest, guest.directory)  # type: ignore[arg-type]
    ops.restore_modules(("overlay", "9p"))
    assert guest.called() == ["rmmod knetlink crc7"]
    assert ops.unloads == 1
    assert guest.kmsg.read_text().startswith("knh-mark:")  # the rmmod's window begins at a mark


def test_restore_with_nothing_new_runs_no_rmmod(shell_guest: ShellGuest) -> None:
    guest = shell_guest
    ops = GuestKernel(guest, guest.directory)  # type: ignore[arg-type]
    ops.restore_modules(("knetlink", "crc7", "overlay", "9p", "gone_since"))
    assert guest.called() == [] and ops.unloads == 0 and guest.kmsg.read_text() == ""


def test_restore_names_that_contain_others_are_told_apart(shell_guest: ShellGuest) -> None:
    """'crc7_x' in the list before does not keep a new 'crc7', nor '9pnet' a new '9p'."""
    guest = shell_guest
    guest.modules.write_text("crc7 1 0 - Live 0x0\n9p 1 0 - Live 0x0\ncrc7_x 1 0 - Live 0x0\n9pnet 1 0 - Live 0x0\n")
    ops = GuestKernel(guest, guest.directory)  # type: ignore[arg-type]
    ops.restore_modules(("crc7_x", "9pnet"))
    assert guest.called() == ["rmmod crc7 9p"]


def test_insmod_listing_gives_the_name_and_the_module_list_after(shell_guest: ShellGuest, tmp_path: Path) -> None:
    guest = shell_guest
    ops = GuestKernel(guest, guest.directory)  # type: ignore[arg-type]
    name, after = ops.insmod_listing(tmp_path / "knetlink.ko", {"proto": "31"})
    assert (name, after) == ("knetlink", ("knetlink", "crc7", "overlay", "9p"))
    assert guest.called() == [f"insmod {tmp_path / 'knetlink.ko'} proto=31"]


def test_a_listing_missing_from_the_output_is_a_read_error(shell_guest: ShellGuest,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    guest = shell_guest
    ops = GuestKernel(guest, guest.directory)  # type: ignore[arg-type]
    real_run = guest.run
    monkeypatch.setattr(guest, "run", lambda command, **kw: real_run(str(command).replace("knh-modules:", "x"), **kw))
    with pytest.raises(GuestReadError, match="no list of the modules to unload"):
        ops.restore_modules(("overlay",))


def test_restore_with_a_list_too_long_for_the_console_picks_on_the_host(shell_guest: ShellGuest) -> None:
    """250 modules before (the command would pass the console's MAX_COMMAND_CHARS): the host reads the module
    list and unloads what is new with one rmmod, as before the combined command."""
    guest = shell_guest
    before = tuple(f"module_number_{i:04d}" for i in range(250))
    guest.modules.write_text("".join(f"{n} 1 0 - Live 0x0\n" for n in ("knetlink", "crc7", *before)))
    ops = GuestKernel(guest, guest.directory)  # type: ignore[arg-type]
    ops.restore_modules(before)
    assert guest.called() == ["rmmod knetlink crc7"] and ops.unloads == 1
