"""ELF objects compiled on the host for the tests that read a module's functions: a .ko is an ELF relocatable
object, and a `gcc -c` object has the same symbol table layout."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest


def gcc_object(directory: Path, name: str, source: str) -> Path:
    """`source` compiled with `gcc -O2 -c` into `directory`/`name`; the test is skipped on a host without gcc."""
    if shutil.which("gcc") is None:
        pytest.skip("needs gcc")
    src = directory / (Path(name).stem + ".c")
    src.write_text(source)
    out = directory / name
    subprocess.run(["gcc", "-O2", "-c", str(src), "-o", str(out)], check=True)
    return out
