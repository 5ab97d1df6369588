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

from collections.abc import Iterable
from dataclasses import dataclass

from harness.kernel_log.dmesg import MODULE_FRAME_RE, Splat, trace_lines


@dataclass(frozen=True)
class ModuleFrame:
    function: str  # without compiler suffixes (.cold, .isra.0)
    module: str

    def __str__(self) -> str:
        return f"{self.function} [{self.module}]"


def module_frames(lines: Iterable[str] | Splat, module: str | None = None) -> list[ModuleFrame]:
    """The module functions a report names, call-trace frames first (innermost first), then the
    other mentions in the order they appear; each once. `module` keeps only that module's
    (``-`` and ``_`` are the same in module names)."""
    texts = lines.lines if isinstance(lines, Splat) else tuple(lines)
    wanted = module.replace("-", "_") if module else None
    in_trace: list[ModuleFrame] = []
    elsewhere: list[ModuleFrame] = []
    for text, tracing in trace_lines(texts):
        for m in MODULE_FRAME_RE.finditer(text):
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
