"""A splat's frames in a module decoded to source file and line, from the module's own debug info.

A report names module code as ``func+0x19/0xb5 [crashy]`` (in ``RIP:``, in the
call trace, in KASAN, lockdep or kmemleak lines). In the unrelocated ``.ko`` the
symbol ``func`` sits at an offset in its section (its symbol table, read by harness.formats.elf), so
``addr2line -f -i -j <section> <offset>`` gives the file, line and inlined callers,
as the kernel's ``scripts/faddr2line`` does. The RIP frame is the faulting
instruction itself; every other frame is a return address, looked up one byte
earlier so the line is the call's. Parsers are pure; `FrameDecoder` reads each module's symbol
table once and runs addr2line once per module section and report.
"""

from __future__ import annotations

import functools
import re
import struct
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from harness.arches import binutil
from harness.formats.elf import ko_functions, machine

FRAME_RE: Final = re.compile(
    r"(?P<rip>RIP: [0-9a-f]{4}:)?(?P<unreliable>\? )?(?P<func>[A-Za-z_.$][\w.$]*)"
    r"\+0x(?P<off>[0-9a-fA-F]+)/0x[0-9a-fA-F]+(?: \[(?P<module>[\w-]+)(?: [0-9a-f]+)?\])?"
)
NM_RE: Final = re.compile(r"^([0-9a-f]+) [tTwW] (\S+)$")


# What decodes a report's frames: {module: .ko}, {build copy: source directory}, the kernel's image.
DecodeInputs = tuple[dict[str, Path], dict[Path, Path], Path | None]


@dataclass(frozen=True)
class FrameRef:
    """One mention of module code in a report."""

    function: str
    offset: int
    module: str  # '-' as '_'; "" for the kernel itself
    rip: bool  # the faulting instruction (a RIP: line), not a return address

    @property
    def text(self) -> str:
        return f"{self.function}+{self.offset:#x}" + (f" [{self.module}]" if self.module else "")

    @property
    def looked_up(self) -> int:
        """The offset whose line is the frame's: a return address's byte before, the RIP's own."""
        return self.offset if self.rip else self.offset - 1


@dataclass(frozen=True)
class SourceLine:
    function: str
    file: str
    line: int


@dataclass(frozen=True)
class DecodedFrame:
    frame: FrameRef
    lines: tuple[SourceLine, ...]  # innermost first: the line itself, then the callers it is inlined into

    def __str__(self) -> str:
        if not self.lines:
            return f"{self.frame.text}: no source line"
        first, *inlined = self.lines
        where = f"{self.frame.text} -> {first.file}:{first.line} ({first.function})"
        return where + "".join(f"\n      inlined into {s.function} at {s.file}:{s.line}" for s in inlined)


def frame_refs(lines: Iterable[str]) -> list[FrameRef]:
    """Every mention of code (a module's or the kernel's), in order, each once (a frame the unwinder marks unreliable,
    `? func+...`, and the RIP frame repeated in the trace left out); the RIP frame first."""
    refs: list[FrameRef] = []
    for text in lines:
        for m in FRAME_RE.finditer(text):
            if m.group("unreliable") or m.group("func").startswith("__pfx_"):
                continue
            module = (m.group("module") or "").replace("-", "_")
            refs.append(FrameRef(m.group("func"), int(m.group("off"), 16), module, bool(m.group("rip"))))
    rips = {(r.function, r.offset, r.module) for r in refs if r.rip}
    unique = [r for r in dict.fromkeys(refs) if r.rip or (r.function, r.offset, r.module) not in rips]
    return sorted(unique, key=lambda r: not r.rip)


def parse_nm(nm: str) -> dict[str, int]:
    """`nm` of a vmlinux: {text symbol: address} (the first of a name that appears twice)."""
    out: dict[str, int] = {}
    for line in nm.splitlines():
        m = NM_RE.match(line)
        if m:
            out.setdefault(m.group(2), int(m.group(1), 16))
    return out


