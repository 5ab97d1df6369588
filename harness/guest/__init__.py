"""One guest and what runs in it: the accelerator probe (accel), the engines and their
argv (engines, cmdline), the guest process with its console and data channel (vm, console,
channel), and the operations in the guest kernel (kernel_ops: modules, log, taint;
ebpf: bpftrace; coverage: gcov).
"""
