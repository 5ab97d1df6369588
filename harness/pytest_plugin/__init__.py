"""The pytest face: options, ini keys and hooks (plugin, the pytest11 entry point), fixtures,
the kernel watch around each test (watch), reports (report), pytest-xdist workers (parallel),
the run's state (runstate), the ebpf fixture and the load/unload suite item.
"""
