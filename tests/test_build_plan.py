"""How a driver directory is built (DKMS, its Makefile, Kbuild), what it needs from the kernel, and the
session's memory of a failed build: host-only, with fake Makefiles that record what make was given."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from harness.build.dkms import DkmsConf, exclusion, parse_fields, read_dkms_conf
from harness.build.kernel import Kernel
from harness.build.module_build import build_module
from harness.build.module_deps import (
    config_option,
    kernel_dependencies,
    load_order,
    missing_module,
    modules_dep_names,
    parse_depends,
    undefined_symbols,
    under_test,
)
from harness.build.plan import choose_build, dkms_command, makefile_command
from harness.config import HarnessConfig, expand_make_vars
from harness.errors import BuildError, BuildExcluded, ConfigError, MissingKernelDependency
from harness.session import KernelSession, ModuleSource, check_kernel_provides

FakeKo = Callable[..., Path]  # the fake_ko fixture (tests/conftest.py)


@pytest.fixture
def kernel(tmp_path: Path) -> Kernel:
    kdir = tmp_path / "kdir"
    kdir.mkdir()
    (kdir / ".config").write_text("CONFIG_HAVE_IT=y\nCONFIG_AS_MODULE=m\n# CONFIG_NOT_SET is not set\n")
    return Kernel("6.1.0-99-test", tmp_path / "no-image", kdir)


def driver(tmp: Path, name: str, files: dict[str, str]) -> Path:
    src = tmp / name
    for rel, text in files.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_text(text)
    return src


# -- the choice ------------------------------------------------------------------------------------


def test_choice_follows_the_files_dkms_then_makefile_then_kbuild(tmp_path: Path) -> None:
    assert choose_build(driver(tmp_path, "a", {"dkms.conf": "", "Makefile": "", "Kbuild": ""})) == "dkms"
    assert choose_build(driver(tmp_path, "b", {"Makefile": "", "Kbuild": ""})) == "makefile"
    assert choose_build(driver(tmp_path, "c", {"Kbuild": ""})) == "kbuild"
    assert choose_build(driver(tmp_path, "d", {"dkms.conf": "", "Makefile": ""}), "makefile") == "makefile"
    with pytest.raises(ConfigError, match=r"has no dkms\.conf, Makefile or Kbuild"):
        choose_build(driver(tmp_path, "e", {"x.c": ""}))
    with pytest.raises(ConfigError, match=r"'dkms' was asked for, but .* has no dkms\.conf"):
        choose_build(driver(tmp_path, "f", {"Makefile": ""}), "dkms")


def test_a_makefile_with_only_kbuild_lines_is_built_by_the_kernels_make(tmp_path: Path) -> None:
    """xpadneo's src/Makefile: `obj-m += hid-xpadneo.o` and object lists, no rule: `make` says "No targets"."""
    kbuild = ("obj-m += hid-xpadneo.o\nhid-xpadneo-y := \\\n\txpadneo.o \\\n\tcore.o\n"
              "ccflags-y += -DVERSION=$(VERSION)\n")
    assert choose_build(driver(tmp_path, "src", {"Makefile": kbuild})) == "kbuild"
    own = "obj-m := x.o\nKDIR ?= /lib/modules/$(shell uname -r)/build\nall:\n\t$(MAKE) -C $(KDIR) M=$(CURDIR)\n"
    assert choose_build(driver(tmp_path, "own", {"Makefile": own})) == "makefile"
    tools = "all: tool\ntool: tool.c\n\tcc -o $@ $<\n"
    assert choose_build(driver(tmp_path, "tools", {"Makefile": tools})) == "makefile"


def test_makefile_gets_the_build_dir_under_every_name_and_never_kernelrelease() -> None:
    cmd = makefile_command(Path("/c"), Path("/kdir"), "6.1.0-1", jobs=2, make_vars=("W=1",), targets=("all",))
    for name in ("KDIR", "KERNEL_DIR", "KERNELDIR", "KSRC", "KERNEL_SRC", "KBUILD_DIR"):
        assert f"{name}=/kdir" in cmd.argv
    assert "KVER=6.1.0-1" in cmd.argv and not any(a.startswith("KERNELRELEASE=") for a in cmd.argv)
    assert cmd.argv[-2:] == ("W=1", "all") and cmd.cwd == Path("/c") and cmd.env == {"PWD": "/c"}


