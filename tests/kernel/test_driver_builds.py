"""Drivers built and loaded the way their own users build them, one real-world habit per module in
tests/modules/ (a Makefile taking KERNEL_DIR, one relying on PWD, dkms.conf with and without
BUILD_EXCLUSIVE, a dependency on an in-tree module, a driver of two .ko files, a module that will
not unload, a symbol no kernel exports), on the run's own guest through KernelSession, as the kmod
fixture loads a module."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from inner_runs import MODULES, same_kernel_options, source_conftest  # tests/kernel/inner_runs.py

from harness.build.config_items import read_kernel_config
from harness.errors import BuildError, BuildExcluded, ModuleBusyError
from harness.guest.kernel_ops import GuestKernel
from harness.session import KernelSession, LoadedModule, ModuleSource

pytestmark = pytest.mark.kernel


def load_and_unload(session: KernelSession, ops: GuestKernel, source: ModuleSource,
                    params: dict[str, str] | None = None) -> tuple[LoadedModule, list[str]]:  # fmt: skip
    """Load `source`, return what was loaded and the kernel log lines of the load; unload it and
    check the guest's module list is what it was before."""
    before = ops.module_list()
    mark = ops.mark()
    loaded = session.load(params, source)
    texts = [line.text for line in ops.lines_since(mark)]
    assert ops.loaded(loaded.name)
    session.unload(loaded)
    assert ops.module_list() == before, "the guest's module list differs from before the load"
    return loaded, texts


@pytest.mark.parametrize("name", ["mk_kernel_dir", "mk_pwd"])
def test_makefile_habits_build_against_the_guest_kernel(knh_kernel_session: KernelSession,
                                                         guest_kernel: GuestKernel, name: str) -> None:  # fmt: skip
    """mk_kernel_dir takes KERNEL_DIR (default: the host's running kernel, which has no headers);
    mk_pwd runs `make -C $(KDIR) M=$(PWD)` and would build the caller's directory."""
    source = ModuleSource(MODULES / name)
    built = knh_kernel_session.build(source)
    assert built.build_kind == "makefile"
    loaded, texts = load_and_unload(knh_kernel_session, guest_kernel, source)
    assert loaded.loaded == (name,)
    assert any(t.startswith(f"{name}: loaded") for t in texts), texts


def test_dkms_conf_make_and_built_module_location(knh_kernel_session: KernelSession,
                                                  guest_kernel: GuestKernel) -> None:  # fmt: skip
    """dkms_plain: MAKE[0] builds into src/ with a Makefile taking KERNELDIR; BUILT_MODULE_LOCATION says where."""
    source = ModuleSource(MODULES / "dkms_plain")
    built = knh_kernel_session.build(source)
    assert built.build_kind == "dkms"
    assert [ko.relative_to(built.directory).as_posix() for ko in built.modules] == ["src/dkms_plain.ko"]
    _, texts = load_and_unload(knh_kernel_session, guest_kernel, source)
    assert any(t.startswith("dkms_plain: loaded") for t in texts), texts


def test_build_exclusive_config_excludes_kernels_without_it(knh_kernel_session: KernelSession,
                                                            guest_kernel: GuestKernel) -> None:  # fmt: skip
    """dkms_exclusive needs CONFIG_CACHESTAT_SYSCALL (6.5 and later): excluded with DKMS's reason where
    the kernel lacks it, built and loaded where it has it."""
    source = ModuleSource(MODULES / "dkms_exclusive")
    if read_kernel_config(knh_kernel_session.kernel).get("CACHESTAT_SYSCALL", "n") in ("y", "m"):
        _, texts = load_and_unload(knh_kernel_session, guest_kernel, source)
        assert any(t.startswith("dkms_exclusive: loaded") for t in texts), texts
        return
    with pytest.raises(BuildExcluded, match=r'BUILD_EXCLUSIVE_CONFIG="CONFIG_CACHESTAT_SYSCALL": '
                                            r"CONFIG_CACHESTAT_SYSCALL is not set in "):  # fmt: skip
        knh_kernel_session.build(source)


def needs_crc7_module(session: KernelSession) -> None:
    """dep_intree needs crc7 as a module (Debian's kernels, amd64 and arm64: CONFIG_CRC7=m); a kernel built
    here may have it built in or not at all."""
    value = read_kernel_config(session.kernel).get("CRC7", "n")
    if value != "m":
        pytest.skip(f"CONFIG_CRC7={value} in {session.kernel.release}: dep_intree's dependency is not a module")


def test_in_tree_dependency_is_loaded_first_and_removed_after(knh_kernel_session: KernelSession,
                                                              guest_kernel: GuestKernel) -> None:  # fmt: skip
    """dep_intree calls crc7, which Debian builds as a module nothing loads: modprobe'd before, removed after."""
    needs_crc7_module(knh_kernel_session)
    assert "crc7" not in guest_kernel.module_list()
    loaded, texts = load_and_unload(knh_kernel_session, guest_kernel, ModuleSource(MODULES / "dep_intree"))
    assert loaded.loaded == ("crc7", "dep_intree")
    assert any(t.startswith("dep_intree: loaded") and "0xe4" in t for t in texts), texts


