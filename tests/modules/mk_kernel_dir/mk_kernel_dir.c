// SPDX-License-Identifier: GPL-2.0
/*
 * mk_kernel_dir: does nothing but say it loaded and unloaded. It exists to
 * test building a driver whose single Makefile (no Kbuild file) picks the
 * kernel through KVER / KERNEL_DIR, the way v4l2loopback's does.
 */
#include <linux/module.h>

static int __init mk_kernel_dir_init(void)
{
	pr_info("mk_kernel_dir: loaded\n");
	return 0;
}

static void __exit mk_kernel_dir_exit(void)
{
	pr_info("mk_kernel_dir: unloaded\n");
}

module_init(mk_kernel_dir_init);
module_exit(mk_kernel_dir_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("prints a line at load and unload (KERNEL_DIR Makefile build test)");