def test_make_vars_expand_placeholders_and_reject_unknown_ones() -> None:
    assert expand_make_vars(["KSRC={kdir}", "V={release}-x"], Path("/k"), "6.1") == ("KSRC=/k", "V=6.1-x")
    with pytest.raises(ConfigError, match=r"uses \{kver\}"):
        expand_make_vars(["X={kver}"], Path("/k"), "6.1")
    with pytest.raises(ConfigError, match="not NAME=VALUE"):
        expand_make_vars(["novalue"], Path("/k"), "6.1")


def test_dkms_command_rewrites_a_leading_make_as_dkms_does() -> None:
    variables = {"kernelver": "6.1.0-1"}
    cmd = dkms_command(Path("/c"), "make -C src KDIR=/k", Path("/k"), variables, jobs=2, make_vars=("V=1", "F=a b"))
    assert cmd.argv == ("bash", "-c", "make -j2 KERNELRELEASE=6.1.0-1 -C src KDIR=/k")
    assert cmd.env["MAKEFLAGS"] == "V=1 F=a\\ b"
    quoted = dkms_command(Path("/c"), "'make' -C src", Path("/k"), variables, jobs=2)
    assert quoted.argv[2] == "'make' -C src" and "MAKEFLAGS" not in quoted.env
    default = dkms_command(Path("/c"), None, Path("/k"), variables, jobs=None)
    assert default.argv == ("make", "KERNELRELEASE=6.1.0-1", "-C", "/k", "M=/c")


def test_make_vars_reach_every_make_of_a_dkms_command(tmp_path: Path, kernel: Kernel, fake_ko: FakeKo) -> None:
    """MAKE[0]="cd src && make && make again": both makes see --make-var values, spaces kept."""
    src = driver(tmp_path, "multi", {
        "dkms.conf": 'PACKAGE_NAME=multi\nPACKAGE_VERSION=1\nMAKE[0]="cd src && make && make again"\n',
        "src/Makefile": f"all:\n\t@echo '[$(TAG)]' > first; cp {fake_ko()} m.ko\n"
                        "again:\n\t@echo '[$(TAG)]' > second\n"})  # fmt: skip
    built = build_module(src, kernel, cache_root=tmp_path / "cache", make_vars=("TAG=a b",))
    assert [(built.directory / "src" / f).read_text() for f in ("first", "second")] == ["[a b]\n", "[a b]\n"]
    with pytest.raises(ConfigError, match=r"do not apply to a dkms\.conf build"):
        build_module(src, kernel, cache_root=tmp_path / "cache", targets=("modules",))


# -- dkms.conf -----------------------------------------------------------------------------------------

DKMS_CONF = """# as DKMS sources it
PACKAGE_NAME="drv"
PACKAGE_VERSION="1.2"
BUILT_MODULE_NAME[0]="drv_core"
BUILT_MODULE_LOCATION[0]="src/"
BUILT_MODULE_NAME[1]="$PACKAGE_NAME"
BUILT_MODULE_LOCATION[1]="src/"
MAKE[0]="make -C ${kernel_source_dir} M=${dkms_tree}/${PACKAGE_NAME}/${PACKAGE_VERSION}/build/src"
MAKE[1]="make OLD=1"
MAKE_MATCH[1]="^5\\."
BUILD_EXCLUSIVE_CONFIG="CONFIG_HAVE_IT !CONFIG_NOT_SET"
"""


# DKMS knows $module and $module_version before it reads the file; a file may end in a false test.
DKMS_MODULE_VARS = """MAKE[2]="make -C ${kernel_source_dir} M=${dkms_tree}/${module}/${module_version}/build"
MAKE_MATCH[2]="^4\\."
local_only() { local x=1; }
[ "$kernelver" = "never" ] && MAKE[3]="unused"
"""


