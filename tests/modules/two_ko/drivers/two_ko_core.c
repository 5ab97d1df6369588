// SPDX-License-Identifier: GPL-2.0
/*
 * two_ko_core: the library half of the two_ko driver. It exports
 * two_ko_core_hello(), which two_ko_client calls, so the client cannot
 * load until this module is loaded.
 */
#include <linux/module.h>

#include "two_ko_core.h"

int two_ko_core_hello(const char *who)
{
	pr_info("two_ko_core: hello from %s\n", who);
	return 42;
}
EXPORT_SYMBOL_GPL(two_ko_core_hello);

static int __init two_ko_core_init(void)
{
	pr_info("two_ko_core: loaded\n");
	return 0;
}

static void __exit two_ko_core_exit(void)
{
	pr_info("two_ko_core: unloaded\n");
}

module_init(two_ko_core_init);
module_exit(two_ko_core_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("exports two_ko_core_hello() for two_ko_client");