def test_a_two_ko_driver_loads_its_core_first_and_tests_the_client(knh_kernel_session: KernelSession,
                                                                   guest_kernel: GuestKernel) -> None:  # fmt: skip
    source = ModuleSource(MODULES / "two_ko")
    loaded, texts = load_and_unload(knh_kernel_session, guest_kernel, source)
    assert (loaded.name, loaded.loaded) == ("two_ko_client", ("two_ko_core", "two_ko_client"))
    core = next(i for i, t in enumerate(texts) if t.startswith("two_ko_core: loaded"))
    client = next(i for i, t in enumerate(texts) if t.startswith("two_ko_client: loaded"))
    assert core < client


def test_a_module_that_will_not_unload_names_its_refcount(knh_kernel_session: KernelSession,
                                                          guest_kernel: GuestKernel) -> None:  # fmt: skip
    loaded = knh_kernel_session.load({}, ModuleSource(MODULES / "no_unload"))
    try:
        with pytest.raises(ModuleBusyError, match=r"rmmod no_unload failed .*the module is in use: reference count 1"):
            knh_kernel_session.unload(loaded)
    finally:
        guest_kernel.guest.run("echo 1 > /sys/module/no_unload/parameters/release", check=True)
        knh_kernel_session.unload(loaded)
    assert not guest_kernel.loaded("no_unload")


def test_a_symbol_no_kernel_exports_is_named_at_build(knh_kernel_session: KernelSession) -> None:
    release = re.escape(knh_kernel_session.kernel.release)
    with pytest.raises(BuildError, match=rf"symbol knh_symbol_no_kernel_exports: no module of {release} nor the "
                                         "kernel image exports it"):  # fmt: skip
        knh_kernel_session.build(ModuleSource(MODULES / "missing_symbol"))


def run_check(session: KernelSession, module: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "harness", "check", "--module-dir", str(MODULES / module),
         *same_kernel_options(session), "--results-dir", str(session.results_dir), "-q", *args],
        capture_output=True, text=True, check=False, timeout=600,
    )  # fmt: skip


@pytest.mark.one_kernel(cost=5.5)  # the command's face; dep_intree's load and unload are tested on every kernel above
def test_check_command_passes_a_driver_with_a_dependency(knh_kernel_session: KernelSession) -> None:
    """`python -m harness check` on dep_intree: built, crc7 loaded with it, 3 clean cycles, exit 0."""
    needs_crc7_module(knh_kernel_session)
    proc = run_check(knh_kernel_session, "dep_intree", "--cycles", "3")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    row = next(line for line in proc.stdout.splitlines() if line.startswith(knh_kernel_session.kernel.release))
    assert "crc7+dep_intree" in row and "3/3" in row and row.split()[-1] == "PASS", proc.stdout


@pytest.mark.full
def test_check_command_fails_a_module_that_will_not_unload(knh_kernel_session: KernelSession) -> None:
    proc = run_check(knh_kernel_session, "no_unload", "--cycles", "1")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "FAIL" in proc.stdout and "reference count 1" in proc.stdout, proc.stdout


@pytest.mark.usefixtures("shared_cache")  # tests/kernel/conftest.py
@pytest.mark.one_kernel(cost=7.5)  # the option's plumbing; dep_intree's load and unload: every kernel, above
def test_load_check_option_adds_the_check_to_a_suite(pytester: pytest.Pytester,
                                                     knh_kernel_session: KernelSession) -> None:  # fmt: skip
    """A suite of one host-only test run with --load-check 2 on dep_intree gets test_load_unload_cycles."""
    needs_crc7_module(knh_kernel_session)
    pytester.makeconftest(source_conftest(MODULES / "dep_intree"))
    pytester.makepyfile(test_host="def test_host():\n    pass\n")
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "-rA", *same_kernel_options(knh_kernel_session),
        "--results-dir", str(pytester.path / "results"), "--load-check", "2",
    )  # fmt: skip
    result.assert_outcomes(passed=2)
    out = result.stdout.str()
    assert "PASSED knh_load_check.py::test_load_unload_cycles" in out
    assert re.search(r"crc7\+dep_intree\s+2/2\s+0\s+none\s.*PASS", out), out


@pytest.mark.full
def test_check_command_fails_a_module_that_leaks_slab_at_every_load(knh_kernel_session: KernelSession) -> None:
    """slab_leak leaks 512 KiB per load: 4 cycles after the first grow SUnreclaim past the 1024 kB limit."""
    proc = run_check(knh_kernel_session, "slab_leak", "--cycles", "4", "--module-param", "kb=512")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert re.search(r"unreclaimable slab grew by \d+ kB over 4 load/unload cycles \(limit 1024 kB\)", proc.stdout)
