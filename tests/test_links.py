"""Tests for harness.knetlink.links: the module's link: lines, against the golden kernel logs."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from harness.kernel_log.dmesg import parse_lines
from harness.knetlink.links import (
    LinkLine,
    escape_payload,
    link_payloads,
    parse_link_lines,
    parse_link_text,
    unescape_payload,
)

DATA = Path(__file__).parent / "data" / "dmesg"


def golden(name: str) -> str:
    return (DATA / name).read_text(encoding="utf-8")



def test_link_lines_clean_boot() -> None:
    assert parse_link_lines(golden("clean_boot.log")) == [
        LinkLine(b"hello world!", 0),
        LinkLine(b"\x01\x00\x00\x00back\\slash\x7f\xff", 0),
        LinkLine(b" leading and trailing spaces ", 0),
        LinkLine(b"", 0),
        LinkLine(b"A" * 32, 4064),
    ]


def test_link_payloads_from_kmsg_undo_both_escapings() -> None:
    assert link_payloads(golden("warning_kmsg.log")) == [b"fmt %pZ", b"fmt %pZ", b"back\\slash\x00\xff"]


def test_link_lines_from_parsed_lines() -> None:
    lines = parse_lines(golden("null_deref.log"))
    assert link_payloads(lines) == [b"\x14\x00\x00\x00\x10\x00\x05\x00"]


@pytest.mark.parametrize("name", sorted(p.name for p in DATA.glob("*.log") if p.name != "warning_kmsg.log"))
def test_golden_link_lines_are_in_canonical_module_escaping(name: str) -> None:
    for line in parse_lines(golden(name)):
        link = parse_link_text(line.text)
        if link is None:
            continue
        suffix = f"...[+{link.truncated_bytes} bytes]" if link.truncated else ""
        assert line.text == "link:" + escape_payload(link.payload) + suffix


def test_truncation_marker_only_at_the_end() -> None:
    assert parse_link_text("link:abc...[+5 bytes]") == LinkLine(b"abc", 5)
    assert parse_link_text("link:abc...[+5 bytes]x") == LinkLine(b"abc...[+5 bytes]x", 0)
    assert parse_link_text("link:...[+1 byte]") == LinkLine(b"", 1)
    assert parse_link_text("link:abc") is not None
    assert not parse_link_text("link:abc").truncated  # type: ignore[union-attr]
    assert parse_link_text("knetlink: link:abc") is None


@pytest.mark.parametrize(
    ("data", "text"),
    [
        (b"", ""),
        (b"abc XYZ ~", "abc XYZ ~"),
        (b"\\", "\\\\"),
        (b"\x00\x1f\x7f\x80\xff\n", "\\x00\\x1f\\x7f\\x80\\xff\\x0a"),
        (b"a\\x41", "a\\\\x41"),
    ],
)
def test_escape_payload_exact(data: bytes, text: str) -> None:
    assert escape_payload(data) == text
    assert unescape_payload(text) == data


@pytest.mark.parametrize("bad", ["\\", "\\x4", "\\xZZ", "\\n", "tab\there", "caf\u00e9"])
def test_unescape_payload_rejects_what_the_module_cannot_print(bad: str) -> None:
    with pytest.raises(ValueError):
        unescape_payload(bad)


def test_malformed_link_line_names_its_line() -> None:
    with pytest.raises(ValueError, match=r"^line 2: bad escape"):
        parse_link_lines("[    1.000000] link:ok\n[    1.000001] link:bad\\q\n")


def test_unescape_accepts_uppercase_hex() -> None:
    assert unescape_payload("\\xAB") == b"\xab"


@given(st.binary(max_size=512))
def test_escape_round_trip(data: bytes) -> None:
    text = escape_payload(data)
    assert all(" " <= ch <= "~" for ch in text)
    assert unescape_payload(text) == data
    assert parse_link_lines([f"[    1.000000] link:{text}"]) == [LinkLine(data, 0)]


@given(st.binary(max_size=256), st.integers(min_value=1, max_value=1 << 20))
def test_escape_round_trip_truncated(data: bytes, more: int) -> None:
    line = f"<6>[    1.000000] link:{escape_payload(data)}...[+{more} bytes]"
    assert parse_link_lines([line]) == [LinkLine(data, more)]
