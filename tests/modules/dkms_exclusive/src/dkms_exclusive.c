// SPDX-License-Identifier: GPL-2.0
/*
 * dkms_exclusive: does nothing but say it loaded and unloaded. It exists to
 * test DKMS packaging with BUILD_EXCLUSIVE_CONFIG: its dkms.conf asks for
 * CONFIG_CACHESTAT_SYSCALL, so DKMS builds it for 6.12 but skips 6.1.
 * The code itself builds on any kernel.
 */
#include <linux/module.h>

static int __init dkms_exclusive_init(void)
{
	pr_info("dkms_exclusive: loaded\n");
	return 0;
}

static void __exit dkms_exclusive_exit(void)
{
	pr_info("dkms_exclusive: unloaded\n");
}

module_init(dkms_exclusive_init);
module_exit(dkms_exclusive_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("prints a line at load and unload (DKMS BUILD_EXCLUSIVE_CONFIG test)");
