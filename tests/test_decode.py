"""Decoding a splat's module frames to source lines: the parsers on real kernel reports
(tests/data/dmesg) and binutils output, and the whole decoder on an object compiled here with
debug info, whose line table says which address starts which line."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from harness.build.decode import (
    FrameDecoder,
    FrameRef,
    SourceLine,
    decoded_section,
    frame_refs,
    parse_addr2line,
)

DATA = Path(__file__).resolve().parent / "data" / "dmesg"

SOURCE = """__attribute__((section(".init.text"))) int knh_first(int a)
{
\tint c = a + 1;
\treturn c * 2;
}

int knh_second(int *p)
{
\treturn *p + knh_first(*p);
}

int knh_third(int x)
{
\treturn x - 1;
}
"""


def test_frames_of_a_real_null_dereference_rip_first_unreliable_left_out() -> None:
    lines = (DATA / "null_deref.log").read_text().splitlines()
    refs = frame_refs(lines)
    assert refs and refs[0].rip
    assert all("?" not in r.function for r in refs)
    assert len({(r.function, r.offset, r.module) for r in refs}) == len(refs)


def test_frame_refs_from_rip_trace_and_kmemleak_lines() -> None:
    text = ["RIP: 0010:kbleds_init+0x8c/0x1000 [kbleds]", "Call Trace:", " <TASK>",
            " ? kbleds_init+0x8c/0x1000 [kbleds]", " do_one_initcall+0x5b/0x320",
            " kbleds_helper.isra.0+0x10/0x40 [kbleds 1a2b3c]",
            "    [<00000000a1b2c3d4>] leak_alloc+0x1c/0x50 [leak-mod]",
            " kbleds_init+0x8c/0x1000 [kbleds]"]  # fmt: skip
    assert frame_refs(text) == [
        FrameRef("kbleds_init", 0x8C, "kbleds", True),
        FrameRef("do_one_initcall", 0x5B, "", False),  # the kernel's own: decoded only with its vmlinux
        FrameRef("kbleds_helper.isra.0", 0x10, "kbleds", False),
        FrameRef("leak_alloc", 0x1C, "leak_mod", False),
    ]


def test_addr2line_output() -> None:
    output = ("0x0000000000000029\ncrashy_init\n/b/crashy.c:55\n"
              "0x0000000000000060\nmsecs_to_jiffies\n/k/jiffies.h:525\ncrashy_tick\n/b/crashy.c:40 (discriminator 1)\n"
              "0x0000000000005000\n??\n??:0\n")  # fmt: skip
    assert parse_addr2line(output) == {
        0x29: (SourceLine("crashy_init", "/b/crashy.c", 55),),
        0x60: (SourceLine("msecs_to_jiffies", "/k/jiffies.h", 525), SourceLine("crashy_tick", "/b/crashy.c", 40)),
        0x5000: (),
    }


@pytest.fixture
def module(tmp_path: Path) -> tuple[Path, dict[int, int]]:
    """m.ko compiled with -g from SOURCE (knh_first in .init.text, as an __init function), and the
    address at which each line of knh_first starts, from the object's own line table."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "m.c").write_text(SOURCE)
    ko = src / "m.ko"
    subprocess.run(["gcc", "-g", "-O0", "-c", str(src / "m.c"), "-o", str(ko)], check=True)
    table = subprocess.run(["objdump", "--dwarf=decodedline", str(ko)], capture_output=True, text=True,
                           check=True).stdout  # fmt: skip
    starts: dict[int, int] = {}
    for m in re.finditer(r"^m\.c\s+(\d+)\s+(0x[0-9a-f]+|0)\s", table, re.M):
        starts.setdefault(int(m.group(1)), int(m.group(2), 16))
    return ko, starts


