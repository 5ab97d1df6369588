// SPDX-License-Identifier: GPL-2.0
/*
 * dep_intree: depends on an in-tree module. It calls crc7_be(), exported
 * by lib/crc7.c, which Debian builds as a module (CONFIG_CRC7=m, on amd64
 * and arm64 alike; crc8 is built in on arm64) that nothing in a minimal
 * guest loads. So `modinfo -F depends dep_intree.ko` prints "crc7": insmod
 * alone fails with "Unknown symbol", modprobe (after depmod) loads crc7 first.
 *
 * At load it prints the CRC-7 (x^7 + x^3 + 1, MSB first, in the top seven
 * bits) of "hello world!": 0xe4.
 */
#include <linux/crc7.h>
#include <linux/module.h>
#include <linux/string.h>

static int __init dep_intree_init(void)
{
	static const char msg[] = "hello world!";
	u8 crc = crc7_be(0, (const u8 *)msg, strlen(msg));

	pr_info("dep_intree: loaded, crc7(\"%s\") = 0x%02x\n", msg, crc);
	return 0;
}

static void __exit dep_intree_exit(void)
{
	pr_info("dep_intree: unloaded\n");
}

module_init(dep_intree_init);
module_exit(dep_intree_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("prints the crc7 of a string at load (in-tree module dependency test)");
