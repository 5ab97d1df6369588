"""Read the JUnit XML file of a pytest run: how many tests passed, were skipped, failed, and
how long the tests of each parameter (kernel) took.

Used by ``bisect-run`` (the verdict for a commit) and by ``bench`` (the size of
the suite it timed, the time per kernel).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

# The plugin records every failure's kind as a JUnit property: "infra" when the failing error's type
# says the kernel or host could not be used (HarnessError.infra: boot, missing tool, unusable
# kernel), "test" otherwise. Only that property counts, never a message's words.
FAILURE_KIND_PROPERTY = "knh_failure"


@dataclass(frozen=True)
class Outcome:
    """A test run's JUnit summary: how many passed, were skipped, failed for a test reason, failed for an
    infra reason. ``recorded`` is False when there was no readable JUnit file (every count is then 0)."""

    passed: int = 0
    failed: int = 0
    infra: int = 0
    first_failure: str = ""
    skipped: int = 0
    recorded: bool = False
    first_skip: str = ""

    @property
    def total(self) -> int:
        """Every test case in the file, whatever its outcome."""
        return self.passed + self.failed + self.infra + self.skipped


def _testcases(path: Path) -> list[ET.Element] | None:
    """The file's ``<testcase>`` elements; None when there is no readable JUnit file."""
    try:
        return list(ET.parse(path).getroot().iter("testcase"))
    except (OSError, ET.ParseError):
        return None


def read_junit(path: Path) -> Outcome:
    """Count test outcomes in a JUnit XML file; missing/unreadable file -> empty Outcome."""
    cases = _testcases(path)
    if cases is None:
        return Outcome()
    passed = failed = infra = skipped = 0
    first = first_skip = ""
    for case in cases:
        problems = [c for c in case if c.tag in ("failure", "error")]
        if not problems:
            skips = [c for c in case if c.tag == "skipped"]
            if skips:
                skipped += 1
                first_skip = first_skip or f"{case.get('name', '')}: {skips[0].get('message') or ''}"[:200]
            else:
                passed += 1
            continue
        text = " ".join((p.get("message") or "") + " " + (p.text or "") for p in problems)
        kinds = {p.get("value") for p in case.iter("property") if p.get("name") == FAILURE_KIND_PROPERTY}
        if kinds == {"infra"}:  # every failing phase of the test was an infra failure
            infra += 1
        else:
            failed += 1
            if not first:
                line = next(iter(text.strip().splitlines()), "")  # a failure may carry no message at all
                first = f"{case.get('classname', '')}::{case.get('name', '')}: {line[:200]}"
    return Outcome(passed, failed, infra, first, skipped, recorded=True, first_skip=first_skip)


def case_seconds(path: Path) -> list[float]:
    """Each test case's time (setup, call and teardown with pytest's default junit_duration_report),
    in the file's order; empty for a missing or unreadable file."""
    return [float(case.get("time") or 0.0) for case in _testcases(path) or []]


def seconds_by_param(path: Path, labels: Sequence[str]) -> dict[str, float]:
    """Summed test time per parameter label (e.g. per kernel: the label in a test id's brackets),
    from a JUnit XML file; labels no test carries are left out."""
    ordered = sorted(labels, key=len, reverse=True)  # "6.1.0-x" must not claim "6.12..." tests
    out: dict[str, float] = {}
    for case in _testcases(path) or []:
        params = (case.get("name") or "").partition("[")[2]
        label = next((lb for lb in ordered if lb in params), None)
        if label is not None:
            out[label] = out.get(label, 0.0) + float(case.get("time") or 0.0)
    return out


def merge_junit(paths: Sequence[Path]) -> ET.ElementTree:
    """One JUnit document of every <testsuite> in `paths` (shards of a run), under one <testsuites>
    with the totals summed; an unreadable file is left out."""
    root = ET.Element("testsuites")
    totals = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    for path in paths:
        try:
            top = ET.parse(path).getroot()
        except (OSError, ET.ParseError):
            continue
        for suite in [top] if top.tag == "testsuite" else top.findall("testsuite"):
            root.append(suite)
            for key in totals:
                totals[key] += int(suite.get(key, "0") or 0)
    for key, value in totals.items():
        root.set(key, str(value))
    return ET.ElementTree(root)
