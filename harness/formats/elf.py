"""A module's ELF file, read in Python (no binutils or kmod needed on the host): its sections, the
functions of its symbol table (section, offset, size, name) and its .modinfo fields. Pure functions
over the file's bytes."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

SHT_SYMTAB = 2
STT_FUNC = 2


@dataclass(frozen=True)
class Section:
    name: str
    type: int
    offset: int
    size: int
    linked: int  # the ELF sh_link field (a symbol table names its string table there)
    entsize: int


def _string(data: bytes, start: int) -> str:
    return data[start : data.index(b"\0", start)].decode(errors="replace")


def machine(head: bytes) -> int | None:
    """e_machine of a little-endian 64-bit ELF file's first bytes (62 x86_64, 183 aarch64), None for anything else."""
    if len(head) < 20 or head[:4] != b"\x7fELF" or head[4] != 2 or head[5] != 1:
        return None
    return int(struct.unpack_from("<H", head, 18)[0])


def sections(data: bytes) -> list[Section]:
    """The section headers of an ELF file (32 or 64 bit, either byte order); [] when it is none.
    Raises struct.error or ValueError on a truncated file."""
    if data[:4] != b"\x7fELF" or len(data) < 0x34:
        return []
    wide, order = data[4] == 2, "<" if data[5] == 1 else ">"
    head = struct.Struct(order + ("16xHHIQQQIHHHHHH" if wide else "16xHHIIIIIHHHHHH"))
    _, _, _, _, _, shoff, _, _, _, _, shentsize, shnum, shstrndx = head.unpack_from(data)
    entry = struct.Struct(order + ("IIQQQQIIQQ" if wide else "IIIIIIIIII"))
    raw = [entry.unpack_from(data, shoff + i * shentsize) for i in range(shnum)]
    names_at = raw[shstrndx][4] if shstrndx < len(raw) else 0
    return [Section(_string(data, names_at + h[0]), h[1], h[4], h[5], h[6], h[9]) for h in raw]


def section_bytes(data: bytes, name: str) -> bytes:
    """The contents of the section called `name`, b"" when there is none (or the file is no ELF)."""
    try:
        found = next((s for s in sections(data) if s.name == name), None)
    except (struct.error, ValueError):
        return b""
    return data[found.offset : found.offset + found.size] if found else b""


def ko_functions(ko: Path) -> list[tuple[str, int, int, str]]:
    """(section, offset, size, name) of every function in an ELF64 little-endian .ko's symbol table."""
    data = ko.read_bytes()
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise ValueError(f"{ko} is not a 64-bit little-endian ELF file")
    headers = sections(data)
    out: list[tuple[str, int, int, str]] = []
    for table in (s for s in headers if s.type == SHT_SYMTAB):
        strtab = headers[table.linked].offset
        for pos in range(table.offset, table.offset + table.size, table.entsize or 24):
            st_name, st_info, _, st_shndx, st_value, st_size = struct.unpack_from("<IBBHQQ", data, pos)
            if st_info & 0xF == STT_FUNC and 0 < st_shndx < len(headers):  # a function in a real section
                out.append((headers[st_shndx].name, st_value, st_size, _string(data, strtab + st_name)))
    return out


def modinfo_field(data: bytes, field: str) -> str | None:
    """The value of `field` (depends, name, vermagic...) in a module's .modinfo, None when absent."""
    for entry in section_bytes(data, ".modinfo").split(b"\0"):
        key, sep, value = entry.partition(b"=")
        if sep and key.decode(errors="replace") == field:
            return value.decode(errors="replace")
    return None
