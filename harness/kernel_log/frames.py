"""Which module functions a kernel report names: the "first frames in the module" of a splat.

A report names code of a loadable module as ``func+0x8b/0xb0 [module]`` (with a
build id after the name on kernels that print one): in the call trace, in a
KASAN heading (``BUG: KASAN: slab-out-of-bounds in slab_oob_read+0x8b/0xb0
[slab_oob]``), in lockdep's lock lines (``at: lock_order_ba+0x2e/0x70
[lock_order]``), in an ODEBUG hint, in a kmemleak backtrace. Frames the
unwinder marks unreliable (``? func+...``) and ``__pfx_`` padding symbols are
left out.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from harness.kernel_log.dmesg import Splat

_MODULE_FRAME_RE: Final = re.compile(
    r"(?P<unreliable>\? )?(?:\[<[0-9a-fA-F]+>\]\s+)?(?P<func>[A-Za-z_.$][\w.$]*)\+0x[0-9a-fA-F]+/0x[0-9a-fA-F]+"
    r" \[(?P<module>[\w-]+)(?: [0-9a-f]+)?\]"
)
_CALL_TRACE_RE: Final = re.compile(r"^(?:Call [Tt]race:|\s*backtrace(?: \(crc [0-9a-f]+\))?:\s*$)")
_KMEMLEAK_PREFIX_RE: Final = re.compile(r"^kmemleak:(?=\s)")
_REGISTERS_RE: Final = re.compile(r"^(?:RIP|RSP|RAX|RDX|RBP|RSI|R\d+|FS|GS|CS|CR\d|DR\d|PKRU|Code)\b")


@dataclass(frozen=True)
class ModuleFrame:
    function: str  # without compiler suffixes (.cold, .isra.0)
    module: str

    def __str__(self) -> str:
        return f"{self.function} [{self.module}]"


def _in_trace_flags(lines: Iterable[str]) -> list[tuple[str, bool]]:
    """Each line with whether it lies in a call trace / backtrace section."""
    out: list[tuple[str, bool]] = []
    in_trace = False
    for raw in lines:
        text = _KMEMLEAK_PREFIX_RE.sub("", raw)
        if _CALL_TRACE_RE.match(text):
            in_trace = True
            out.append((text, False))
            continue
        if in_trace and not (text[:1].isspace() or _REGISTERS_RE.match(text)):
            in_trace = False
        out.append((text, in_trace))
    return out


def module_frames(lines: Iterable[str] | Splat, module: str | None = None) -> list[ModuleFrame]:
    """The module functions a report names, call-trace frames first (innermost first), then the
    other mentions in the order they appear; each once. `module` keeps only that module's
    (``-`` and ``_`` are the same in module names)."""
    texts = lines.lines if isinstance(lines, Splat) else tuple(lines)
    wanted = module.replace("-", "_") if module else None
    in_trace: list[ModuleFrame] = []
    elsewhere: list[ModuleFrame] = []
    for text, tracing in _in_trace_flags(texts):
        for m in _MODULE_FRAME_RE.finditer(text):
            func = m.group("func")
            if m.group("unreliable") or func.startswith("__pfx_"):
                continue
            frame = ModuleFrame(func.split(".", 1)[0] or func, m.group("module").replace("-", "_"))
            if wanted is not None and frame.module != wanted:
                continue
            (in_trace if tracing else elsewhere).append(frame)
    return list(dict.fromkeys([*in_trace, *elsewhere]))


def names_module_function(splat: Splat, module: str, function: str) -> bool:
    """Whether the report names `function` of `module` (what a test of a buggy module asserts)."""
    return any(f.function == function for f in module_frames(splat, module))
