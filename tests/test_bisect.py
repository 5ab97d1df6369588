"""bisect-run's exit-status contract and the source-tree build cache, without building a kernel.

Two levels:
- bisect_run() with injected build and test steps: every verdict (0, 1, 125, 128);
- a scripted fake kernel tree (a Makefile and a fake `vng` script that "build" a bzImage
  header, and fail when the tree says so) driven through the real build_kernel() and the real
  CLI, including one `git bisect run` over a small history.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path

import pytest

from harness.build.config_items import REQUIRED_CONFIG, BuildOptions, config_items, read_config, tiny_fragment
from harness.build.kernel import Kernel
from harness.build.kernel_build import build_kernel, cache_key, modules_dir_for, resolve_kernel_spec, tree_state
from harness.build.kernel_source import is_kernel_tree
from harness.cli import bisect_run as b
from harness.errors import HarnessError, KernelBuildError, KernelNotFoundError

ROOT = Path(__file__).resolve().parent.parent
KERNEL = Kernel("6.1.192-virtme", Path("/nonexistent/bzImage"), Path("/nonexistent"))

JUNIT_PASS = '<testsuites><testsuite><testcase classname="t" name="test_a"/></testsuite></testsuites>'
JUNIT_FAIL = ('<testsuites><testsuite><testcase classname="t" name="test_a">'
              '<failure message="AssertionError: link lines differ">trace</failure>'
              "</testcase></testsuite></testsuites>")  # fmt: skip
JUNIT_SKIPPED = ('<testsuites><testsuite><testcase classname="t" name="test_a">'
                 '<skipped type="pytest.skip" message="bpftrace is missing">t.py:3: bpftrace is missing</skipped>'
                 '</testcase><testcase classname="t" name="test_b"><skipped message="no BTF">x</skipped>'
                 "</testcase></testsuite></testsuites>")  # fmt: skip
JUNIT_NONE = '<testsuites><testsuite name="pytest" tests="0"></testsuite></testsuites>'
JUNIT_BOOT = ('<testsuites><testsuite><testcase classname="t" name="test_a">'
              '<properties><property name="knh_failure" value="infra"/></properties>'
              '<error message="failed on setup with &quot;HarnessFailed: guest knh-1 (6.1.192-virtme, vng/tcg) '
              'did not boot: timeout&quot;">x</error></testcase></testsuite></testsuites>')  # fmt: skip
# The same words without the plugin's property: a test failure (classification is by type, not by text).
JUNIT_BOOT_WORDS = JUNIT_BOOT.replace('<properties><property name="knh_failure" value="infra"/></properties>',
                                      '<properties><property name="knh_failure" value="test"/></properties>')


def fake_test(status: int, junit_text: str | None) -> b.TestStep:
    def run(kernel: Kernel, args: Sequence[str], junit: Path) -> int:
        if junit_text is not None:
            junit.write_text(junit_text)
        return status

    return run


def built(kernel: Kernel = KERNEL) -> b.BuildStep:
    return lambda tree: kernel


def broken_build(tree: Path) -> Kernel:
    raise KernelBuildError("kernel build failed in tree (vng --build)")


def run(build: b.BuildStep, test: b.TestStep, **kw: object) -> int:
    return b.bisect_run(Path("/nonexistent-tree"), ["tests/kernel/test_seed.py"], build=build, test=test,
                        notify=lambda m: None, **kw)  # type: ignore[arg-type]  # fmt: skip


# ---- the contract, with injected steps ---------------------------------------------------------


def test_tests_pass_is_good() -> None:
    assert run(built(), fake_test(0, JUNIT_PASS)) == 0


def test_test_failure_is_bad() -> None:
    assert run(built(), fake_test(1, JUNIT_FAIL)) == 1


def _suite(*junits: str) -> str:
    cases = "".join(j.split("<testsuite>")[1].split("</testsuite>")[0] for j in junits)
    return f"<testsuites><testsuite>{cases}</testsuite></testsuites>"


def test_all_skipped_is_skip() -> None:
    messages: list[str] = []
    code = b.bisect_run(Path("/nonexistent-tree"), ["t.py"], build=built(), test=fake_test(0, JUNIT_SKIPPED),
                        notify=messages.append)  # fmt: skip
    assert code == 125
    assert "no test passed (2 skipped, e.g. test_a: bpftrace is missing)" in messages[-1]


@pytest.mark.parametrize("junit", [JUNIT_NONE, None], ids=["empty-junit", "no-junit"])
def test_none_collected_is_skip(junit: str | None) -> None:
    assert run(built(), fake_test(5, junit)) == 125


def test_one_passed_and_some_skipped_is_good() -> None:
    assert run(built(), fake_test(0, _suite(JUNIT_SKIPPED, JUNIT_PASS))) == 0


def test_a_failure_among_skips_is_bad() -> None:
    assert run(built(), fake_test(1, _suite(JUNIT_SKIPPED, JUNIT_FAIL))) == 1


def test_passed_without_results_aborts() -> None:
    assert run(built(), fake_test(0, None)) == 128


STEP_TESTS = textwrap.dedent(
    """\
    import pytest

    def test_skipped_in_body():
        pytest.skip("bpftrace is missing")

    @pytest.mark.skipif(True, reason="no BTF")
    def test_skipped_by_marker():
        pass

    def test_passes():
        pass

    def test_fails():
        assert False, "link lines differ"
    """
)


@pytest.mark.parametrize(
    ("selection", "expected"),
    [("skipped", 125), ("no_such_test", 125), ("skipped or passes", 0), ("skipped or fails", 1)],
    ids=["all-skipped", "none-collected", "passed-and-skipped", "failed"],
)
def test_verdict_of_a_real_pytest_run(tmp_path: Path, selection: str, expected: int) -> None:
    """The same contract over what pytest itself writes (exit status and JUnit file)."""
    tests = tmp_path / "test_step.py"
    tests.write_text(STEP_TESTS)
    code = b.bisect_run(tmp_path, [str(tests), "-q", "-k", selection], build=built(), test=b.default_test_step,
                        notify=lambda m: None)  # fmt: skip
    assert code == expected


def test_kernel_build_failure_is_skip() -> None:
    calls: list[str] = []

    def test(kernel: Kernel, args: Sequence[str], junit: Path) -> int:
        calls.append("test")
        return 0

    assert run(broken_build, test) == 125
    assert calls == []  # no test run on a kernel that did not build


def test_boot_failure_is_skip_by_default_and_configurable() -> None:
    assert run(built(), fake_test(1, JUNIT_BOOT)) == 125
    assert run(built(), fake_test(1, JUNIT_BOOT), on_infra="bad") == 1
    assert run(built(), fake_test(1, JUNIT_BOOT), on_infra="abort") == 128


def test_real_failure_wins_over_boot_failure() -> None:
    assert run(built(), fake_test(1, _suite(JUNIT_BOOT, JUNIT_FAIL))) == 1


@pytest.mark.parametrize("status", [2, 3, 4])
def test_commit_independent_problems_abort(status: int) -> None:
    assert run(built(), fake_test(status, None)) == 128


def test_failed_without_results_aborts() -> None:
    assert run(built(), fake_test(1, None)) == 128


def test_other_harness_error_while_building_aborts() -> None:
    def build(tree: Path) -> Kernel:
        raise HarnessError("vng is missing")

    assert run(build, fake_test(0, JUNIT_PASS)) == 128


def test_not_a_kernel_tree_aborts(tmp_path: Path) -> None:
    assert b.bisect_run(tmp_path, ["t.py"], build=lambda tree: build_kernel(tree, cache_root=tmp_path / "c"),
                        test=fake_test(0, JUNIT_PASS), notify=lambda m: None) == 128  # fmt: skip


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_missing_vng_aborts(tmp_path: Path) -> None:
    tree = make_fake_tree(tmp_path, git=False)
    options = BuildOptions(vng=str(tmp_path / "no-such-vng"))
    with pytest.raises(HarnessError, match="pip install virtme-ng"):
        build_kernel(tree, options=options, cache_root=tmp_path / "c")
    assert b.bisect_run(tree, ["t.py"], build=lambda t: build_kernel(t, options=options, cache_root=tmp_path / "c"),
                        test=fake_test(0, JUNIT_PASS), notify=lambda m: None) == 128  # fmt: skip


def test_read_junit_counts(tmp_path: Path) -> None:
    p = tmp_path / "j.xml"
    p.write_text(JUNIT_FAIL)
    out = b.read_junit(p)
    assert (out.passed, out.failed, out.infra) == (0, 1, 0)
    assert "link lines differ" in out.first_failure
    p.write_text(JUNIT_BOOT)
    assert b.read_junit(p).infra == 1
    p.write_text(JUNIT_BOOT_WORDS)
    assert (b.read_junit(p).infra, b.read_junit(p).failed) == (0, 1)
    p.write_text(_suite(JUNIT_SKIPPED, JUNIT_PASS))
    out = b.read_junit(p)
    assert (out.passed, out.skipped, out.recorded) == (1, 2, True)
    assert out.first_skip == "test_a: bpftrace is missing"
    assert b.read_junit(tmp_path / "missing.xml") == b.Outcome()


def test_absolutize_args(tmp_path: Path) -> None:
    (tmp_path / "t.py").write_text("")
    out = b.absolutize_args(["t.py::test_x", "-k", "hello", "--engine", "qemu", "/abs/t.py"], tmp_path)
    assert out == [f"{tmp_path}/t.py::test_x", "-k", "hello", "--engine", "qemu", "/abs/t.py"]


# ---- a scripted fake kernel tree ------------------------------------------------------------------

FAKE_RELEASE = "6.1.192-virtme"

FAKE_VNG = textwrap.dedent(
    """\
    #!/usr/bin/env python3
    # Stand-in for virtme-ng: --kconfig writes .config from the --configitem list, --build
    # writes a bzImage header (fails when the tree holds BUILD_BREAKS) and counts builds.
    import os, struct, sys
    args = sys.argv[1:]
    if "--kconfig" in args:
        items = [args[i + 1] for i, a in enumerate(args) if a == "--configitem"]
        if "--dry-run" in args:  # the item list only, like virtme-configkernel --dry-run
            print("##: Generic\\nCONFIG_VIRTIO=y\\nCONFIG_DRM=y\\n# CONFIG_USB is not set")
            print("\\n".join(items))
            sys.exit(0)
        open(".config", "w").write("\\n".join(items) + "\\n")
        open(".kconfig-runs", "a").write("x")
        sys.exit(0)
    if "--build" in args:
        open(".build-runs", "a").write("x")
        if os.path.exists("BUILD_BREAKS"):
            print("drivers/foo.c:1:1: error: expected ';'")
            sys.exit(2)
        os.makedirs("arch/x86/boot", exist_ok=True)
        data = bytearray(0x1000)
        data[0x202:0x206] = b"HdrS"
        struct.pack_into("<H", data, 0x20E, 0x400)
        text = b"%s (builder@host) #1 SMP" % os.environ.get("FAKE_RELEASE", "RELEASE").encode()
        data[0x600:0x600 + len(text)] = text
        open("arch/x86/boot/bzImage", "wb").write(bytes(data))
        open("Module.symvers", "w").write("")
        sys.exit(0)
    sys.exit(64)
    """
).replace("RELEASE", FAKE_RELEASE)

FAKE_MAKEFILE = textwrap.dedent(
    """\
    olddefconfig:
    \t@true
    allnoconfig:
    \tcp $(KCONFIG_ALLCONFIG) .config
    \tprintf x >> .allnoconfig-runs
    modules_install:
    \tmkdir -p $(INSTALL_MOD_PATH)/lib/modules/%s
    \ttouch $(INSTALL_MOD_PATH)/lib/modules/%s/modules.dep
    """
) % (FAKE_RELEASE, FAKE_RELEASE)


def make_fake_tree(root: Path, git: bool = True) -> Path:
    tree = root / "linux"
    (tree / "arch" / "x86").mkdir(parents=True)
    (tree / "scripts").mkdir()
    (tree / "Makefile").write_text(FAKE_MAKEFILE)
    (tree / "Kconfig").write_text("mainmenu fake\n")
    (tree / "kernel.c").write_text("int x;\n")
    (tree / "scripts" / "config").write_text("#!/bin/sh\nexit 0\n")
    (tree / "scripts" / "config").chmod(0o755)
    (tree / ".gitignore").write_text(".*\narch/x86/boot/\nModule.symvers\n")
    if git:
        _git(tree, "init", "-q")
        _git(tree, "add", "-A")
        _git(tree, "commit", "-qm", "v1")
    return tree


def _git(tree: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}  # fmt: skip
    return subprocess.run(["git", "-C", str(tree), *args], check=True, capture_output=True, text=True,
                          env=env).stdout  # fmt: skip


@pytest.fixture
def fake_vng(tmp_path: Path) -> Path:
    path = tmp_path / "bin" / "vng"
    path.parent.mkdir()
    path.write_text(FAKE_VNG)
    path.chmod(0o755)
    return path


def opts(vng: Path, **kw: object) -> BuildOptions:
    return BuildOptions(vng=str(vng), **kw)  # type: ignore[arg-type]


def runs(tree: Path, what: str) -> int:
    p = tree / f".{what}-runs"
    return len(p.read_text()) if p.exists() else 0


@pytest.mark.skipif(shutil.which("git") is None or shutil.which("make") is None, reason="needs git and make")
class TestBuildCache:
    def test_build_then_cached_until_the_tree_changes(self, tmp_path: Path, fake_vng: Path) -> None:
        tree = make_fake_tree(tmp_path)
        cache = tmp_path / "cache"
        first = build_kernel(tree, options=opts(fake_vng), cache_root=cache)
        assert not first.cached and first.steps == ("configure", "build", "modules_install")
        assert first.kernel.release == FAKE_RELEASE and first.kernel.build_dir == tree.resolve()
        assert first.kernel.image == tree.resolve() / "arch/x86/boot/bzImage"
        assert (first.modules_dir / "modules.dep").exists()
        assert modules_dir_for(first.kernel, cache) == first.modules_dir
        assert read_config(tree / ".config")["CRYPTO_USER"] == "m"

        again = build_kernel(tree, options=opts(fake_vng), cache_root=cache)
        assert again.cached and again.kernel == first.kernel
        assert (runs(tree, "allnoconfig"), runs(tree, "build")) == (1, 1)

        (tree / "kernel.c").write_text("int x = 1;\n")  # uncommitted edit
        third = build_kernel(tree, options=opts(fake_vng), cache_root=cache)
        assert not third.cached and third.steps == ("build", "modules_install")  # same config: no reconfigure
        assert build_kernel(tree, options=opts(fake_vng), cache_root=cache).cached

        _git(tree, "commit", "-qam", "v2")  # same content, new HEAD: a new key
        assert not build_kernel(tree, options=opts(fake_vng), cache_root=cache).cached
        assert runs(tree, "build") == 3

    def test_config_change_reconfigures(self, tmp_path: Path, fake_vng: Path) -> None:
        tree = make_fake_tree(tmp_path)
        cache = tmp_path / "cache"
        build_kernel(tree, options=opts(fake_vng), cache_root=cache)
        rt = build_kernel(tree, options=opts(fake_vng, extra_config=("CONFIG_PREEMPT_RT=y",)), cache_root=cache)
        assert rt.steps[0] == "configure" and runs(tree, "allnoconfig") == 2
        assert read_config(tree / ".config")["PREEMPT_RT"] == "y"

    def test_defconfig_base_is_vng_kconfig(self, tmp_path: Path, fake_vng: Path) -> None:
        tree = make_fake_tree(tmp_path)
        build_kernel(tree, options=opts(fake_vng, base="defconfig"), cache_root=tmp_path / "cache")
        assert (runs(tree, "kconfig"), runs(tree, "allnoconfig")) == (1, 0)

    def test_key_ignores_build_outputs_and_notices_new_files(self, tmp_path: Path, fake_vng: Path) -> None:
        tree = make_fake_tree(tmp_path)
        key = cache_key(tree, BuildOptions())
        build_kernel(tree, options=opts(fake_vng), cache_root=tmp_path / "cache")
        assert cache_key(tree, BuildOptions()) == key  # .config, bzImage, markers are ignored files
        (tree / "new.c").write_text("int y;\n")
        assert cache_key(tree, BuildOptions()) != key
        assert cache_key(tree, BuildOptions(btf=True)) != cache_key(tree, BuildOptions())

    def test_non_git_tree_uses_mtimes(self, tmp_path: Path, fake_vng: Path) -> None:
        tree = make_fake_tree(tmp_path, git=False)
        assert tree_state(tree).startswith("mtime:")
        cache = tmp_path / "cache"
        assert not build_kernel(tree, options=opts(fake_vng), cache_root=cache).cached
        assert build_kernel(tree, options=opts(fake_vng), cache_root=cache).cached
        src = tree / "kernel.c"
        st = src.stat()
        os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
        assert not build_kernel(tree, options=opts(fake_vng), cache_root=cache).cached

    def test_build_failure_is_a_clear_error(self, tmp_path: Path, fake_vng: Path) -> None:
        tree = make_fake_tree(tmp_path)
        (tree / "BUILD_BREAKS").write_text("")
        with pytest.raises(KernelBuildError, match="kernel build failed") as info:
            build_kernel(tree, options=opts(fake_vng), cache_root=tmp_path / "cache")
        assert "expected ';'" in str(info.value)  # the log tail is in the message
        assert isinstance(info.value, HarnessError)

    def test_missing_required_config_is_reported(self, tmp_path: Path, fake_vng: Path) -> None:
        tree = make_fake_tree(tmp_path)
        with pytest.raises(KernelBuildError, match="CONFIG_CRYPTO_USER=m"):
            build_kernel(tree, options=opts(fake_vng, extra_config=("CRYPTO_USER=n",)), cache_root=tmp_path / "c")

    def test_resolve_kernel_spec(self, tmp_path: Path, fake_vng: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        tree = make_fake_tree(tmp_path)
        monkeypatch.setenv("KNH_VNG", str(fake_vng))
        kernel = resolve_kernel_spec(str(tree), cache_root=tmp_path / "cache")
        assert kernel.release == FAKE_RELEASE and kernel.build_dir == tree.resolve()
        plain = tmp_path / "notatree"
        plain.mkdir()
        with pytest.raises(KernelNotFoundError, match="not a kernel source tree"):
            resolve_kernel_spec(str(plain))
        assert is_kernel_tree(tree) and not is_kernel_tree(plain)


def test_tiny_fragment_keeps_virtme_guest_items_and_drops_the_unneeded() -> None:
    listing = "##: Generic\nCONFIG_VIRTIO=y\nCONFIG_DRM=y\nCONFIG_KVM=y\n# CONFIG_USB is not set\nCONFIG_9P_FS=y\n"
    items = config_items(listing)
    assert items == {"VIRTIO": "y", "DRM": "y", "KVM": "y", "USB": "n", "9P_FS": "y"}
    frag = tiny_fragment(items, BuildOptions(extra_config=("CONFIG_PREEMPT_RT=y",)))
    assert frag["VIRTIO"] == "y" and frag["64BIT"] == "y" and frag["PREEMPT_RT"] == "y"
    assert frag["CRYPTO_USER"] == "m"
    assert "DRM" not in frag and "KVM" not in frag and "USB" not in frag


def test_build_options_from_env() -> None:
    o = BuildOptions.from_env({"KNH_KERNEL_BTF": "1", "KNH_KERNEL_CONFIG": "PREEMPT_RT=y X=m", "KNH_KERNEL_JOBS": "3"})
    assert o.btf and o.extra_config == ("PREEMPT_RT=y", "X=m") and o.jobs == 3 and o.base == "tiny"
    assert o.config()["DEBUG_INFO_BTF"] == "y"
    with pytest.raises(KernelBuildError, match="KNH_KERNEL_BASE"):
        BuildOptions.from_env({"KNH_KERNEL_BASE": "huge"})


def test_required_config_covers_what_the_harness_needs() -> None:
    for name in ("MODULES", "NET_9P_VIRTIO", "9P_FS", "VIRTIO_PCI", "VIRTIO_MMIO", "VIRTIO_CONSOLE", "OVERLAY_FS"):
        assert REQUIRED_CONFIG[name] == "y"
    assert REQUIRED_CONFIG["CRYPTO_USER"] == "m"


# ---- the CLI under `git bisect run` ---------------------------------------------------------------

PROBE_TEST = textwrap.dedent(
    """\
    import os
    from pathlib import Path

    def test_module_still_works():
        # stands in for a kernel test: "broken" from the commit that adds REGRESSION
        assert not (Path(os.environ["FAKE_TREE"]) / "REGRESSION").exists(), "link lines differ"
    """
)


@pytest.mark.skipif(shutil.which("git") is None or shutil.which("make") is None, reason="needs git and make")
def test_git_bisect_run_end_to_end(tmp_path: Path, fake_vng: Path) -> None:
    """History: c1 good, c2 good, c3 introduces the regression, c4 does not build, c5 bad.
    Single steps give 0 / 125 / 1; git bisect run with the real CLI names c3."""
    tree = make_fake_tree(tmp_path)  # c1
    probe = tmp_path / "probe" / "test_probe.py"
    probe.parent.mkdir()
    probe.write_text(PROBE_TEST)

    def commit(message: str, add: str = "", remove: str = "") -> str:
        if add:
            (tree / add).write_text("x\n")
        if remove:
            (tree / remove).unlink()
        _git(tree, "add", "-A")
        _git(tree, "commit", "-qm", message)
        return _git(tree, "rev-parse", "HEAD").strip()

    c1 = _git(tree, "rev-parse", "HEAD").strip()
    c2 = commit("c2", add="a.c")
    c3 = commit("c3 regression", add="REGRESSION")
    c4 = commit("c4 breaks the build", add="BUILD_BREAKS")
    commit("c5 fixes the build", remove="BUILD_BREAKS")

    env = {**os.environ, "KNH_VNG": str(fake_vng), "FAKE_TREE": str(tree), "XDG_CACHE_HOME": str(tmp_path / "xdg"),
           "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t", "PYTHONPATH": str(ROOT)}  # fmt: skip
    env.pop("KNH_KERNEL", None)
    cli = [sys.executable, "-m", "harness", "bisect-run", "--", str(probe), "-p", "no:cacheprovider", "-q"]

    def step() -> subprocess.CompletedProcess[str]:
        return subprocess.run(cli, cwd=tree, env=env, capture_output=True, text=True, timeout=300)

    tip = step()
    assert tip.returncode == 1, tip.stderr[-2000:]
    assert "bad: 1 test(s) failed" in tip.stderr
    _git(tree, "checkout", "-q", c4)
    no_build = step()
    assert no_build.returncode == 125, no_build.stderr[-2000:]
    assert "the kernel did not build" in no_build.stderr
    _git(tree, "checkout", "-q", c2)
    good = step()
    assert good.returncode == 0, good.stderr[-2000:]
    _git(tree, "checkout", "-q", "master")

    subprocess.run(["git", "bisect", "start", "master", c1], cwd=tree, env=env, check=True, capture_output=True)
    result = subprocess.run(["git", "bisect", "run", *cli], cwd=tree, env=env, capture_output=True, text=True,
                            timeout=600)  # fmt: skip
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-3000:]
    assert f"{c3} is the first bad commit" in out


def test_a_malformed_configitem_aborts_before_any_build(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """`--configitem CONFIG_FOO` (no =value) is a usage error: exit 128 (abort) at once; building with it
    would fail on every commit, each one skipped (125), and the bisection would end on skips alone."""
    import harness.cli.bisect_run
    from harness.cli import commands as cli

    calls: list[object] = []
    monkeypatch.setattr(harness.cli.bisect_run, "bisect_run", lambda *a, **k: calls.append(a) or 125)
    status = cli.main(["bisect-run", "--kernel-tree", str(tmp_path), "--configitem", "CONFIG_FOO", "-q", "--",
                       "tests/kernel/test_seed.py"])  # fmt: skip
    assert status == harness.cli.bisect_run.EXIT_ABORT and calls == []
    assert cli.main(["bisect-run", "--kernel-tree", str(tmp_path), "--configitem", "CONFIG_FOO=y", "-q", "--",
                     "tests/kernel/test_seed.py"]) == 125  # fmt: skip
