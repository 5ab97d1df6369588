"""The module's parameters in sysfs (/sys/module/<name>/parameters/), for kernel tests.

The stat_* parameters are its read-only counters. Both are read by the guest shell itself (`read`
is a builtin): a `cat` or `grep` process costs ~60 ms under TCG, more while the guest is busy.
"""

import shlex

from harness.guest.vm import Guest

STAT_NAMES = ("received", "printed", "acked", "errors")


def param_path(name: str, module: str = "knetlink") -> str:
    return f"/sys/module/{module}/parameters/{name}"


def read_param(guest: Guest, name: str, module: str = "knetlink") -> str:
    """The parameter's value; a missing parameter is a GuestCommandError."""
    command = f"IFS= read -r knh_v < {shlex.quote(param_path(name, module))} && printf '%s\\n' \"$knh_v\""
    return guest.run(command, check=True).output.strip()


def module_stats(guest: Guest, name: str = "knetlink") -> dict[str, int]:
    """{counter: value} of every stat_* parameter; none, or one that cannot be read, is a GuestCommandError."""
    pattern = f"{shlex.quote(param_path('', name))}stat_*"
    command = (f"knh_ok=1; for knh_f in {pattern}; do if IFS= read -r knh_v < \"$knh_f\"; "
               "then echo \"$knh_f:$knh_v\"; else knh_ok=0; fi; done 2>&1; [ $knh_ok = 1 ]")  # fmt: skip
    out = guest.run(command, check=True).output
    stats = {}
    for line in out.splitlines():
        path, _, value = line.strip().rpartition(":")
        stats[path.rsplit("/", 1)[-1].removeprefix("stat_")] = int(value)
    return stats
