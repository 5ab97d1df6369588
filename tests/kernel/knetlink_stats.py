"""The module's read-only counters (/sys/module/<name>/parameters/stat_*), for kernel tests."""

from harness.vm import Guest


def module_stats(guest: Guest, name: str = "knetlink") -> dict[str, int]:
    out = guest.run(f"grep . /sys/module/{name}/parameters/stat_*", check=True).output
    stats = {}
    for line in out.splitlines():
        path, _, value = line.strip().rpartition(":")
        stats[path.rsplit("/", 1)[-1].removeprefix("stat_")] = int(value)
    return stats
