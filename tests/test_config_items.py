"""harness.build.config_items and its users point readers at the right place."""

from __future__ import annotations

import re
from pathlib import Path

from harness.build.configure import profile_error

ROOT = Path(__file__).resolve().parent.parent


def test_the_profile_error_names_the_file_that_defines_the_debug_profile() -> None:
    message = profile_error("debug", Path("/b"), ["CONFIG_KASAN=y (have unset; wanted for: KASAN)"])
    named = re.search(r"DEBUG_PROFILE in (\S+\.py)", message)
    assert named is not None, message
    assert "\nDEBUG_PROFILE: dict[" in (ROOT / named.group(1)).read_text(), f"{named.group(1)} does not define it"
