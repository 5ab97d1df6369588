"""The project's pytest configuration (pyproject.toml) makes a misspelled marker an error.

Each test runs pytest on a generated test file next to a verbatim copy of the
project's pyproject.toml, so the options under test are the ones a real run uses.
"""

from __future__ import annotations

from pathlib import Path

import pytest

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"

MISSPELLED = """\
import pytest

@pytest.mark.module_parms(proto=31)
def test_with_a_typo():
    pass
"""

DECLARED = """\
import pytest

@pytest.mark.kernel
def test_kernel():
    pass

@pytest.mark.module_params(proto=31)
def test_module_params():
    pass

@pytest.mark.kernel_build
def test_kernel_build():
    pass
"""


@pytest.fixture
def project_pytester(pytester: pytest.Pytester) -> pytest.Pytester:
    (pytester.path / "pyproject.toml").write_text(PYPROJECT.read_text(encoding="utf-8"), encoding="utf-8")
    return pytester


def test_misspelled_marker_is_an_error(project_pytester: pytest.Pytester) -> None:
    project_pytester.makepyfile(test_typo=MISSPELLED)
    result = project_pytester.runpytest("test_typo.py")
    assert result.ret == pytest.ExitCode.INTERRUPTED
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*'module_parms' not found in `markers` configuration option*"])


def test_the_plugins_markers_are_declared(project_pytester: pytest.Pytester) -> None:
    project_pytester.makepyfile(test_declared=DECLARED)
    result = project_pytester.runpytest("--collect-only", "-q", "test_declared.py")
    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines(["*3 tests collected*"])