def test_the_symbol_table_gives_each_function_its_section_and_offset(module: tuple[Path, dict[int, int]]) -> None:
    ko, _ = module
    symbols = FrameDecoder({"m": ko})._symbols_of(ko)
    assert symbols["knh_first"] == (".init.text", 0) and symbols["knh_second"] == (".text", 0)
    section, offset = symbols["knh_third"]
    assert section == ".text" and offset > 0


def test_the_rip_frame_is_the_line_of_its_instruction(module: tuple[Path, dict[int, int]]) -> None:
    ko, starts = module
    decoder = FrameDecoder({"m": ko})
    [decoded] = decoder.decode([f"RIP: 0010:knh_first+{starts[4]:#x}/0x17 [m]"])
    assert [(s.function, Path(s.file).name, s.line) for s in decoded.lines] == [("knh_first", "m.c", 4)]


def test_a_return_address_is_looked_up_one_byte_earlier(module: tuple[Path, dict[int, int]]) -> None:
    """A call-trace frame points after its call: the first byte of line 4 belongs to line 3's call."""
    ko, starts = module
    [decoded] = FrameDecoder({"m": ko}).decode([f" knh_first+{starts[4]:#x}/0x17 [m]"])
    assert decoded.lines[0].line == 3


def test_the_section_of_the_symbol_is_used(module: tuple[Path, dict[int, int]]) -> None:
    """knh_first is in .init.text at offset 0, as knh_second is in .text, and knh_third after it in
    .text: the same offset of each decodes to its own function's line."""
    ko, _ = module
    first, second, third = FrameDecoder({"m": ko}).decode(
        ["RIP: 0010:knh_first+0x0/0x17 [m]", " knh_second+0x1/0x28 [m]", " knh_third+0x1/0x10 [m]"])
    assert (first.lines[0].function, first.lines[0].line) == ("knh_first", 2)
    assert (second.lines[0].function, second.lines[0].line) == ("knh_second", 8)
    assert (third.lines[0].function, third.lines[0].line) == ("knh_third", 13)


def test_the_section_names_the_source_directory_and_says_what_cannot_be_decoded(
    module: tuple[Path, dict[int, int]], tmp_path: Path
) -> None:
    ko, starts = module
    stripped = tmp_path / "plain.ko"
    subprocess.run(["gcc", "-O0", "-c", str(ko.with_name("m.c")), "-o", str(stripped)], check=True)
    text = decoded_section([f"RIP: 0010:knh_first+{starts[3]:#x}/0x17 [m]", " knh_first+0x4/0x17 [plain]"],
                           {"m": ko, "plain": stripped}, {ko.parent: Path("/home/me/driver")})  # fmt: skip
    assert text.splitlines()[0] == "--- module frames decoded (addr2line) ---"
    assert f"knh_first+{starts[3]:#x} [m] -> /home/me/driver/m.c:3 (knh_first)" in text
    assert "(plain.ko has no line information (built without debug info" in text
    assert decoded_section(["RIP: 0010:other+0x1/0x2 [elsewhere]"], {"m": ko}) == ""


def test_kernel_frames_are_decoded_with_the_kernels_image_and_left_raw_without(tmp_path: Path) -> None:
    """A linked program with debug info stands for a vmlinux: its symbols have link addresses."""
    (tmp_path / "m.c").write_text(SOURCE + "\nint main(void) { int x = 1; return knh_second(&x); }\n")
    image = tmp_path / "vmlinux"
    subprocess.run(["gcc", "-g", "-O0", "-no-pie", str(tmp_path / "m.c"), "-o", str(image)], check=True)
    lines = ["RIP: 0010:knh_third+0x1/0x10", " knh_second+0x1/0x28"]
    rip, caller = FrameDecoder({}, vmlinux=image).decode(lines)
    assert (rip.frame.module, rip.lines[0].function, rip.lines[0].line) == ("", "knh_third", 13)
    assert (caller.lines[0].function, caller.lines[0].line) == ("knh_second", 8)
    assert FrameDecoder({}).decode(lines) == []  # no image: nothing said about the kernel's frames