def test_dkms_conf_is_read_as_dkms_reads_it(tmp_path: Path) -> None:
    conf = read_dkms_conf(driver(tmp_path, "d", {"dkms.conf": DKMS_CONF + DKMS_MODULE_VARS}) / "dkms.conf",
                          {"kernel_source_dir": "/kdir", "dkms_tree": "/t"})  # fmt: skip
    assert conf.make_command("4.19") == "make -C /kdir M=/t/drv/1.2/build"  # $module, $module_version
    assert (conf.package, conf.version) == ("drv", "1.2")
    assert conf.modules == (("drv_core", "src/"), ("drv", "src/"))
    assert conf.make_command("6.1.0") == "make -C /kdir M=/t/drv/1.2/build/src"
    assert conf.make_command("5.10.0") == "make OLD=1"
    assert conf.exclusive_config == "CONFIG_HAVE_IT !CONFIG_NOT_SET"


def test_a_dkms_conf_bash_cannot_source_is_a_build_error(tmp_path: Path) -> None:
    with pytest.raises(BuildError, match="cannot be read the way DKMS reads it"):
        read_dkms_conf(driver(tmp_path, "d", {"dkms.conf": "exit 1\n"}) / "dkms.conf", {})


def test_build_exclusive_rules() -> None:
    conf = parse_fields("s PACKAGE_NAME drv\0")
    config = {"HAVE_IT": "y", "AS_MODULE": "m"}

    def why(**kw: str) -> str | None:
        return exclusion(DkmsConf(**{**conf.__dict__, **kw}), "6.1.0-1-amd64", "x86_64", config)

    assert why() is None
    assert why(exclusive_config="CONFIG_HAVE_IT CONFIG_AS_MODULE") is None
    assert why(exclusive_config="CONFIG_HAVE_IT CONFIG_MISSING") == (
        "dkms.conf of drv: BUILD_EXCLUSIVE_CONFIG=\"CONFIG_HAVE_IT CONFIG_MISSING\": CONFIG_MISSING is not set "
        "in 6.1.0-1-amd64's .config")  # fmt: skip
    assert "CONFIG_HAVE_IT=y" in (why(exclusive_config="!CONFIG_HAVE_IT") or "")
    assert "does not match 6.1.0-1-amd64" in (why(exclusive_kernel="^6\\.12") or "")
    assert why(exclusive_kernel="^6\\.1") is None
    assert "newer than" in (why(exclusive_kernel_min="6.5") or "")
    assert why(exclusive_kernel_min="5.12.0") is None
    assert "does not match x86_64" in (why(exclusive_arch="aarch64") or "")


# -- builds with fake Makefiles that record what make was given --------------------------------------


def test_a_makefile_taking_kernel_dir_gets_the_kernels_build_dir(tmp_path: Path, kernel: Kernel,
                                                                  fake_ko: FakeKo) -> None:  # fmt: skip
    src = driver(tmp_path, "v4l", {"Makefile": (
        "KERNELRELEASE ?= $(shell uname -r)\nKERNEL_DIR ?= /lib/modules/$(KERNELRELEASE)/build\n"
        f"all:\n\t@echo '$(KERNEL_DIR) $(KVER) [$(KERNELRELEASE)]' > got; cp {fake_ko()} drv.ko\n")})  # fmt: skip
    built = build_module(src, kernel, cache_root=tmp_path / "cache")
    release = os.uname().release
    assert (built.directory / "got").read_text() == f"{kernel.build_dir} {kernel.release} [{release}]\n"
    assert built.choice.startswith("build: makefile (the module's Makefile): (cd ")


