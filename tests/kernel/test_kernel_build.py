"""Build a kernel from a source tree, boot it, run the seed test on it.

Runs in the kernel suite whenever a tree is configured (KNH_KERNEL_TREE); without
one it is skipped, and the skip and its reason are listed in the run's summary.
KNH_RUN_KERNEL_BUILD=1 (or --run-kernel-build) makes a missing tree a failure
instead, for CI jobs whose point is this build. The first build is slow (minutes on
2 cores), later runs hit the cache. The tree, e.g. from the Debian source:

    apt-get install linux-source-6.1
    mkdir -p /tmp/ksrc && tar -C /tmp/ksrc -xf /usr/src/linux-source-6.1.tar.xz
    KNH_RUN_KERNEL_BUILD=1 KNH_KERNEL_TREE=/tmp/ksrc/linux-source-6.1 \\
        .venv/bin/pytest tests/kernel/test_kernel_build.py -s

The measured time is printed and recorded in docs/kernels.md.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.build.config_items import BuildOptions
from harness.build.kernel_build import build_kernel
from harness.build.kernel_source import is_kernel_tree
from harness.config import HarnessConfig

pytestmark = [pytest.mark.kernel, pytest.mark.kernel_build]

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def kernel_tree(knh_config: HarnessConfig) -> Path:
    tree = Path(os.environ.get("KNH_KERNEL_TREE", ""))
    if not os.environ.get("KNH_KERNEL_TREE"):
        reason = "no kernel source tree configured: set KNH_KERNEL_TREE (see tests/kernel/test_kernel_build.py)"
        if knh_config.run_kernel_build:
            pytest.fail(f"{reason}; KNH_RUN_KERNEL_BUILD=1 / --run-kernel-build requires it", pytrace=False)
        pytest.skip(reason)
    if not is_kernel_tree(tree):
        pytest.fail(f"KNH_KERNEL_TREE={str(tree)!r} is not a kernel source tree (see this file's docstring)")
    return tree


def test_build_boot_and_seed(kernel_tree: Path) -> None:
    options = BuildOptions.from_env()
    start = time.monotonic()
    built = build_kernel(kernel_tree, options=options, notify=lambda m: print(f"[knh] {m}", flush=True))
    first = time.monotonic() - start
    print(f"\nkernel {built.kernel.release}: {'cached' if built.cached else 'built'} in {first:.0f} s "
          f"(steps {', '.join(built.steps) or 'none'}; log {built.log})")  # fmt: skip

    start = time.monotonic()
    again = build_kernel(kernel_tree, options=options)
    assert again.cached and again.kernel == built.kernel, "an unchanged tree must not be rebuilt"
    print(f"unchanged tree: cache hit in {time.monotonic() - start:.1f} s")

    engine = os.environ.get("KNH_ENGINE", "vng")
    argv = [sys.executable, "-m", "pytest", str(ROOT / "tests" / "kernel" / "test_seed.py"), "-v",
            "--kernel", str(built.kernel.image), "--engine", engine, "-p", "no:cacheprovider"]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "KNH_KERNEL"}
    start = time.monotonic()
    proc = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    print(proc.stdout[-3000:])
    took = time.monotonic() - start
    print(f"seed tests on {built.kernel.release} ({engine}): exit {proc.returncode} in {took:.0f} s")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert f"[{built.kernel.release}]" in proc.stdout  # test ids carry the release
