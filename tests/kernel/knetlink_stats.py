"""The module's parameters in sysfs (/sys/module/<name>/parameters/), for kernel tests.

The stat_* parameters are its read-only counters.
"""

from harness.guest.vm import Guest

STAT_NAMES = ("received", "printed", "acked", "errors")


def param_path(name: str, module: str = "knetlink") -> str:
    return f"/sys/module/{module}/parameters/{name}"


def read_param(guest: Guest, name: str, module: str = "knetlink") -> str:
    return guest.run(["cat", param_path(name, module)], check=True).output.strip()


def module_stats(guest: Guest, name: str = "knetlink") -> dict[str, int]:
    out = guest.run(f"grep . /sys/module/{name}/parameters/stat_*", check=True).output
    stats = {}
    for line in out.splitlines():
        path, _, value = line.strip().rpartition(":")
        stats[path.rsplit("/", 1)[-1].removeprefix("stat_")] = int(value)
    return stats
