// SPDX-License-Identifier: GPL-2.0
/*
 * two_ko_client: the half of the two_ko driver a user tests. At load it
 * calls two_ko_core_hello() from the sibling module two_ko_core, so
 * `modinfo -F depends two_ko_client.ko` prints "two_ko_core" and loading
 * it needs two_ko_core loaded first (modprobe does that after depmod).
 */
#include <linux/module.h>

#include "two_ko_core.h"

static int __init two_ko_client_init(void)
{
	int ret = two_ko_core_hello("two_ko_client");

	pr_info("two_ko_client: loaded, two_ko_core_hello() = %d\n", ret);
	return 0;
}

static void __exit two_ko_client_exit(void)
{
	pr_info("two_ko_client: unloaded\n");
}

module_init(two_ko_client_init);
module_exit(two_ko_client_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("calls two_ko_core_hello() at load (two-module driver test)");
