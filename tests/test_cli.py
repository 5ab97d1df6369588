"""CLI wiring with the session replaced by a fake (no guest is booted)."""

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from harness.cli import commands as cli
from harness.cli.ini import project_ini
from harness.config import HarnessConfig
from harness.errors import BuildError, ConfigError, KernelBuildError, LostGuestError, ModuleCrashError
from harness.guest.console import CommandResult
from harness.guest.kernel_ops import LogMark
from harness.kernel_log.dmesg import KernelLine, parse_allowlist, parse_lines
from harness.kernel_watch import KernelVerdict, judge

WARNING_LOG = (Path(__file__).parent / "data" / "dmesg" / "warning.log").read_text()
TAINT_OE, TAINT_OE_W = 0x3000, 0x3200  # O and E: loading any out-of-tree module; W: a WARNING


class FakeGuest:
    def __init__(self, outcome: Any, events: list[str]) -> None:
        self.outcome = outcome
        self.commands: list[Any] = []
        self.events = events

    def run(self, argv: Any, timeout: float | None = None) -> CommandResult:
        self.commands.append(argv)
        self.events.append("run")
        if isinstance(self.outcome, Exception):
            raise self.outcome
        return CommandResult(str(argv), self.outcome, "out\n", 0.0)


class FakeOps:
    """GuestKernel's log and taint operations; the kernel log gains `new_log` and the
    taint becomes `taint_after` once the command has run."""

    def __init__(self, events: list[str], new_log: str, taint_after: int) -> None:
        self.events = events
        self.new_lines = parse_lines(new_log)
        self.taint_after = taint_after

    def taint(self) -> int:
        self.events.append("taint")
        return self.taint_after if "run" in self.events else 0

    def mark(self) -> LogMark:
        self.events.append("mark")
        return LogMark("knh-mark:test:1")

    def mark_and_taint(self) -> tuple[LogMark, int]:
        return self.mark(), self.taint()

    def lines_since(self, mark: LogMark) -> list[KernelLine]:
        assert mark == LogMark("knh-mark:test:1")
        self.events.append("lines_since")
        return self.new_lines if "run" in self.events else []

    def insmod(self, ko: Path, params: Any = None) -> str:
        self.events.append(f"insmod {ko.name}")
        return ko.stem


class FakeBuild:
    def module(self) -> Path:
        return Path("/build/warn_nth.ko")


class FakeSession:
    def __init__(self, outcome: Any, build_error: Exception | None = None, *, new_log: str = "",
                 taint_after: int = 0, config: HarnessConfig | None = None, builds: bool = False) -> None:  # fmt: skip
        self.config = config or HarnessConfig()
        self.events: list[str] = []
        self._guest = FakeGuest(outcome, self.events)
        self._ops = FakeOps(self.events, new_log, taint_after)
        self.build_error = build_error
        self.builds = builds
        self.closed = False
        self.booted = False

    def decode_inputs(self) -> tuple[dict[str, Path], dict[Path, Path], Path | None]:
        return {}, {}, None

    def build(self) -> Any:
        if self.build_error:
            raise self.build_error
        if self.builds:
            return FakeBuild()
        raise AssertionError("--no-module runs must not build")

    def guest_kernel(self) -> Any:
        self.booted = True
        return self._ops

    def load(self, params: Any = None, source: Any = None) -> Any:
        ko = self.build().module()
        name = self.guest_kernel().insmod(ko, params)
        return SimpleNamespace(name=name, path=ko, params=params, loaded=(name,))

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
    with pytest.raises(ConfigError, match=r"one --kernel, not 2 \(a b, the settings\)"):
        cli.open_session(cfg, cli.Output(True))


# -- exec judges the kernel like a test does --------------------------------------------


def verdict(log: str = "", taint_after: int = TAINT_OE, allowlist: str = "") -> KernelVerdict:
    return judge(parse_lines(log), 0, taint_after, parse_allowlist(allowlist), "OE")


