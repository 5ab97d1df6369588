"""Fixtures shared by the harness's host-only tests."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

FakeKo = Callable[..., Path]


@pytest.fixture
def fake_ko(tmp_path: Path) -> FakeKo:
    """make(depends="a,b", name="x") -> a tiny ELF object with a .modinfo section, which modinfo reads
    like a module's (a fake Makefile copies it as its .ko): builds need no kernel."""

    def make(depends: str = "", name: str = "fake") -> Path:
        work = tmp_path / "fake-ko"
        work.mkdir(exist_ok=True)
        obj, info, ko = work / f"{name}.o", work / f"{name}.modinfo", work / f"{name}-{len(depends)}.ko"
        subprocess.run(["gcc", "-c", "-x", "c", "-", "-o", str(obj)], input="int knh_fake;\n", text=True, check=True)
        info.write_bytes(f"license=GPL\0depends={depends}\0name={name}\0".encode())
        subprocess.run(["objcopy", "--add-section", f".modinfo={info}", str(obj), str(ko)], check=True)
        return ko

    return make
