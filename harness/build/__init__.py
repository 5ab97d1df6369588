"""Kernels and modules, built and resolved on the host: which kernel a spec names (kernel),
kernels built from a tree (kernel_build, configure, config_items, kernel_source, progress),
the module build (plan, dkms, module_build, module_deps), the qemu engine's initramfs
(initramfs), kernel arguments for memory debugging (memdebug), and frames decoded with the
built files' debug info (decode).
"""