def parse_addr2line(output: str) -> dict[int, tuple[SourceLine, ...]]:
    """`addr2line -a -f -i` output: {address: its lines, innermost first}; an address without line
    information gets ()."""
    out: dict[int, tuple[SourceLine, ...]] = {}
    address: int | None = None
    current: list[SourceLine] = []
    lines = output.splitlines()
    i = 0
    while i < len(lines):
        if re.fullmatch(r"0x[0-9a-f]+", lines[i]):
            if address is not None:
                out[address] = tuple(current)
            address, current, i = int(lines[i], 16), [], i + 1
            continue
        if i + 1 < len(lines):
            path, _, line = lines[i + 1].rpartition(":")
            line = line.split(" ", 1)[0]
            if path not in ("", "??") and line.isdigit() and int(line) > 0:
                current.append(SourceLine(lines[i], path, int(line)))
        i += 2
    if address is not None:
        out[address] = tuple(current)
    return out


@dataclass
class FrameDecoder:
    """Decodes frames of the modules in `kos` ({module name: .ko}); what cannot be decoded is said once.
    `sources` ({build copy: source directory}) shows a file of a build copy at its source's path."""

    kos: Mapping[str, Path]
    sources: Mapping[Path, Path] = field(default_factory=dict)
    vmlinux: Path | None = None  # the kernel's image with debug info, when at hand: its frames decoded too
    _symbols: dict[str, dict[str, tuple[str, int]]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def decode(self, lines: Iterable[str]) -> list[DecodedFrame]:
        refs = [r for r in frame_refs(lines) if r.module in self.kos or (not r.module and self.vmlinux)]
        found: dict[FrameRef, tuple[SourceLine, ...]] = {}
        for module in dict.fromkeys(r.module for r in refs if r.module):
            found.update(self._decode_module(module, [r for r in refs if r.module == module]))
        kernel = [r for r in refs if not r.module]
        if kernel and self.vmlinux is not None:
            found.update(self._decode_kernel(self.vmlinux, kernel))
        return [DecodedFrame(r, found.get(r, ())) for r in refs]

    def _decode_kernel(self, vmlinux: Path, refs: Sequence[FrameRef]) -> dict[FrameRef, tuple[SourceLine, ...]]:
        """Frames of the kernel itself, from the vmlinux's symbols (link addresses: the offsets are
        KASLR-proof) and its line table."""
        symbols = kernel_symbols(vmlinux)
        wanted = [(r, symbols[r.function] + r.looked_up) for r in refs if r.function in symbols]
        return self._lines(vmlinux, None, wanted)

    def _decode_module(self, module: str, refs: Sequence[FrameRef]) -> dict[FrameRef, tuple[SourceLine, ...]]:
        ko = self.kos[module]
        symbols = self._symbols_of(ko)
        by_section: dict[str, list[tuple[FrameRef, int]]] = {}
        for ref in refs:
            name = ref.function if ref.function in symbols else ref.function.split(".", 1)[0]
            if name in symbols:
                section, start = symbols[name]
                by_section.setdefault(section, []).append((ref, start + ref.looked_up))
        out: dict[FrameRef, tuple[SourceLine, ...]] = {}
        for section, wanted in by_section.items():
            out.update(self._lines(ko, section, wanted))
        if refs and not any(out.values()):
            self._note(f"{ko.name} has no line information (built without debug info: CONFIG_DEBUG_INFO in the "
                       "kernel's config, or -g): its frames are shown raw")  # fmt: skip
        return out

    def _lines(self, image: Path, section: str | None,
               wanted: Sequence[tuple[FrameRef, int]]) -> dict[FrameRef, tuple[SourceLine, ...]]:  # fmt: skip
        """One addr2line run over `image` (offsets into `section` of a .ko, or a vmlinux's addresses)."""
        if not wanted:
            return {}
        argv = [binutil("addr2line", elf_machine(image)), "-a", "-f", "-i", "-e", str(image),
                *(["-j", section] if section else []),
                *(hex(a) for _, a in wanted)]  # fmt: skip
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=60)
        except (OSError, subprocess.TimeoutExpired) as e:
            self._note(f"addr2line could not run on {image.name} ({e}); install binutils")
            return {}
        found = parse_addr2line(proc.stdout)
        return {ref: tuple(SourceLine(sl.function, self._shown(sl.file), sl.line) for sl in found.get(address, ()))
                for ref, address in wanted}  # fmt: skip

    def _symbols_of(self, ko: Path) -> dict[str, tuple[str, int]]:
        """{function: (section, offset in it)} from the .ko's symbol table (harness.formats.elf)."""
        key = str(ko)
        if key not in self._symbols:
            try:
                self._symbols[key] = {name: (section, offset) for section, offset, _, name in ko_functions(ko)}
            except (OSError, ValueError, struct.error) as e:
                self._note(f"the symbol table of {ko.name} is unreadable ({e})")
                self._symbols[key] = {}
        return self._symbols[key]

    def _shown(self, file: str) -> str:
        """A file of a build copy at its source's path, relative to the working directory when under it."""
        path = Path(file)
        for copy, source in self.sources.items():
            if path.is_relative_to(copy):
                path = source / path.relative_to(copy)
                break
        return str(path.relative_to(Path.cwd())) if path.is_relative_to(Path.cwd()) else str(path)

    def _note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)


