"""The module's payload escaping, shared by the guest scripts and the harness.

knetlink prints a message body as ``link:<escaped payload>``: bytes 0x20..0x7e
other than the backslash as they are, the backslash doubled and every other
byte as ``\\xHH`` (lowercase hex). :func:`escape_payload` predicts that text,
:func:`unescape_payload` reads it back.

This file imports nothing: the guest scripts import it as ``payload`` (their
own directory is on ``sys.path``), the harness as
``harness.guest_scripts.payload`` (see ``harness.kernel_log.dmesg``).
"""

from __future__ import annotations

__all__ = ["escape_payload", "unescape_payload"]

_ESCAPED: tuple[str, ...] = tuple(
    "\\\\" if byte == 0x5C else chr(byte) if 0x20 <= byte <= 0x7E else f"\\x{byte:02x}" for byte in range(256)
)
_HEX = frozenset("0123456789abcdefABCDEF")


def escape_payload(data: bytes) -> str:
    """The text knetlink prints for ``data`` (one line of printable ASCII)."""
    return "".join(map(_ESCAPED.__getitem__, data))


def unescape_payload(text: str) -> bytes:
    """Invert :func:`escape_payload`.

    Raises ``ValueError`` for anything the module cannot have printed: a
    character outside printable ASCII, a dangling backslash or an unknown
    escape. Upper-case hex digits are accepted.
    """
    out = bytearray()
    i = 0
    n = len(text)
    while i < n:
        ch = text[i]
        if ch == "\\":
            nxt = text[i + 1 : i + 2]
            if nxt == "\\":
                out.append(0x5C)
                i += 2
            elif nxt == "x" and n >= i + 4 and set(text[i + 2 : i + 4]) <= _HEX:
                out.append(int(text[i + 2 : i + 4], 16))
                i += 4
            else:
                raise ValueError(f"bad escape at offset {i} in {text!r}")
        elif " " <= ch <= "~":
            out.append(ord(ch))
            i += 1
        else:
            raise ValueError(f"unescaped character {ch!r} at offset {i} in {text!r}")
    return bytes(out)
