"""What the kernel and the in-guest tools printed, parsed: kernel log lines, splats and taint
(dmesg), call-trace frames (frames), kmemleak reports (kmemleak), bpftrace output (bpftrace).

Pure: text in, typed values out. Nothing here starts a process or imports pytest
(tests/test_layers.py checks it).
"""
