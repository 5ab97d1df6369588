"""The ini keys the command line reads: the knh_ keys of the file pytest would take its ini keys
from, found the way pytest finds it, so a setting in the project's pytest configuration means the
same to ``pytest`` and to ``python -m harness``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import iniconfig

from harness.errors import ConfigError


def pytest_section(path: Path) -> dict[str, Any] | None:
    """pytest's ini keys in `path`; None when the file has no pytest section (pytest then looks on)."""
    if path.suffix == ".toml":
        try:
            import tomllib
        except ImportError:  # Python 3.10: tomli, which pytest itself needs there
            import tomli as tomllib  # type: ignore[no-redef,import-not-found,unused-ignore]
        data = tomllib.loads(path.read_text(encoding="utf-8"))
        if path.name != "pyproject.toml":
            return dict(data.get("pytest", {}))
        table = data.get("tool", {}).get("pytest", {})
        return {k: v for k, v in table.items() if k != "ini_options"} or table.get("ini_options")
    sections = iniconfig.IniConfig(str(path)).sections
    section = sections.get("tool:pytest" if path.name == "setup.cfg" else "pytest")
    return dict(section) if section is not None else {} if path.name.endswith("pytest.ini") else None


def project_ini() -> dict[str, Any]:
    """knh_ ini keys from the file pytest takes them from (_pytest/config/findpaths.py), so CLI and pytest agree,
    as pytest's ini mode hands them (a string or a list). An unreadable file is a ConfigError, as for pytest."""
    names = ("pytest.toml", ".pytest.toml", "pytest.ini", ".pytest.ini", "pyproject.toml", "tox.ini", "setup.cfg")
    for path in (base / name for base in (Path.cwd(), *Path.cwd().parents) for name in names):
        try:
            section = pytest_section(path) if path.is_file() else None
        except (OSError, ValueError, iniconfig.ParseError) as e:
            raise ConfigError(f"{path} cannot be read for its knh_ keys: {e}; fix it (pytest refuses it too)") from None
        if section is not None:
            return {k: v if isinstance(v, list) else str(v) for k, v in section.items() if k.startswith("knh_")}
    return {}