@pytest.mark.parametrize("status", [0, 1, 3, 137])
def test_exec_status_is_the_commands_on_a_clean_kernel(status: int) -> None:
    assert cli.exec_status(status, verdict(), ignore_splats=False) == status


@pytest.mark.parametrize("status", [0, 3])
def test_exec_status_is_253_on_a_splat(status: int) -> None:
    assert cli.exec_status(status, verdict(WARNING_LOG, TAINT_OE_W), ignore_splats=False) == 253


def test_exec_status_is_253_on_new_taint_without_splat() -> None:
    assert cli.exec_status(0, verdict(taint_after=TAINT_OE_W), ignore_splats=False) == cli.EXIT_KERNEL_SPLAT


def test_exec_status_ignore_splats_keeps_the_commands() -> None:
    assert cli.exec_status(3, verdict(WARNING_LOG, TAINT_OE_W), ignore_splats=True) == 3


def test_exec_status_allowlisted_splat_keeps_the_commands() -> None:
    v = verdict(WARNING_LOG, TAINT_OE, allowlist="^WARNING: .* format_decode ## vsprintf %pZ, known")
    assert cli.exec_status(0, v, ignore_splats=False) == 0
    assert "allowed warning" in cli.kernel_report(v) and "vsprintf %pZ, known" in cli.kernel_report(v)


def test_kernel_report_has_heading_first_lines_fingerprint_and_taint() -> None:
    v = verdict(WARNING_LOG, TAINT_OE_W)
    report = cli.kernel_report(v)
    assert report.startswith("kernel splat(s) during the command (1):\nwarning at log line 5 [warning:format_decode:")
    assert "  WARNING: CPU: 0 PID: 123 at lib/vsprintf.c:2714 format_decode+0x4a1/0x530" in report
    assert "unexpected W (bit 9): kernel issued warning" in report
    assert cli.kernel_report(verdict()) == ""


def test_exec_exit_codes_are_distinct_and_above_git_bisects_range() -> None:
    assert (cli.EXIT_KERNEL_SPLAT, cli.EXIT_HARNESS, cli.EXIT_GUEST_DIED) == (253, 254, 255)


