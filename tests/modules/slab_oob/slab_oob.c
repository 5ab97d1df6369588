// SPDX-License-Identifier: GPL-2.0
/*
 * slab_oob: one bug on purpose, for the harness's debug-kernel tests.
 *
 * At load, slab_oob_read() allocates `size` bytes with kmalloc and reads the
 * byte just past them (a 1-byte slab out-of-bounds read). On a stock kernel
 * the byte is slack space of the slab object and nothing notices; a KASAN
 * kernel reports "BUG: KASAN: slab-out-of-bounds in slab_oob_read".
 * Never load it outside a throwaway guest.
 */
#include <linux/module.h>
#include <linux/slab.h>

static unsigned int size = 17; /* kmalloc-32: 15 bytes of slack after the object */
module_param(size, uint, 0444);
MODULE_PARM_DESC(size, "bytes allocated; the byte at index size is read");

static noinline u8 slab_oob_read(void)
{
	u8 *buf = kmalloc(size, GFP_KERNEL);
	u8 value;

	if (!buf)
		return 0;
	memset(buf, 0x5a, size);
	value = READ_ONCE(buf[size]); /* the bug: one byte past the allocation */
	kfree(buf);
	return value;
}

static int __init slab_oob_init(void)
{
	pr_info("slab_oob: read 0x%02x past a %u-byte buffer\n", slab_oob_read(), size);
	return 0;
}

static void __exit slab_oob_exit(void)
{
}

module_init(slab_oob_init);
module_exit(slab_oob_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("reads one byte past a kmalloc'ed buffer (for KASAN tests)");
