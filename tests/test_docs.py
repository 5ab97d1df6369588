"""Every setting is documented where users look for it."""

from pathlib import Path

import pytest

from harness.config import SETTINGS

DOC = (Path(__file__).resolve().parent.parent / "docs" / "configuration.md").read_text()


@pytest.mark.parametrize("setting", SETTINGS, ids=lambda s: s.name)
def test_setting_is_in_configuration_doc(setting: object) -> None:
    for text in (setting.option, setting.env, setting.ini):  # type: ignore[attr-defined]
        assert f"`{text}`" in DOC, f"{text} missing from docs/configuration.md"
