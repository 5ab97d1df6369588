// SPDX-License-Identifier: GPL-2.0
/*
 * dep_intree: depends on an in-tree module. It calls crc8_populate_msb()
 * and crc8(), exported by lib/crc8.c, which Debian builds as a module
 * (CONFIG_CRC8=m) that nothing in a minimal guest loads. So
 * `modinfo -F depends dep_intree.ko` prints "crc8": insmod alone fails
 * with "Unknown symbol", modprobe (after depmod) loads crc8 first.
 *
 * At load it prints the CRC-8 (polynomial 0x07, init 0) of "hello world!".
 */
#include <linux/crc8.h>
#include <linux/module.h>
#include <linux/string.h>

#define DEP_INTREE_POLY 0x07

static int __init dep_intree_init(void)
{
	static const char msg[] = "hello world!";
	u8 table[CRC8_TABLE_SIZE];
	u8 crc;

	crc8_populate_msb(table, DEP_INTREE_POLY);
	crc = crc8(table, (const u8 *)msg, strlen(msg), 0);
	pr_info("dep_intree: loaded, crc8(\"%s\") = 0x%02x\n", msg, crc);
	return 0;
}

static void __exit dep_intree_exit(void)
{
	pr_info("dep_intree: unloaded\n");
}

module_init(dep_intree_init);
module_exit(dep_intree_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("prints the crc8 of a string at load (in-tree module dependency test)");
