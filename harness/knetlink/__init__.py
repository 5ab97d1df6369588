"""The knetlink module layer: everything the harness knows about module/knetlink.c.

The core (harness/*.py) tests any out-of-tree module; this package adds what is
particular to knetlink, through the core's public API only (the same API
examples/genl_echo uses):

    links      the module's ``link:<payload>`` kernel log lines, decoded
    senders    the in-guest Python and C netlink senders, driven from the host
    fixtures   pytest plugin: kmod with the module's protocol, kernel_log with
               links(), py_sender, c_sender (loaded by the project's conftest.py)
    ebpf       what the knetlink bpftrace programs saw (counts, latency)
    commands   the ``seed`` and ``bench`` commands of ``python -m harness``
    bench      the benchmark's figures
"""