def test_exec_warning_during_the_command_is_253_and_printed(monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    s = FakeSession(0, new_log=WARNING_LOG, taint_after=TAINT_OE_W)
    assert run(monkeypatch, s, ["exec", "--no-module", "-q", "--", "true"]) == cli.EXIT_KERNEL_SPLAT
    out, err = capsys.readouterr()
    assert out == "out\n"
    assert "WARNING: CPU: 0 PID: 123 at lib/vsprintf.c:2714 format_decode" in err
    assert "[warning:format_decode:" in err and "unexpected W (bit 9)" in err
    assert "exit status 253 (kernel splat or taint); the command's own status was 0" in err


def test_exec_ignore_splats_prints_the_splat_and_keeps_the_status(monkeypatch: pytest.MonkeyPatch,
                                                                  capsys: Any) -> None:  # fmt: skip
    s = FakeSession(5, new_log=WARNING_LOG, taint_after=TAINT_OE_W)
    assert run(monkeypatch, s, ["exec", "--no-module", "-q", "--ignore-splats", "--", "false"]) == 5
    err = capsys.readouterr().err
    assert "WARNING: CPU: 0" in err and "--ignore-splats: exiting with the command's own status 5" in err


def test_exec_clean_kernel_prints_nothing_on_stderr(monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    s = FakeSession(3, new_log="[    1.0] hello\n", taint_after=TAINT_OE)
    assert run(monkeypatch, s, ["exec", "--no-module", "-q", "--", "false"]) == 3
    assert capsys.readouterr().err == ""


def test_exec_window_starts_before_insmod(monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    s = FakeSession(0, builds=True, new_log="[    1.0] warn_nth: loaded\n")
    assert run(monkeypatch, s, ["exec", "-q", "--dmesg", "--", "true"]) == 0
    assert s.events == ["mark", "taint", "insmod warn_nth.ko", "run", "lines_since", "taint"]
    out = capsys.readouterr().out
    assert out == "out\n--- guest kernel log since the module load ---\n[    1.0] warn_nth: loaded\n"


def test_exec_dmesg_without_module_starts_at_the_command(monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    s = FakeSession(0, new_log="[    2.0] from the command\n")
    assert run(monkeypatch, s, ["exec", "--no-module", "-q", "--dmesg", "--", "true"]) == 0
    assert s.events == ["mark", "taint", "run", "lines_since", "taint"]
    assert capsys.readouterr().out.endswith("since the command's start ---\n[    2.0] from the command\n")


def test_exec_missing_allowlist_is_254_before_boot(monkeypatch: pytest.MonkeyPatch, capsys: Any,
                                                   tmp_path: Path) -> None:  # fmt: skip
    missing = tmp_path / "no-such-allowlist.txt"
    s = FakeSession(0, config=HarnessConfig(splat_allowlist=missing))
    assert run(monkeypatch, s, ["exec", "--no-module", "-q", "--", "true"]) == cli.EXIT_HARNESS
    err = capsys.readouterr().err
    assert str(missing) in err and "cannot read the splat allowlist" in err and "--splat-allowlist" in err
    assert not s.booted and s.closed


def test_exec_bad_allowlist_entry_names_file_and_line(monkeypatch: pytest.MonkeyPatch, capsys: Any,
                                                      tmp_path: Path) -> None:  # fmt: skip
    bad = tmp_path / "allow.txt"
    bad.write_text("# comment\nWARNING: ( ## unbalanced\n")
    s = FakeSession(0, config=HarnessConfig(splat_allowlist=bad))
    assert run(monkeypatch, s, ["exec", "--no-module", "-q", "--", "true"]) == cli.EXIT_HARNESS
    assert f"{bad}:2: " in capsys.readouterr().err and not s.booted


def test_exec_takes_allowlist_and_allowed_taint_options() -> None:
    args = cli.build_parser().parse_args(["exec", "--splat-allowlist", "a.txt", "--allowed-taint", "OEW",
                                          "--", "true"])  # fmt: skip
    cfg = cli.config_from_args(args)
    assert (cfg.splat_allowlist, cfg.allowed_taint) == (Path("a.txt"), "OEW")


class CrashingOps(FakeOps):
    def insmod(self, ko: Path, params: Any = None) -> str:
        raise ModuleCrashError(f"insmod {ko.name}: the kernel crashed (status 137, killed by signal 9)", "Killed",
                               "null-deref at log line 4 [null-deref:crashy_init:do_one_initcall]")  # fmt: skip


def test_exec_oops_while_loading_is_253_not_254(monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    """A module whose init oopses is a kernel splat (bad in a bisection), not 'could not get that far'."""
    s = FakeSession(0, builds=True)
    s._ops = CrashingOps(s.events, "", 0)
    assert run(monkeypatch, s, ["exec", "-q", "--", "true"]) == cli.EXIT_KERNEL_SPLAT
    assert "crashy_init" in capsys.readouterr().err


@pytest.mark.parametrize(("status", "git"), [(0, 0), (3, 1), (253, 1), (255, 1), (254, 125)])
def test_bisect_status_speaks_git_bisect_run(status: int, git: int) -> None:
    assert cli.bisect_status(status) == git


@pytest.mark.parametrize("setting", [("KNH_ACCEL", "warp"), ("KNH_SPLAT_ALLOWLIST", "/nonexistent/allow.txt")])
def test_exec_bisect_stops_on_a_usage_error_before_any_boot(monkeypatch: pytest.MonkeyPatch, capsys: Any,
                                                            setting: tuple[str, str]) -> None:  # fmt: skip
    """A bad setting is the same on every commit: skipping (125) would skip them all, so the bisection stops."""
    monkeypatch.setenv(*setting)
    s = FakeSession(0)
    assert run(monkeypatch, s, ["exec", "--no-module", "--bisect", "-q", "--", "true"]) == 128
    assert not s.booted and setting[1] in capsys.readouterr().err


def test_exec_bisect_flag_maps_a_splat_to_bad(monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    s = FakeSession(0, new_log=WARNING_LOG, taint_after=TAINT_OE_W)
    assert run(monkeypatch, s, ["exec", "--no-module", "--bisect", "-q", "--", "true"]) == 1


def test_build_kernel_resolves_each_named_kernel_and_boots_nothing(monkeypatch: pytest.MonkeyPatch,
                                                                    capsys: Any) -> None:  # fmt: skip
    from harness.build.kernel import Kernel

    resolved: list[str | None] = []

    def resolve(spec: str | None, **_: Any) -> Kernel:
        resolved.append(spec)
        return Kernel(f"6.1.0-{spec}", Path("/img") / str(spec), Path("/b"))

    monkeypatch.setattr(cli, "resolve_kernel_spec", resolve)
    monkeypatch.setattr(cli, "open_session", lambda cfg, out: pytest.fail("build-kernel must not open a session"))
    assert cli.main(["build-kernel", "--kernel", "debug", "--kernel", "tree", "-q"]) == 0
    assert resolved == ["debug", "tree"]
    assert capsys.readouterr().out == "6.1.0-debug /img/debug\n6.1.0-tree /img/tree\n"


def test_build_kernel_failure_is_254_with_the_cause_and_stops(monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    resolved: list[str | None] = []

    def resolve(spec: str | None, **_: Any) -> Any:
        resolved.append(spec)
        raise KernelBuildError("make failed: see /cache/debug.log")

    monkeypatch.setattr(cli, "resolve_kernel_spec", resolve)
    assert cli.main(["build-kernel", "--kernel", "debug", "--kernel", "tree"]) == cli.EXIT_HARNESS
    out = capsys.readouterr()
    assert "make failed: see /cache/debug.log" in out.err
    assert out.out == "" and resolved == ["debug"]


@pytest.mark.parametrize(("argv", "want"), [([], ["env-a", "env-b"]), (["--kernel", "opt"], ["opt"])])
def test_build_kernel_takes_the_option_over_knh_kernel(monkeypatch: pytest.MonkeyPatch, capsys: Any,
                                                       argv: list[str], want: list[str]) -> None:  # fmt: skip
    from harness.build.kernel import Kernel

    resolved: list[str | None] = []

    def resolve(spec: str | None, **_: Any) -> Kernel:
        resolved.append(spec)
        return Kernel("r", Path("/img"), Path("/b"))

    monkeypatch.setattr(cli, "resolve_kernel_spec", resolve)
    monkeypatch.setenv("KNH_KERNEL", "env-a env-b env-a")
    assert cli.main(["build-kernel", "-q", *argv]) == 0
    assert resolved == want


def test_a_broken_pyproject_is_an_error_naming_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    """pytest refuses a pyproject.toml it cannot parse; the CLI must not run on without its knh_ ini keys."""
    (tmp_path / "pyproject.toml").write_text("[tool.pytest.ini_options\nknh_engine = 'qemu'\n")
    monkeypatch.chdir(tmp_path)
    assert cli.main(["exec", "--no-module", "-q", "--", "true"]) == cli.EXIT_HARNESS
    err = capsys.readouterr().err
    assert "pyproject.toml" in err and "cannot be read" in err, err


def test_ini_keys_of_pyproject_reach_the_cli(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text("[tool.pytest.ini_options]\nknh_engine = 'qemu'\nother = 1\n")
    monkeypatch.chdir(tmp_path)
    assert project_ini() == {"knh_engine": "qemu"}


# pytest takes its ini keys from the first of these files that has its section, in the directory it starts
# from or the nearest parent with one; the CLI reads the same file.
@pytest.mark.parametrize(("name", "text"), [
    ("pytest.ini", "[pytest]\nknh_engine = qemu\nother = 1\n"),
    (".pytest.ini", "[pytest]\nknh_engine = qemu\n"),
    ("tox.ini", "[tox]\nenvlist = py\n\n[pytest]\nknh_engine = qemu\n"),
    ("setup.cfg", "[metadata]\nname = x\n\n[tool:pytest]\nknh_engine = qemu\n"),
    ("pytest.toml", "[pytest]\nknh_engine = 'qemu'\n"),
    ("pyproject.toml", "[tool.pytest]\nknh_engine = 'qemu'\n"),
])  # fmt: skip
def test_ini_keys_of_every_file_pytest_reads_reach_the_cli(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                            name: str, text: str) -> None:  # fmt: skip
    (tmp_path / name).write_text(text)
    monkeypatch.chdir(tmp_path)
    assert project_ini() == {"knh_engine": "qemu"}


def test_the_cli_takes_the_ini_file_pytest_takes(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text("[tool.pytest.ini_options]\nknh_engine = 'vng'\n")
    (tmp_path / "tox.ini").write_text("[pytest]\nknh_engine = qemu\n")
    (tmp_path / "setup.cfg").write_text("[metadata]\nname = x\n")  # no pytest section: not pytest's file
    monkeypatch.chdir(tmp_path)
    assert project_ini() == {"knh_engine": "vng"}  # pyproject.toml comes before tox.ini
    (tmp_path / "pytest.ini").write_text("[pytest]\n")  # pytest.ini is pytest's file even without keys
    assert project_ini() == {}
    (tmp_path / "pytest.ini").unlink()
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'x'\n")  # no pytest table: pytest looks on
    assert project_ini() == {"knh_engine": "qemu"}
    sub = tmp_path / "sub" / "dir"
    sub.mkdir(parents=True)
    monkeypatch.chdir(sub)  # pytest started in a subdirectory finds the nearest parent's file
    assert project_ini() == {"knh_engine": "qemu"}


def test_ini_values_reach_the_settings_as_pytest_hands_them(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text("[tool.pytest.ini_options]\nknh_boot_timeout = 300\n"
                                             "knh_kernels = ['6.1.0-a', '6.1.0-b']\n")  # fmt: skip
    monkeypatch.chdir(tmp_path)
    assert project_ini() == {"knh_boot_timeout": "300", "knh_kernels": ["6.1.0-a", "6.1.0-b"]}


def test_a_broken_tox_ini_is_an_error_naming_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    (tmp_path / "tox.ini").write_text("[pytest\nknh_engine = qemu\n")
    monkeypatch.chdir(tmp_path)

    def resolve_kernel_spec(*_: object, **__: object) -> None:
        raise AssertionError("a kernel was resolved with the ini keys unread")

    monkeypatch.setattr(cli, "resolve_kernel_spec", resolve_kernel_spec)
    assert cli.main(["exec", "--no-module", "-q", "--", "true"]) == cli.EXIT_HARNESS
    err = capsys.readouterr().err
    assert "tox.ini" in err and "cannot be read" in err, err


def test_pyproject_is_read_with_tomli_where_there_is_no_tomllib(monkeypatch: pytest.MonkeyPatch,
                                                               tmp_path: Path) -> None:  # fmt: skip
    """Python 3.10 has no tomllib; pytest reads pyproject.toml with tomli there, and so does the CLI."""
    import sys
    from types import SimpleNamespace

    parser = pytest.importorskip("tomllib" if sys.version_info >= (3, 11) else "tomli")
    read: list[str] = []

    def loads(text: str) -> dict[str, Any]:
        read.append(text)
        return dict(parser.loads(text))

    monkeypatch.setitem(sys.modules, "tomllib", None)  # `import tomllib` raises ImportError
    monkeypatch.setitem(sys.modules, "tomli", SimpleNamespace(loads=loads, TOMLDecodeError=parser.TOMLDecodeError))
    (tmp_path / "pyproject.toml").write_text("[tool.pytest.ini_options]\nknh_engine = 'qemu'\n")
    monkeypatch.chdir(tmp_path)
    assert project_ini() == {"knh_engine": "qemu"}
    assert len(read) == 1
