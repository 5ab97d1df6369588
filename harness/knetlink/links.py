"""The knetlink module's `link:<payload>` kernel log lines, decoded.

The module prints every message it receives as ``link:`` followed by the payload,
escaped (printable ASCII as is, everything else as ``\\xNN``), cut at print_max
bytes with a ``...[+N bytes]`` marker. The escaping has one implementation, shared
with the in-guest senders (guest_scripts/payload.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from harness.kernel_log.dmesg import LogInput, iter_numbered_lines

if TYPE_CHECKING:
    # pyproject installs guest_scripts/ as harness.guest_scripts; mypy checks the same file as the
    # guest scripts' top-level module ``payload`` ([tool.mypy] mypy_path).
    from payload import escape_payload, unescape_payload
else:
    from harness.guest_scripts.payload import escape_payload, unescape_payload

__all__ = ["LINK_PREFIX", "LinkLine", "escape_payload", "link_payloads", "parse_link_lines", "parse_link_text",
           "unescape_payload"]  # fmt: skip

LINK_PREFIX: Final = "link:"

_TRUNCATION_RE: Final = re.compile(r"\.\.\.\[\+(\d+) bytes?\]\Z")


@dataclass(frozen=True)
class LinkLine:
    """One decoded ``link:`` line.

    ``truncated_bytes`` is the ``N`` of a trailing ``...[+N bytes]`` marker
    (the module cut the message short), 0 when the payload is complete.
    """

    payload: bytes
    truncated_bytes: int = 0

    @property
    def truncated(self) -> bool:
        return self.truncated_bytes > 0


def parse_link_text(text: str) -> LinkLine | None:
    """Decode the text of one kernel line; ``None`` if it is not a link line.

    The truncation marker is only recognised at the very end of the line.
    """
    if not text.startswith(LINK_PREFIX):
        return None
    body = text[len(LINK_PREFIX) :]
    truncated = 0
    m = _TRUNCATION_RE.search(body)
    if m is not None:
        truncated = int(m.group(1))
        body = body[: m.start()]
    return LinkLine(payload=unescape_payload(body), truncated_bytes=truncated)


def parse_link_lines(lines: LogInput) -> list[LinkLine]:
    """Decode every ``link:`` line of a log, in order.

    A malformed link line raises ``ValueError`` naming its line number.
    """
    result: list[LinkLine] = []
    for number, line in iter_numbered_lines(lines):
        try:
            link = parse_link_text(line.text)
        except ValueError as exc:
            raise ValueError(f"line {number}: {exc}") from None
        if link is not None:
            result.append(link)
    return result


def link_payloads(lines: LogInput) -> list[bytes]:
    """The payloads of all ``link:`` lines (truncated ones as printed)."""
    return [link.payload for link in parse_link_lines(lines)]
