"""``python -m harness bisect-run``: one step of ``git bisect run`` in a kernel tree.

For the commit checked out in the tree: build its kernel (harness.build.kernel_build,
cached by tree state), run the chosen tests against it in a pytest subprocess
(``--kernel <the built bzImage>``), and turn the outcome into the exit status
git bisect understands:

====  =========================================================================
   0  good: pytest passed and at least one test passed
   1  bad: a test failed (including a module that no longer builds or loads,
      and a guest that died under a test: that is what a module bisect hunts)
 125  skip: this commit was not tested: its kernel did not configure or build,
      it was built but did not boot / was unusable (see ``on_infra``), or no
      test passed (every test skipped, or none collected: pytest exit 5)
 128  abort the bisection: the harness is broken in a way that does not
      depend on the commit (pytest usage error or internal error,
      interrupted, no test results written, a missing host tool, not a tree)
====  =========================================================================

git bisect run treats 125 as "skip", 1..127 as "bad" and anything >= 128 as
"stop". A boot failure is reported as skip by default (``--on-boot-failure``
changes it to ``bad`` when the regression hunted is "the kernel stopped
booting", or ``abort``): a commit whose kernel does not boot says nothing
about the module.

The build and test steps are injectable callables, so the contract is tested
without building a kernel (tests/test_bisect.py).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from harness.build.config_items import BuildOptions
from harness.build.kernel import Kernel
from harness.build.kernel_build import build_kernel
from harness.build.progress import Notify
from harness.config import PROJECT_ROOT
from harness.errors import HarnessError, KernelBuildError
from harness.formats.junit import Outcome, read_junit

EXIT_GOOD = 0
EXIT_BAD = 1
EXIT_SKIP = 125
EXIT_ABORT = 128

ON_INFRA_CHOICES = {"skip": EXIT_SKIP, "bad": EXIT_BAD, "abort": EXIT_ABORT}

# pytest exit statuses (pytest.ExitCode): 0 ok, 1 tests failed, 2 interrupted, 3 internal error,
# 4 usage error, 5 no tests collected.
PYTEST_OK, PYTEST_FAILED, PYTEST_NO_TESTS = 0, 1, 5

BuildStep = Callable[[Path], Kernel]  # raises KernelBuildError when the commit does not build
TestStep = Callable[[Kernel, Sequence[str], Path], int]  # (kernel, pytest args, junit path) -> pytest status


def verdict(pytest_status: int, outcome: Outcome, on_infra: str = "skip") -> tuple[int, str]:
    """The bisect exit status for a pytest run, and a one-line reason."""
    if pytest_status == PYTEST_NO_TESTS:
        return EXIT_SKIP, "skip: pytest collected no tests, so nothing was tested (check the test selection after --)"
    if pytest_status == PYTEST_OK:
        return _passed_verdict(outcome)
    if pytest_status != PYTEST_FAILED:
        return EXIT_ABORT, f"abort: pytest exited {pytest_status} (interrupted, internal or usage error)"
    if outcome.failed:
        return EXIT_BAD, f"bad: {outcome.failed} test(s) failed, e.g. {outcome.first_failure}"
    if outcome.infra:
        reason = f"the kernel was built but could not be tested ({outcome.infra} test(s): boot failure)"
        return ON_INFRA_CHOICES[on_infra], f"{on_infra}: {reason}"
    # pytest says failed but the JUnit file shows nothing (it crashed before writing it): be safe.
    return EXIT_ABORT, "abort: pytest reported failures but wrote no test results"


def _passed_verdict(outcome: Outcome) -> tuple[int, str]:
    """Verdict for pytest exit 0: good only when at least one test actually passed."""
    if not outcome.recorded:
        return EXIT_ABORT, ("abort: pytest exited 0 but wrote no JUnit results to read; fix: do not pass "
                            "--junitxml or -p no:junitxml in the pytest arguments")  # fmt: skip
    if outcome.passed == 0:
        example = f", e.g. {outcome.first_skip}" if outcome.first_skip else ""
        return EXIT_SKIP, f"skip: no test passed ({outcome.skipped} skipped{example}), so nothing was tested"
    return EXIT_GOOD, f"good: {outcome.passed} test(s) passed"


def absolutize_args(args: Sequence[str], cwd: Path) -> list[str]:
    """Make test path arguments (``tests/x.py``, ``tests/x.py::test_y``) absolute against cwd,
    since pytest runs from the project root while git bisect runs us in the kernel tree."""
    out = []
    for arg in args:
        head = arg.split("::", 1)[0]
        if arg.startswith("-") or not head or os.path.isabs(head) or not (cwd / head).exists():
            out.append(arg)
        else:
            out.append(str((cwd / head).resolve()) + arg[len(head) :])
    return out


def default_test_step(kernel: Kernel, pytest_args: Sequence[str], junit: Path) -> int:
    """pytest in a subprocess against `kernel`; output goes to our stdout/stderr."""
    argv = [sys.executable, "-m", "pytest", "--kernel", str(kernel.image), f"--junitxml={junit}", *pytest_args]
    env = dict(os.environ)
    env.pop("KNH_KERNEL", None)  # --kernel wins anyway; do not let a matrix setting add kernels
    return subprocess.run(argv, cwd=PROJECT_ROOT, env=env, check=False).returncode


def default_build_step(options: BuildOptions, notify: Notify) -> BuildStep:
    def build(tree: Path) -> Kernel:
        return build_kernel(tree, options=options, notify=notify).kernel

    return build


def bisect_run(
    tree: Path,
    pytest_args: Sequence[str],
    *,
    build: BuildStep,
    test: TestStep = default_test_step,
    on_infra: str = "skip",
    notify: Notify = print,
) -> int:
    """One bisect step; returns the exit status (see the module docstring)."""
    head = _describe(tree)
    try:
        kernel = build(tree)
    except KernelBuildError as e:
        notify(f"bisect-run: {head}: skip (125): the kernel did not build\n{e}")
        return EXIT_SKIP
    except (HarnessError, OSError) as e:  # a missing tool, not a tree: nothing to do with the commit
        notify(f"bisect-run: {head}: abort ({EXIT_ABORT}): {e}")
        return EXIT_ABORT
    notify(f"bisect-run: {head}: kernel {kernel.release} ({kernel.image}); running pytest {' '.join(pytest_args)}")
    with tempfile.TemporaryDirectory(prefix="knh-bisect-") as tmp:
        junit = Path(tmp) / "junit.xml"
        try:
            status = test(kernel, list(pytest_args), junit)
        except OSError as e:
            notify(f"bisect-run: {head}: abort ({EXIT_ABORT}): could not run pytest: {e}")
            return EXIT_ABORT
        code, reason = verdict(status, read_junit(junit), on_infra)
    notify(f"bisect-run: {head}: {reason} -> exit {code}")
    return code


def _describe(tree: Path) -> str:
    proc = subprocess.run(["git", "-C", str(tree), "log", "-1", "--format=%h %s"], capture_output=True,
                          text=True, check=False)  # fmt: skip
    return proc.stdout.strip()[:80] if proc.returncode == 0 and proc.stdout.strip() else str(tree)
