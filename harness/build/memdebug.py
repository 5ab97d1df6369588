"""Cheap memory-error detection on stock kernels, from kernel arguments alone.

A distribution kernel has no KASAN, but it may have two detectors built in and
switched off, which a kernel argument turns on:

* ``kfence``: KFENCE (Debian's 6.12 has ``CONFIG_KFENCE=y`` with
  ``CONFIG_KFENCE_SAMPLE_INTERVAL=0``, i.e. off). ``kfence.sample_interval=N``
  guards one slab allocation every N ms with a guard page: an out-of-bounds
  access or use after free of that object is a ``BUG: KFENCE:`` report.
  Sampled: it catches a bug when the buggy object is the sampled one.
* ``slub``: SLUB debugging (``CONFIG_SLUB_DEBUG=y`` in Debian's 6.1 and 6.12).
  ``slub_debug=FZPU`` adds red zones (Z), poison (P), sanity checks (F) and
  owner tracking (U) to every cache: a write past an object or into a freed
  object is reported (``BUG kmalloc-64 (...): Right Redzone overwritten``,
  ``Poison overwritten``) when the object is next checked (freed or
  allocated), a double free at once. Reads are not caught.

:func:`memory_debug_args` is the pure decision (configuration and helpers in,
arguments out). The engines (harness.guest.engines) call it with the kernel's
configuration (harness.build.config_items.read_kernel_config) and the helpers of
the memory_debug setting (``--memory-debug``, ``KNH_MEMORY_DEBUG``; harness.config
names the helpers and the default, which follows the boot-time cost measured
under TCG, docs/kernels.md), and hand the arguments to the command-line builders.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

from harness.config import MEMORY_DEBUG_DEFAULT, MEMORY_DEBUG_HELPERS
from harness.errors import ConfigError

KFENCE_SAMPLE_MS = 10  # upstream default 100 ms; a test run is short, so sample more often
SLUB_DEBUG_FLAGS = "FZPU"


def memory_debug_args(config: Mapping[str, str], helpers: Collection[str] = MEMORY_DEBUG_DEFAULT) -> tuple[str, ...]:
    """Kernel arguments that turn on the built-in, switched-off detectors among `helpers`.

    `config` is a kernel's configuration as {symbol without CONFIG_: value} (see
    harness.build.config_items.read_kernel_config). A helper is skipped when the kernel lacks it, and when the
    kernel already runs it without an argument (KFENCE with a non-zero default interval, SLUB_DEBUG_ON:
    the debug kernel), so an argument never weakens what the kernel does by itself.
    """
    unknown = sorted(set(helpers) - set(MEMORY_DEBUG_HELPERS))
    if unknown:
        raise ConfigError(f"unknown memory-debug helper(s) {', '.join(unknown)}: known are "
                          f"{', '.join(MEMORY_DEBUG_HELPERS)}")  # fmt: skip
    args: list[str] = []
    if "kfence" in helpers and config.get("KFENCE") == "y" and config.get("KFENCE_SAMPLE_INTERVAL", "0") == "0":
        args.append(f"kfence.sample_interval={KFENCE_SAMPLE_MS}")
    if "slub" in helpers and config.get("SLUB_DEBUG") == "y" and config.get("SLUB_DEBUG_ON") != "y":
        if config.get("SLUB", "y") == "y":  # SLUB is the only allocator of 6.8+; older configs name it
            args.append(f"slub_debug={SLUB_DEBUG_FLAGS}")
    return tuple(args)
