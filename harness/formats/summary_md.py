"""A run's summary for people: summary.md, the GitHub job summary and `::error` annotations.

Pure functions of the summary dict harness.pytest_plugin.report writes as summary.json: per kernel the counts,
then each distinct failure once (failing splats grouped by fingerprint across tests and kernels,
with the decoded top frames, the tests and kernels it hit, the reproduce command, the artifacts;
then failed tests without a splat), kernels that broke between tests, skipped tests with reasons.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

COUNTED = ("passed", "failed", "error", "skipped")
COUNTED_IF_ANY = ("xfailed", "xpassed")  # a column only when a kernel has such a test


@dataclass
class FailureGroup:
    """One distinct failure: a splat fingerprint, or a test that failed without a splat."""

    title: str
    kind: str
    fingerprints: list[str] = field(default_factory=list)
    heading: str = ""
    frames: list[dict[str, Any]] = field(default_factory=list)
    tests: list[str] = field(default_factory=list)
    kernels: list[str] = field(default_factory=list)
    failures: list[dict[str, Any]] = field(default_factory=list)  # the failure records of its tests

    def add(self, test: str, kernel: str) -> None:
        if test not in self.tests:
            self.tests.append(test)
        if kernel not in self.kernels:
            self.kernels.append(kernel)


def group_key(splat: Mapping[str, Any]) -> str:
    """What makes two failing splats the same bug: the kind, the site and the module's own frames
    (the kernel's frames around them differ between kernel versions: 6.1 loads a module through
    __do_sys_finit_module, 6.12 through init_module_from_file); the fingerprint when no module
    frame is named."""
    frames = splat.get("module_frames") or []
    if not frames:
        return str(splat["fingerprint"])
    site = str(splat["fingerprint"]).split(":")[1] if ":" in splat["fingerprint"] else "-"
    return ":".join([splat["kind"], site, *frames])


def failure_groups(summary: Mapping[str, Any]) -> list[FailureGroup]:
    """Failing splats grouped by bug (group_key), in order of first sight, then failed tests without one."""
    failures = {f["test"]: f for f in summary.get("failures", ())}
    groups: dict[str, FailureGroup] = {}
    for splat in summary.get("splats", ()):
        if splat["allowed"]:
            continue
        group = groups.setdefault(group_key(splat), FailureGroup(
            title=splat["kind"], kind=splat["kind"], heading=splat.get("heading", "")))  # fmt: skip
        if splat["fingerprint"] not in group.fingerprints:
            group.fingerprints.append(splat["fingerprint"])
        group.add(splat["test"], splat["kernel"])
        if not group.frames and splat.get("frames"):
            group.frames = list(splat["frames"])
        if splat["test"] in failures and failures[splat["test"]] not in group.failures:
            group.failures.append(failures[splat["test"]])
    out = list(groups.values())
    in_groups = {t for g in out for t in g.tests}
    for test, failure in failures.items():
        if test not in in_groups:
            group = FailureGroup(title=f"{test} failed", kind="test", heading=failure["message"])
            group.add(test, failure["kernel"])
            group.failures.append(failure)
            out.append(group)
    return out


def _hit(group: FailureGroup) -> str:
    tests = f"{len(group.tests)} test{'s' if len(group.tests) != 1 else ''}"
    return f"on {' and '.join(group.kernels)}, {tests}"


def _frame_line(frame: Mapping[str, Any]) -> str:
    inlined = "".join(f"; inlined into {i}" for i in frame.get("inlined_into", ()))
    return f"`{frame['frame']}` → `{frame['file']}:{frame['line']}` ({frame['function']}{inlined})"


def render_markdown(summary: Mapping[str, Any], title: str) -> str:
    """summary.md: counts per kernel, each distinct failure once, broken kernels, skips, reports."""
    lines = [f"# knetlink-harness: {title}", "", f"engine: {summary.get('engine', '?')}", ""]
    per_kernel = summary.get("per_kernel", {})
    counted = COUNTED + tuple(c for c in COUNTED_IF_ANY if any(c in row for row in per_kernel.values()))
    lines += ["| kernel | " + " | ".join(counted) + " |", "|---|" + "---|" * len(counted)]
    for kernel, counts in per_kernel.items():
        lines.append(f"| {kernel} | " + " | ".join(str(counts.get(c, 0)) for c in counted) + " |")
    groups = failure_groups(summary)
    lines += ["", f"## Distinct failures: {len(groups)}"]
    for n, group in enumerate(groups, 1):
        lines += ["", f"### {n}. {group.title} {_hit(group)}"]
        if group.fingerprints:
            lines.append("fingerprint " + ", ".join(f"`{fp}`" for fp in group.fingerprints))
        if group.heading:
            lines += ["", "```", group.heading, "```"]
        if group.frames:
            lines += ["", "Decoded frames:"] + [f"- {_frame_line(f)}" for f in group.frames]
        lines += ["", "Tests:"] + [f"- `{t}`" for t in group.tests]
        for failure in group.failures[:1]:
            lines += ["", f"Reproduce: `{failure['reproduce']}`"]
            lines += ["", "Artifacts:"] + [f"- {a}" for a in failure["artifacts"]]
    crashes = summary.get("crashes", ())
    if crashes:
        lines += ["", f"## Kernels that broke outside a test: {len(crashes)}"]
        lines += [f"- {c['kernel']}: {c['phase']}, after `{c['previous_test']}` (reported on `{c['test']}`)"
                  for c in crashes]  # fmt: skip
    skips = summary.get("skipped", ())
    if skips:
        lines += ["", f"## Skipped kernel tests: {len(skips)}"]
        lines += [f"- {s['kernel']}: `{s['test']}`: {s['reason']}" for s in skips]
    reports = [c["report"] for c in summary.get("coverage", ()) if c.get("report")]
    if reports:
        lines += ["", "## Module coverage"] + [f"- {r}" for r in reports]
    return "\n".join(lines) + "\n"


def _escape(text: str, *, prop: bool = False) -> str:
    """GitHub workflow-command escaping (a property value also escapes ':' and ',')."""
    text = text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")
    return text.replace(":", "%3A").replace(",", "%2C") if prop else text


def github_annotations(summary: Mapping[str, Any]) -> list[str]:
    """One `::error` at each failing test, and one at the module source line of each distinct splat's
    top decoded frame."""
    out = []
    for f in summary.get("failures", ()):
        title = _escape(f"{f['test']} [{f['kernel']}]", prop=True)
        out.append(f"::error file={_escape(f['file'], prop=True)},line={f['line']},title={title}::"
                   f"{_escape(f['message'])}")  # fmt: skip
    for group in failure_groups(summary):
        if group.frames:
            top = group.frames[0]
            title = _escape(f"{group.kind} in {top['function']} ({_hit(group)})", prop=True)
            out.append(f"::error file={_escape(top['file'], prop=True)},line={top['line']},title={title}::"
                       f"{_escape(group.heading or group.fingerprints[0])}")  # fmt: skip
    return out


def terminal_groups(summary: Mapping[str, Any]) -> Sequence[str]:
    """The failing splats, one line per distinct fingerprint, for the terminal summary."""
    out = []
    for group in failure_groups(summary):
        if not group.fingerprints:
            continue
        top = group.frames[0] if group.frames else None
        where = f"; {top['file']}:{top['line']} ({top['function']})" if top else ""
        out.append(f"  {', '.join(group.fingerprints)}: {_hit(group)}{where}")
    return out


def append_step_summary(markdown: str) -> None:
    """Under GitHub Actions (GITHUB_STEP_SUMMARY set), add `markdown` to the job's summary page."""
    path = os.environ.get("GITHUB_STEP_SUMMARY")
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(markdown)
