"""knetlink-harness: test Linux kernel modules in throwaway guests."""

__version__ = "0.1.0"
