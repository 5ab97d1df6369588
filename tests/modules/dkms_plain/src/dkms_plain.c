// SPDX-License-Identifier: GPL-2.0
/*
 * dkms_plain: does nothing but say it loaded and unloaded. It exists to
 * test DKMS packaging where dkms.conf's MAKE[0] runs the package's own
 * src/Makefile with KERNELDIR=${kernel_source_dir}.
 */
#include <linux/module.h>

static int __init dkms_plain_init(void)
{
	pr_info("dkms_plain: loaded\n");
	return 0;
}

static void __exit dkms_plain_exit(void)
{
	pr_info("dkms_plain: unloaded\n");
}

module_init(dkms_plain_init);
module_exit(dkms_plain_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("prints a line at load and unload (DKMS MAKE[0] with own Makefile test)");
