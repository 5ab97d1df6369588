// SPDX-License-Identifier: GPL-2.0
/*
 * mk_pwd: does nothing but say it loaded and unloaded. It exists to test
 * building a driver whose Makefile passes M=$(PWD) and so depends on the
 * PWD environment variable being the module's directory.
 */
#include <linux/module.h>

static int __init mk_pwd_init(void)
{
	pr_info("mk_pwd: loaded\n");
	return 0;
}

static void __exit mk_pwd_exit(void)
{
	pr_info("mk_pwd: unloaded\n");
}

module_init(mk_pwd_init);
module_exit(mk_pwd_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("prints a line at load and unload (M=PWD Makefile build test)");