def elf_machine(image: Path) -> int | None:
    """The ELF machine of `image` (harness.formats.elf.machine); None when it cannot be read."""
    try:
        with image.open("rb") as f:
            return machine(f.read(20))
    except OSError:
        return None


@functools.lru_cache(maxsize=2)
def _nm(vmlinux: str, mtime_ns: int) -> dict[str, int]:
    proc = subprocess.run([binutil("nm", elf_machine(Path(vmlinux))), vmlinux], capture_output=True, text=True,
                          check=False, timeout=120)  # fmt: skip
    return parse_nm(proc.stdout)


def kernel_symbols(vmlinux: Path) -> dict[str, int]:
    """The text symbols of a vmlinux, read once per file version."""
    try:
        return _nm(str(vmlinux), vmlinux.stat().st_mtime_ns)
    except (OSError, subprocess.TimeoutExpired):
        return {}


def decode_frames(lines: Iterable[str], kos: Mapping[str, Path], sources: Mapping[Path, Path] | None = None,
                  vmlinux: Path | None = None) -> tuple[list[DecodedFrame], list[str]]:  # fmt: skip
    """The report's frames in the modules of `kos` (and in the kernel, given its `vmlinux` with debug
    info) that have a source line, and what could not be decoded."""
    decoder = FrameDecoder(kos, dict(sources or {}), vmlinux)
    return [d for d in decoder.decode(lines) if d.lines], decoder.notes


def render(frames: Sequence[DecodedFrame], notes: Sequence[str]) -> str:
    """The text a failure message adds under a splat; "" when there is nothing to say."""
    body = [f"  {d}" for d in frames] + [f"  ({n})" for n in notes]
    return "--- module frames decoded (addr2line) ---\n" + "\n".join(body) if body else ""


def frame_record(decoded: DecodedFrame) -> dict[str, object]:
    """A decoded frame for summary.json: the frame, its line and the callers it is inlined into."""
    first, *inlined = decoded.lines
    return {"frame": decoded.frame.text, "function": first.function, "file": first.file, "line": first.line,
            "inlined_into": [f"{s.function} at {s.file}:{s.line}" for s in inlined]}  # fmt: skip


def decoded_section(lines: Iterable[str], kos: Mapping[str, Path], sources: Mapping[Path, Path] | None = None,
                    vmlinux: Path | None = None) -> str:  # fmt: skip
    """Each module frame with its source line, the RIP frame first, and once what could not be
    decoded; "" when the report names no module built here."""
    return render(*decode_frames(lines, kos, sources, vmlinux))