def test_a_makefile_relying_on_pwd_builds_in_its_copy(tmp_path: Path, kernel: Kernel, fake_ko: FakeKo,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.setenv("PWD", str(elsewhere))  # the caller's PWD, as a shell leaves it
    src = driver(tmp_path, "pwd", {"Makefile": (
        f"PWD ?= $(shell pwd)\nall:\n\t@echo '$(PWD)' > got; cp {fake_ko()} drv.ko\n")})  # fmt: skip
    built = build_module(src, kernel, cache_root=tmp_path / "cache")
    assert (built.directory / "got").read_text() == f"{built.directory}\n"


def test_make_vars_reach_make_with_placeholders(tmp_path: Path, kernel: Kernel, fake_ko: FakeKo) -> None:
    src = driver(tmp_path, "vars", {"Makefile": f"all:\n\t@echo '$(MY_SRC) $(TAG)' > got; cp {fake_ko()} d.ko\n"})
    built = build_module(src, kernel, cache_root=tmp_path / "cache", make_vars=("MY_SRC={kdir}", "TAG=r{release}"))
    assert (built.directory / "got").read_text() == f"{kernel.build_dir} r{kernel.release}\n"
    again = build_module(src, kernel, cache_root=tmp_path / "cache", make_vars=("TAG=other",))
    assert again.directory != built.directory  # the variables are part of the cache key


def test_dkms_build_runs_make0_and_loads_built_module_names_in_order(tmp_path: Path, kernel: Kernel,
                                                                      fake_ko: FakeKo) -> None:  # fmt: skip
    core, client = fake_ko(name="drv_core"), fake_ko(depends="drv_core", name="drv")
    src = driver(tmp_path, "dk", {
        "dkms.conf": DKMS_CONF.replace("MAKE[1]", "#").replace("MAKE_MATCH[1]", "#").replace(
            "make -C ${kernel_source_dir} M=", "make -C "),
        "src/Makefile": f"all:\n\t@echo '$(CURDIR)' > got; echo '$(module) $(module_version) $(kernelver)' > vars; "
                        f"cp {core} drv_core.ko; cp {client} drv.ko; "
                        f"cp {core} stray.ko\n"})  # fmt: skip
    built = build_module(src, kernel, cache_root=tmp_path / "cache")
    assert [ko.name for ko in built.modules] == ["drv_core.ko", "drv.ko"]  # not stray.ko: dkms.conf names them
    assert built.under_test().name == "drv.ko" and built.kernel_dependencies_of(built.modules) == ()
    assert (built.directory / "src" / "got").read_text() == f"{built.directory / 'src'}\n"  # via $dkms_tree
    assert "build: dkms (dkms.conf)" in built.choice
    assert (built.directory / "src" / "vars").read_text() == f"drv 1.2 {kernel.release}\n"  # DKMS's variables


def test_a_kernel_the_dkms_conf_excludes_is_never_built(tmp_path: Path, kernel: Kernel) -> None:
    src = driver(tmp_path, "ex", {"dkms.conf": 'PACKAGE_NAME=ex\nBUILD_EXCLUSIVE_CONFIG="CONFIG_NOT_SET"\n'
                                               'MAKE[0]="touch built-anyway"\n'})  # fmt: skip
    with pytest.raises(BuildExcluded, match='BUILD_EXCLUSIVE_CONFIG="CONFIG_NOT_SET": CONFIG_NOT_SET is not set'):
        build_module(src, kernel, cache_root=tmp_path / "cache")
    assert not list((tmp_path / "cache").rglob("built-anyway"))


def test_kos_in_subdirectories_are_found_in_dependency_order(tmp_path: Path, kernel: Kernel,
                                                              fake_ko: FakeKo) -> None:  # fmt: skip
    core, client = fake_ko(name="z_core"), fake_ko(depends="z_core,videodev", name="b_client")
    src = driver(tmp_path, "sub", {"Makefile": f"all:\n\tmkdir -p drivers; cp {client} drivers/b_client.ko; "
                                               f"cp {core} drivers/z_core.ko\n"})  # fmt: skip
    built = build_module(src, kernel, cache_root=tmp_path / "cache")
    names = [ko.relative_to(built.directory).as_posix() for ko in built.modules]
    assert names == ["drivers/z_core.ko", "drivers/b_client.ko"]
    assert built.kernel_dependencies_of(built.modules) == ("videodev",)


def test_load_plan_of_a_named_module_is_it_after_what_it_needs(tmp_path: Path, kernel: Kernel,
                                                               fake_ko: FakeKo) -> None:  # fmt: skip
    """core <- client (needs videodev) and an unrelated leaf: naming core loads core alone; naming
    client loads core first; by default all of them, the last leaf last."""
    core = fake_ko(name="core")
    client = fake_ko(depends="core,videodev", name="client")
    other = fake_ko(depends="snd", name="other")
    src = driver(tmp_path, "three", {"Makefile": f"all:\n\tcp {core} core.ko; cp {client} client.ko; "
                                                 f"cp {other} other.ko\n"})  # fmt: skip
    built = build_module(src, kernel, cache_root=tmp_path / "cache")
    assert [ko.name for ko in built.load_plan("core")] == ["core.ko"]
    assert [ko.name for ko in built.load_plan("client")] == ["core.ko", "client.ko"]
    assert built.kernel_dependencies_of(built.load_plan("client")) == ("videodev",)
    assert built.kernel_dependencies_of(built.load_plan("core")) == ()
    plan = [ko.name for ko in built.load_plan()]
    assert plan.index("core.ko") < plan.index("client.ko") and plan[-1] == built.under_test().name
    assert built.kernel_dependencies_of(built.load_plan()) == ("videodev", "snd")


def test_a_failed_build_runs_make_once_per_kernel(tmp_path: Path, kernel: Kernel) -> None:
    count = tmp_path / "count"
    src = driver(tmp_path, "bad", {"Makefile": f"all:\n\t@echo run >> {count}; echo 'bad.c:1: error: x'; exit 1\n"})
    session = KernelSession(HarnessConfig(), kernel, tmp_path / "run")
    source = ModuleSource(src)
    errors = []
    for _ in range(3):
        with pytest.raises(BuildError, match=r"bad\.c:1: error: x") as info:
            session.build(source)
        errors.append(str(info.value))
    assert count.read_text() == "run\n" and len(set(errors)) == 1


def test_a_build_failing_on_unexported_symbols_names_them(tmp_path: Path, kernel: Kernel) -> None:
    src = driver(tmp_path, "sym", {"Makefile": "all:\n\t@echo 'ERROR: modpost: \"knh_nope\" [/x/sym.ko] undefined!'"
                                               "; exit 2\n"})  # fmt: skip
    with pytest.raises(BuildError, match=r"the module uses symbols this kernel does not export:\n  symbol knh_nope: "
                                         r"no module of 6\.1\.0-99-test nor the kernel image exports it"):  # fmt: skip
        build_module(src, kernel, cache_root=tmp_path / "cache")


# -- dependencies ------------------------------------------------------------------------------------


def test_depends_and_load_order() -> None:
    assert parse_depends("videodev,snd-pcm\n") == ("videodev", "snd_pcm") and parse_depends("\n") == ()
    deps = {"client": ("core", "videodev"), "core": ("mc",), "other": ()}
    order = load_order(deps, ["client", "core", "other"])
    assert order.index("core") < order.index("client")
    assert under_test(deps, order) in ("client", "other") and under_test({"a": ()}, ["a"]) == "a"
    assert kernel_dependencies(deps) == ("videodev", "mc")
    assert load_order({"a": ("b",), "b": ("a",)}, ["a", "b"]) == ["b", "a"]  # a cycle still loads all
    assert modules_dep_names("kernel/drivers/media/mc/mc.ko.xz:\nkernel/x/snd-pcm.ko: kernel/x/snd.ko\n") == {
        "mc": "kernel/drivers/media/mc/mc.ko.xz", "snd_pcm": "kernel/x/snd.ko".replace("snd.ko", "snd-pcm.ko")}
    assert undefined_symbols('WARNING: modpost: "a" [/x/m.ko] undefined!\nERROR: modpost: "b" [m.ko] undefined!') == [
        ("a", "/x/m.ko"), ("b", "m.ko")]  # fmt: skip


def test_config_option_from_the_trees_makefile(tmp_path: Path) -> None:
    (tmp_path / "drivers/media/v4l2-core").mkdir(parents=True)
    (tmp_path / "drivers/media/v4l2-core/Makefile").write_text(
        "videodev-objs := v4l2-dev.o \\\n\tv4l2-ioctl.o\nobj-$(CONFIG_VIDEO_DEV) += videodev.o\n")
    assert config_option(tmp_path, "drivers/media/v4l2-core/videodev") == "CONFIG_VIDEO_DEV"
    assert config_option(tmp_path, "drivers/media/v4l2-core/other") is None
    found = missing_module("videodev", {"video_register_device": "drivers/media/v4l2-core/videodev"}, tmp_path)
    assert found.describe("6.1-x", {}) == ("module videodev: provided by CONFIG_VIDEO_DEV "
                                           "(drivers/media/v4l2-core/videodev); CONFIG_VIDEO_DEV is not set in 6.1-x")


def test_a_dependency_missing_from_the_module_tree_fails_before_loading(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    kdir = tmp_path / "tree"
    (kdir / "drivers/media/v4l2-core").mkdir(parents=True)
    (kdir / "drivers/media/v4l2-core/Makefile").write_text("obj-$(CONFIG_VIDEO_DEV) += videodev.o\n")
    (kdir / "Module.symvers").write_text("0x1\tvideo_register_device\tdrivers/media/v4l2-core/videodev\tEXPORT\t\n")
    (kdir / ".config").write_text("# CONFIG_VIDEO_DEV is not set\n")
    moddir = tmp_path / "lib/modules/6.1-x"
    moddir.mkdir(parents=True)
    (moddir / "modules.dep").write_text("kernel/lib/crc8.ko:\n")
    monkeypatch.setattr("harness.session.kernel_modules_dir", lambda k: moddir)
    k = Kernel("6.1-x", tmp_path / "img", kdir)
    check_kernel_provides(k, ("crc8",))
    with pytest.raises(MissingKernelDependency, match=r"(?s)nothing was loaded.*module videodev: provided by "
                                                      r"CONFIG_VIDEO_DEV .*CONFIG_VIDEO_DEV is not set in 6\.1-x"):
        check_kernel_provides(k, ("crc8", "videodev"))


def test_a_kernel_excluded_by_dkms_conf_skips_the_test_with_dkms_reason() -> None:
    from harness.pytest_plugin.runstate import HarnessFailed, fail_on_harness_error

    with pytest.raises(pytest.skip.Exception, match=r"not built for this kernel: dkms\.conf of x: BUILD_EXCLUSIVE"):
        fail_on_harness_error(BuildExcluded("dkms.conf of x: BUILD_EXCLUSIVE_KERNEL=\"^5\" does not match 6.1"))
    with pytest.raises(HarnessFailed):
        fail_on_harness_error(BuildError("module build failed", "log"))


def test_a_kernel_without_debug_info_gets_modules_with_it(tmp_path: Path, kernel: Kernel, fake_ko: FakeKo) -> None:
    """The debug kernel built here has CONFIG_DEBUG_INFO_NONE: its modules are compiled with KCFLAGS=-g, so a
    splat's frames still decode; a kernel with DEBUG_INFO, or a user's own KCFLAGS, is left alone."""
    from harness.build.module_build import debug_info_variables

    assert debug_info_variables({"DEBUG_INFO_NONE": "y"}, ()) == ("KCFLAGS=-g",)
    assert debug_info_variables({"DEBUG_INFO": "y"}, ()) == ()
    assert debug_info_variables({"DEBUG_INFO_NONE": "y"}, ("KCFLAGS=-O1",)) == ()
    assert debug_info_variables({}, ()) == ()
    src = driver(tmp_path, "dbg", {"Makefile": f"all:\n\t@echo '[$(KCFLAGS)]' > got; cp {fake_ko()} d.ko\n"})
    built = build_module(src, kernel, cache_root=tmp_path / "cache")  # the fixture's .config has no DEBUG_INFO
    assert (built.directory / "got").read_text() == "[-g]\n"
