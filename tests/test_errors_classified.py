"""Every error the harness raises says by its class what happened: no place raises the bare base class,
and each failure gets the `infra` flag of what it means (True: the kernel or host could not be used,
nothing was tested; False: the module, the kernel or the calling code misbehaved)."""

from __future__ import annotations

import ast
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from harness import errors
from harness.errors import HarnessError

HARNESS = Path(__file__).resolve().parent.parent / "harness"


def _raised(provoke: Callable[[], object]) -> HarnessError:
    with pytest.raises(HarnessError) as info:
        provoke()
    return info.value


def _assert_kind(err: HarnessError, name: str, infra: bool) -> None:
    assert type(err) is not HarnessError, f"the bare HarnessError says nothing of what happened: {err}"
    cls = getattr(errors, name, None)
    assert isinstance(cls, type) and isinstance(err, cls), f"want {name}, got {type(err).__name__}: {err}"
    assert err.infra is infra, f"{type(err).__name__}.infra is {err.infra}, want {infra}: {err}"


def _bare_raises(path: Path) -> list[int]:
    """Lines of `path` that raise HarnessError itself (called or not)."""
    lines = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Raise) and node.exc is not None:
            target = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
            name = target.id if isinstance(target, ast.Name) else getattr(target, "attr", None)
            if name == "HarnessError":
                lines.append(node.lineno)
    return lines


def test_no_module_raises_the_bare_base_class() -> None:
    found = [f"{p.relative_to(HARNESS.parent)}:{n}" for p in sorted(HARNESS.rglob("*.py")) for n in _bare_raises(p)]
    assert not found, "raise a subclass of HarnessError that says what happened (harness/errors.py):\n" + "\n".join(
        found
    )


def test_the_bare_raise_finder_finds_one(tmp_path: Path) -> None:
    path = tmp_path / "m.py"
    path.write_text("def f():\n    raise HarnessError('x')\n\ndef g():\n    raise errors.HarnessError\n"
                    "def h():\n    raise ConfigError('x')\n")  # fmt: skip
    assert _bare_raises(path) == [2, 5]


# ---- the guest: what the guest answered could not be read --------------------------------------


def test_a_taint_reading_without_a_value_is_a_guest_read_failure() -> None:
    from harness.guest.kernel_ops import parse_taint

    err = _raised(lambda: parse_taint("sh: cat: not found\n"))
    _assert_kind(err, "GuestReadError", infra=True)
    assert "/proc/sys/kernel/tainted" in str(err)


class _SilentGuest:
    """A guest whose commands succeed and write nothing (the shared-directory copy never appears)."""

    alive = True

    def run(self, argv: Any, *, check: bool = False, timeout: float | None = None) -> Any:
        from harness.guest.console import CommandResult

        return CommandResult(str(argv), 0, "", 0.0)


@pytest.mark.parametrize("read", ["log", "read_file"])
def test_a_guest_copy_missing_on_the_host_is_a_guest_read_failure(
    tmp_path: Path, read: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from harness.guest import log_stream
    from harness.guest.kernel_ops import GuestKernel

    monkeypatch.setattr(log_stream, "WAIT_S", 0.2)  # the log's copy never gets the sync line

    ops = GuestKernel(_SilentGuest(), tmp_path)  # type: ignore[arg-type]
    err = _raised(ops.log if read == "log" else lambda: ops.read_file("/proc/meminfo", "meminfo"))
    _assert_kind(err, "GuestReadError", infra=True)
    assert str(tmp_path) in str(err)


def test_a_lost_log_mark_means_the_log_cannot_be_checked() -> None:
    from harness.guest.kernel_ops import LogMark, lines_after_mark
    from harness.kernel_log.dmesg import parse_lines

    err = _raised(lambda: lines_after_mark(parse_lines("[    1.000000] hello\n"), LogMark("knh-mark:ab:1")))
    _assert_kind(err, "KernelLogLost", infra=True)
    assert "knh-mark:ab:1" in str(err) and "log_buf_len" in str(err)


# ---- the host: the kernel's modules are not installed ------------------------------------------


def test_a_kernel_without_modules_dep_on_the_host_is_infrastructure(tmp_path: Path) -> None:
    from harness.build.initramfs import build_initramfs
    from harness.build.kernel import Kernel

    release = "0.0.0-knh-no-such-release"
    busybox = tmp_path / "busybox"
    busybox.write_bytes(b"")
    kernel = Kernel(release, tmp_path / "vmlinuz", tmp_path / "build")
    err = _raised(lambda: build_initramfs(kernel, tmp_path / "init", tmp_path / "cache", busybox=str(busybox)))
    _assert_kind(err, "KernelModulesMissing", infra=True)
    assert isinstance(err, errors.KernelNotFoundError)
    assert f"/lib/modules/{release}/modules.dep" in str(err) and f"depmod {release}" in str(err)


# ---- the calling code: usage ------------------------------------------------------------------


def test_two_kernels_for_a_one_kernel_command_is_a_setting_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from harness.cli import commands as cli
    from harness.cli.base import Output
    from harness.config import resolve

    def resolve_kernel_spec(*_: object, **__: object) -> None:
        raise AssertionError("no kernel is resolved before the settings are checked")

    monkeypatch.setattr(cli, "resolve_kernel_spec", resolve_kernel_spec)
    cfg = resolve({"kernels": ["6.1.0-a", "6.1.0-b"]}, environ={})
    err = _raised(lambda: cli.open_session(cfg, Output(True)))
    _assert_kind(err, "ConfigError", infra=False)
    assert "6.1.0-a" in str(err) and "option --kernel" in str(err)


# ---- the benchmark ------------------------------------------------------------------------------


@pytest.mark.parametrize(("argv", "timeout", "says"), [(["true"], 60.0, "exited without"),
                                                      (["sleep", "5"], 0.0, "did not print")])  # fmt: skip
def test_a_raw_boot_without_its_marker_is_a_bench_failure(argv: list[str], timeout: float, says: str) -> None:
    from harness.knetlink.bench_raw import time_raw_boot

    err = _raised(lambda: time_raw_boot(argv, timeout=timeout))
    _assert_kind(err, "BenchError", infra=True)
    assert says in str(err)


def test_a_failing_suite_is_a_bench_failure(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from harness.config import resolve
    from harness.knetlink import bench_suite

    def run(argv: list[str], **_: object) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess(argv, 1, "1 failed\n", "")

    monkeypatch.setattr(bench_suite.subprocess, "run", run)
    cfg = resolve({}, environ={})
    err = _raised(lambda: bench_suite.run_suite(cfg, ["6.1.0-a"], tmp_path / "j.xml", parallel=False))
    _assert_kind(err, "BenchError", infra=True)
    assert "1 failed" in str(err)


def test_a_crash_while_loading_is_not_a_refusal_to_load() -> None:
    """`except ModuleLoadError` (a test skipping modules the kernel refuses) must not catch an insmod the kernel
    crashed in: the kernel watch fails that test, and the crash attribution tests check it on real kernels."""
    from harness.errors import HarnessError, ModuleCrashError, ModuleLoadError

    assert issubclass(ModuleCrashError, HarnessError) and not issubclass(ModuleCrashError, ModuleLoadError)
