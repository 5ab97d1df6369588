// SPDX-License-Identifier: GPL-2.0
/*
 * array_oob: one bug on purpose, for the harness's debug-kernel tests.
 *
 * At load, array_oob_read() reads table[idx] of a u32 table[8] with idx = 8:
 * an array index out of bounds. A UBSAN_BOUNDS kernel reports
 * "UBSAN: array-index-out-of-bounds in .../array_oob.c" with array_oob_read in
 * the trace; a stock kernel reads whatever follows the table and nothing
 * notices. Never load it outside a throwaway guest.
 */
#include <linux/module.h>

static unsigned int idx = 8;
module_param(idx, uint, 0444);
MODULE_PARM_DESC(idx, "index read from an 8-entry table");

static u32 array_oob_table[8] = { 1, 2, 3, 4, 5, 6, 7, 8 };

static noinline u32 array_oob_read(unsigned int i)
{
	return array_oob_table[i]; /* the bug: i may be 8 */
}

static int __init array_oob_init(void)
{
	pr_info("array_oob: table[%u] reads %u\n", idx, array_oob_read(idx));
	return 0;
}

static void __exit array_oob_exit(void)
{
}

module_init(array_oob_init);
module_exit(array_oob_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("reads past an array (for UBSAN tests)");
