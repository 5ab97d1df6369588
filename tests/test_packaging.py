"""The sdist and the wheel carry what a guest needs, so a plain ``pip install`` boots guests.

Builds both once with ``python -m build`` (the sdist from a copy of the checkout, the wheel from
that sdist, as pip would) and checks their contents against the source tree: the guest scripts
with their run bits, the bpftrace programs, the splat allowlist, every harness module; and that
the host imports the payload escaping it shares with the guest from the wheel alone.
"""

from __future__ import annotations

import importlib.util
import shutil
import stat
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GUEST_SCRIPTS = ROOT / "guest_scripts"


@dataclass(frozen=True)
class Dist:
    """A built distribution's members: path inside the package -> file mode."""

    path: Path
    modes: dict[str, int]


def _source_files(directory: Path) -> dict[str, int]:
    """Files under `directory` (relative path -> mode), without caches."""
    return {
        p.relative_to(directory).as_posix(): p.stat().st_mode
        for p in sorted(directory.rglob("*"))
        if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"
    }


def _copy_checkout(dest: Path) -> None:
    """What a fresh clone has: the tracked files and new ones that .gitignore does not name."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            cwd=ROOT, capture_output=True, check=True).stdout  # fmt: skip
    for name in filter(None, listed.decode().split("\0")):
        source = ROOT / name
        if source.is_symlink() or source.is_file():  # a file deleted in the work tree is still listed
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name, follow_symlinks=False)


@pytest.fixture(scope="module")
def dists(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Dist, Dist]]:
    if importlib.util.find_spec("build") is None:
        pytest.fail("the packaging check needs `build`; install the dev extras: python3 -m pip install -e '.[dev]'")
    tmp = tmp_path_factory.mktemp("packaging")
    src = tmp / "src"
    _copy_checkout(src)
    out = tmp / "dist"
    proc = subprocess.run([sys.executable, "-m", "build", "--outdir", str(out), str(src)],
                          capture_output=True, text=True, timeout=900, check=False)  # fmt: skip
    assert proc.returncode == 0, f"python -m build failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    (sdist_path,) = out.glob("*.tar.gz")
    (wheel_path,) = out.glob("*.whl")
    with tarfile.open(sdist_path) as tar:
        members = [m for m in tar.getmembers() if m.isfile()]
    top = members[0].name.split("/")[0]  # knetlink_harness-<version>
    sdist = Dist(sdist_path, {m.name.removeprefix(f"{top}/"): m.mode for m in members})
    with zipfile.ZipFile(wheel_path) as whl:
        wheel = Dist(wheel_path, {i.filename: i.external_attr >> 16 for i in whl.infolist()})
    yield sdist, wheel


@pytest.mark.parametrize("kind, prefix", [("sdist", "guest_scripts/"), ("wheel", "harness/guest_scripts/")])
def test_every_guest_script_and_bpf_program_is_carried_with_its_run_bits(
    dists: tuple[Dist, Dist], kind: str, prefix: str
) -> None:
    dist = dists[0] if kind == "sdist" else dists[1]
    source = _source_files(GUEST_SCRIPTS)
    assert {"payload.py", "nl_send.py", "fast-init", "guest-shell"} <= source.keys()
    assert any(name.startswith("bpf/") and name.endswith(".bt") for name in source)
    missing = sorted(name for name in source if prefix + name not in dist.modes)
    assert missing == [], f"{dist.path.name} lacks these guest files: {missing}"
    runnable = {name for name, mode in source.items() if mode & stat.S_IXUSR}
    assert {"fast-init", "guest-shell"} <= runnable, "fast-init and guest-shell lost their run bits in the checkout"
    lost = sorted(name for name in runnable if not dist.modes[prefix + name] & stat.S_IXUSR)
    assert lost == [], f"{dist.path.name} carries these without their run bits: {lost}"


@pytest.mark.parametrize("kind, prefix", [("sdist", "harness/"), ("wheel", "harness/")])
def test_every_harness_module_and_the_splat_allowlist_are_carried(
    dists: tuple[Dist, Dist], kind: str, prefix: str
) -> None:
    dist = dists[0] if kind == "sdist" else dists[1]
    source = {name for name in _source_files(ROOT / "harness") if name.endswith(".py")} | {"splat_allowlist.txt"}
    missing = sorted(name for name in source if prefix + name not in dist.modes)
    assert missing == [], f"{dist.path.name} lacks: {missing} (list new packages in pyproject's [tool.setuptools])"


def test_wheel_alone_imports_the_payload_escaping(dists: tuple[Dist, Dist], tmp_path: Path) -> None:
    """harness.guest_scripts.payload, and the link: decoder that uses it, import from the wheel alone."""
    site = tmp_path / "site"
    with zipfile.ZipFile(dists[1].path) as whl:
        whl.extractall(site)
    code = r"""
import sys
sys.path.insert(0, sys.argv[1])
import harness.guest_scripts.payload as payload, harness.knetlink.links as links
assert links.unescape_payload is payload.unescape_payload
assert links.parse_link_text(r'link:a\\\x0a').payload == b'a\\\n'
print(payload.__file__)
"""
    proc = subprocess.run([sys.executable, "-I", "-S", "-c", code, str(site)],  # -I -S: no checkout, no site-packages
                          capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert Path(proc.stdout.strip()) == site / "harness" / "guest_scripts" / "payload.py"
