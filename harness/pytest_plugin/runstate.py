"""What one pytest run holds, in one typed object under one stash key.

The plugin's modules (harness.pytest_plugin.plugin: options and hooks; harness.pytest_plugin.fixtures;
harness.pytest_plugin.watch: the kernel watch; harness.pytest_plugin.report: artifacts and summaries)
share this state instead of a dozen loose stash keys.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from harness.build.config_items import BuildOptions
from harness.build.decode import DecodedFrame, frame_record
from harness.build.kernel import Kernel, expand_kernel_specs
from harness.build.kernel_build import resolve_kernel_spec
from harness.config import SETTINGS, HarnessConfig, resolve
from harness.errors import BuildExcluded, HarnessError
from harness.kernel_log.dmesg import AllowEntry, SplatReport
from harness.kernel_log.frames import module_frames
from harness.kernel_log.kmemleak import LeakedObject, LeakVerdict
from harness.kernel_watch import Cursor, KernelVerdict, Policy
from harness.session import KernelSession

# Fixtures that make a test a kernel test (marked `kernel` at collection).
KERNEL_FIXTURES = frozenset({"knh_kernel_session", "built_module", "guest", "guest_kernel", "kernel_log", "kmod"})
# The kernel fixtures that put a guest under the test (the session and the module build alone do not).
GUEST_FIXTURES = KERNEL_FIXTURES - {"knh_kernel_session", "built_module"}


def uses_guest(item: pytest.Item) -> bool:
    return bool(GUEST_FIXTURES & set(getattr(item, "fixturenames", ())))


@dataclass(frozen=True)
class KernelParam:
    """One value of the kernel matrix: what the user named and what it resolved to (or why not)."""

    spec: str
    kernel: Kernel | None
    error: HarnessError | None

    @property
    def label(self) -> str:
        return self.kernel.label if self.kernel else (self.spec or "default-kernel")


@dataclass
class RunState:
    """Settings of the run and everything it recorded for the summary."""

    config: HarnessConfig
    allowlist: tuple[AllowEntry, ...]
    run_root: Path
    sessions: list[KernelSession] = field(default_factory=list)
    splats: list[dict[str, Any]] = field(default_factory=list)
    outcomes: dict[str, dict[str, str]] = field(default_factory=dict)  # every test's: nodeid -> phase -> outcome
    cursors: dict[KernelSession, Cursor] = field(default_factory=dict)  # where each guest was last checked
    crashes: list[dict[str, Any]] = field(default_factory=list)  # kernels broken between tests or at the end
    skips: list[dict[str, str]] = field(default_factory=list)  # skipped kernel tests: test, kernel, reason
    remote: list[dict[str, Any]] = field(default_factory=list)  # what xdist workers recorded (pytest_plugin.parallel)
    kmemleak: list[dict[str, Any]] = field(default_factory=list)  # each reading after an unload (kmemleak kernels)
    failures: list[dict[str, Any]] = field(default_factory=list)  # failed guest tests: where, reproduce, artifacts
    test_kernels: dict[str, str] = field(default_factory=dict)  # nodeid -> kernel label, for per-kernel counts

    @property
    def policy(self) -> Policy:
        return Policy(self.allowlist, self.config.allowed_taint, self.config.settle)

    def anything_recorded(self) -> bool:
        return bool(self.sessions or self.splats or self.crashes or self.skips or self.remote or self.kmemleak)

    def record_splats(self, test: str, release: str, phase: str, report: SplatReport, *, with_allowed: bool = True,
                      frames: Mapping[str, Sequence[DecodedFrame]] | None = None) -> None:  # fmt: skip
        """Add a check's splats to the run summary, each failing one with its heading and its frames
        decoded to source lines (`frames`: fingerprint -> frames); the allowlisted ones too, with their
        reason."""
        base = {"test": test, "kernel": release, "phase": phase}
        for splat in report.failures:
            decoded = [frame_record(d) for d in (frames or {}).get(splat.fingerprint, ())]
            self.splats.append({**base, "kind": splat.kind, "fingerprint": splat.fingerprint, "allowed": False,
                                "heading": splat.heading, "module_frames": [str(f) for f in module_frames(splat)],
                                "frames": decoded})  # fmt: skip
        for entry in report.allowed if with_allowed else ():
            self.splats.append({**base, "kind": entry.splat.kind, "fingerprint": entry.splat.fingerprint,
                                "allowed": True, "reason": entry.reason})  # fmt: skip

    def record_leaks(self, test: str, release: str, phase: str, leaks: LeakVerdict) -> None:
        """Add a kmemleak reading to the run summary: the modules' objects as splats (failures or
        allowed), every object and the scans' durations under `kmemleak`."""
        base = {"test": test, "kernel": release, "phase": phase}
        for obj in leaks.failures:
            self.splats.append({**base, "kind": "kmemleak", "fingerprint": obj.splat.fingerprint, "allowed": False})
        for a in leaks.allowed:
            if leaks.touches(a.obj):
                self.splats.append({**base, "kind": "kmemleak", "fingerprint": a.obj.splat.fingerprint,
                                    "allowed": True, "reason": a.reason})  # fmt: skip

        def entry(obj: LeakedObject, attributed: str, reason: str | None = None) -> dict[str, Any]:
            allowed = {"allowed": True, "reason": reason} if reason is not None else {"allowed": False}
            return {"attributed": attributed, "fingerprint": obj.splat.fingerprint, "object": obj.summary(), **allowed}

        self.kmemleak.append({**base, "modules": list(leaks.modules), "scans_s": [round(t, 3) for t in leaks.scans_s],
                              "objects": [entry(o, "module") for o in leaks.failures]
                              + [entry(o, "kernel") for o in leaks.kernel]
                              + [entry(a.obj, "module" if leaks.touches(a.obj) else "kernel", a.reason)
                                 for a in leaks.allowed]})  # fmt: skip

    def record_crash(self, session: KernelSession, test: str, phase: str, previous: str,
                     verdict: KernelVerdict) -> None:  # fmt: skip
        self.crashes.append({
            "test": test, "kernel": session.kernel.release, "phase": phase, "previous_test": previous,
            "died": verdict.died.reason if verdict.died else None,
            "splats": [s.fingerprint for s in verdict.splats.failures],
            "message": verdict.message(),
        })  # fmt: skip


