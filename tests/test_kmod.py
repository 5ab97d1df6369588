from collections.abc import Callable
from pathlib import Path

import pytest

from harness.build.kernel import Kernel
from harness.build.module_build import build_module, source_key, warning_lines
from harness.errors import BuildError, HarnessError, HostKernelRefused
from harness.guest.kernel_ops import check_not_host, parse_taint

FakeKo = Callable[..., Path]  # the fake_ko fixture (tests/conftest.py)

K = Kernel("6.1.0-56-amd64", Path("/boot/vmlinuz-6.1.0-56-amd64"), Path("/kdir"))


def tree(tmp: Path) -> Path:
    src = tmp / "mod"
    src.mkdir()
    (src / "Makefile").write_text("all:\n")
    (src / "m.c").write_text("int x;\n")
    return src


def test_key_changes_with_sources_and_kernel(tmp_path: Path) -> None:
    src = tree(tmp_path)
    k1 = source_key(src, K, ())
    (src / "m.o").write_text("object files do not count")
    assert source_key(src, K, ()) == k1
    (src / "m.c").write_text("int y;\n")
    k2 = source_key(src, K, ())
    assert k2 != k1
    assert source_key(src, Kernel("6.12", K.image, K.build_dir), ()) != k2
    assert source_key(src, K, ("sender",)) != k2


def test_warning_lines() -> None:
    log = "CC m.o\nm.c:3:1: warning: unused variable 'x'\nLD m.ko\n"
    assert warning_lines(log) == ("m.c:3:1: warning: unused variable 'x'",)


def test_failed_build_raises_with_log_and_leaves_no_cache(tmp_path: Path) -> None:
    src = tmp_path / "bad"
    src.mkdir()
    (src / "Makefile").write_text("all:\n\t@echo 'm.c:1: error: boom'; exit 1\n")
    with pytest.raises(BuildError, match=r"m\.c:1: error: boom"):
        build_module(src, K, cache_root=tmp_path / "cache")
    assert not list((tmp_path / "cache" / "modules" / K.release).glob("bad-*"))


def test_build_is_cached(tmp_path: Path, fake_ko: FakeKo) -> None:
    src = tmp_path / "ok"
    src.mkdir()
    (src / "Makefile").write_text(f"all:\n\t@echo built >> count.txt; cp {fake_ko()} ok.ko\n")
    first = build_module(src, K, cache_root=tmp_path / "cache")
    second = build_module(src, K, cache_root=tmp_path / "cache")
    assert (first.cached, second.cached) == (False, True)
    assert second.module().name == "ok.ko"
    assert (second.directory / "count.txt").read_text() == "built\n"


def test_host_kernel_refused() -> None:
    with pytest.raises(HostKernelRefused, match="host kernel"):
        check_not_host("abc", "abc")
    with pytest.raises(HostKernelRefused):
        check_not_host("", "abc")
    check_not_host("guest-id", "host-id")


def test_taint_value_parsed_past_stray_console_lines() -> None:
    assert parse_taint("4096\n") == 4096
    # a background job's notice printed on the shared console before the value
    assert parse_taint("/bin/bash: line 60:  1026 Killed   bpftrace -f json x.bt\n12288\n") == 12288


def test_taint_without_a_value_is_a_clear_error() -> None:
    with pytest.raises(HarnessError, match="no taint value"):
        parse_taint("cat: /proc/sys/kernel/tainted: No such file or directory\n")


def test_key_changes_with_the_kernel_build_and_the_coverage_flag(tmp_path: Path) -> None:
    """A kernel rebuilt under the same release (new .config, new exported symbols, new image) gets a new
    module build; so does a coverage build."""
    src = tree(tmp_path)
    kdir = tmp_path / "kdir"
    kdir.mkdir()
    image = tmp_path / "bzImage"
    image.write_bytes(b"not an image")
    k = Kernel("6.1.0-virtme-debug", image, kdir)
    keys = {source_key(src, k, ())}
    (kdir / ".config").write_text("CONFIG_X=y\n")
    keys.add(source_key(src, k, ()))
    (kdir / "Module.symvers").write_text("0x1\tsym\tvmlinux\tEXPORT_SYMBOL\t\n")
    keys.add(source_key(src, k, ()))
    keys.add(source_key(src, k, (), coverage=True))
    assert len(keys) == 4
    assert source_key(src, k, ()) == source_key(src, k, ())


def test_key_changes_with_the_images_build_number(tmp_path: Path) -> None:
    src = tree(tmp_path)

    def image(version: bytes) -> Path:
        data = bytearray(0x400)
        data[0x202:0x206] = b"HdrS"
        data[0x20E:0x210] = (0x100).to_bytes(2, "little")
        data[0x300 : 0x300 + len(version)] = version
        path = tmp_path / f"bzImage-{len(list(tmp_path.glob('bzImage-*')))}"
        path.write_bytes(bytes(data))
        return path

    first = image(b"6.1.158-virtme-debug (root@host) #1 SMP PREEMPT_DYNAMIC Tue Dec  1 21:50:01 UTC 2026\0")
    again = image(b"6.1.158-virtme-debug (root@host) #2 SMP PREEMPT_DYNAMIC Tue Dec  1 23:10:12 UTC 2026\0")
    assert source_key(src, Kernel("6.1.158-virtme-debug", first, tmp_path), ()) != source_key(
        src, Kernel("6.1.158-virtme-debug", again, tmp_path), ())  # fmt: skip


def recording_makefile(ko: Path) -> str:
    return f"all:\n\t@echo '$(CURDIR) gcov=$(GCOV_PROFILE)' > where.txt; cp {ko} m.ko\n"


def test_coverage_build_is_separate_built_in_place_and_profiled(tmp_path: Path, fake_ko: FakeKo) -> None:
    """The module is built in its cache directory (the paths gcov records are that directory's), with
    GCOV_PROFILE=y for a coverage build, which is a cache entry of its own."""
    src = tmp_path / "cov"
    src.mkdir()
    (src / "Makefile").write_text(recording_makefile(fake_ko()))
    plain = build_module(src, K, cache_root=tmp_path / "cache")
    profiled = build_module(src, K, cache_root=tmp_path / "cache", coverage=True)
    assert plain.directory != profiled.directory and profiled.coverage and not plain.coverage
    assert (plain.directory / "where.txt").read_text() == f"{plain.directory} gcov=\n"
    assert (profiled.directory / "where.txt").read_text() == f"{profiled.directory} gcov=y\n"
    assert build_module(src, K, cache_root=tmp_path / "cache", coverage=True).cached


def test_interrupted_build_is_redone(tmp_path: Path, fake_ko: FakeKo) -> None:
    src = tmp_path / "int"
    src.mkdir()
    (src / "Makefile").write_text(recording_makefile(fake_ko()))
    first = build_module(src, K, cache_root=tmp_path / "cache")
    (first.directory / ".knh-built").unlink()  # as if the build had been killed before its end
    (first.directory / "stale.o").write_text("half-built")
    again = build_module(src, K, cache_root=tmp_path / "cache")
    assert again.directory == first.directory and not again.cached
    assert not (again.directory / "stale.o").exists()