RUN_KEY = pytest.StashKey[RunState]()


def resolve_settings(config: pytest.Config) -> HarnessConfig:
    """The settings from this run's options, environment and ini keys (ConfigError when one is bad)."""
    options = {s.name: config.getoption(f"knh_{s.name}") for s in SETTINGS}
    ini = {s.ini: config.getini(s.ini) for s in SETTINGS}
    return resolve(options, ini=ini)


def run_state(config: pytest.Config) -> RunState:
    return config.stash[RUN_KEY]


class HarnessFailed(pytest.fail.Exception):  # type: ignore[name-defined,misc]
    """A test failed because of a harness error; `infra` comes from the error's type and is
    recorded in the test's report (JUnit property ``knh_failure``: infra or test)."""

    def __init__(self, message: str, *, infra: bool) -> None:
        super().__init__(message, pytrace=False)
        self.infra = infra


def fail_on_harness_error(e: HarnessError) -> None:
    """Fail the test with the error's message; a kernel the driver's dkms.conf excludes skips it with
    DKMS's reason (listed per kernel in the run summary), as DKMS would not build it there."""
    if isinstance(e, BuildExcluded):
        pytest.skip(f"not built for this kernel: {e}")
    raise HarnessFailed(str(e), infra=e.infra) from None


def notifier(config: pytest.Config) -> Callable[[str], None]:
    """Progress lines ("[knh] booting ...") on the terminal, also while output is captured."""

    def notify(message: str) -> None:
        reporter = config.pluginmanager.get_plugin("terminalreporter")
        if reporter is None or config.getoption("quiet", 0) > 1:
            return
        capture = config.pluginmanager.get_plugin("capturemanager")
        if capture is not None:
            with capture.global_and_fixture_disabled():
                reporter.write_line(f"[knh] {message}")
        else:
            reporter.write_line(f"[knh] {message}")

    return notify


_KERNEL_PARAMS_KEY = pytest.StashKey[list[KernelParam]]()


def kernel_params(config: pytest.Config) -> list[KernelParam]:
    """The kernel matrix, resolved once per run (a source tree is built here: once, then cached)."""
    cached = config.stash.get(_KERNEL_PARAMS_KEY, None)
    if cached is None:
        cached = []
        build_options = BuildOptions.from_config(run_state(config).config)
        for spec in expand_kernel_specs(run_state(config).config.kernels, arch=run_state(config).config.arch):
            try:
                kernel = resolve_kernel_spec(spec or None, notify=notifier(config), options=build_options)
                cached.append(KernelParam(spec, kernel, None))
            except HarnessError as e:
                cached.append(KernelParam(spec, None, e))
        config.stash[_KERNEL_PARAMS_KEY] = cached
    return cached
