// SPDX-License-Identifier: GPL-2.0
/*
 * oob_leak: two bugs on purpose, for the harness's debug-kernel tests.
 *
 * At load, oob_leak_alloc() kmallocs a 64-byte buffer whose address only
 * the module's own memory holds, then oob_leak_read() reads the byte just past
 * a 17-byte kmalloc'ed buffer (KASAN: slab-out-of-bounds). The exit function
 * forgets to kfree the first buffer, so after rmmod kmemleak lists it as an
 * unreferenced object whose backtrace has oob_leak_alloc. The KASAN report makes the
 * harness discard the guest; both bugs must still be reported.
 * Never load it outside a throwaway guest.
 */
#include <linux/module.h>
#include <linux/slab.h>

static void *oob_leak_buf;

static noinline u8 oob_leak_read(void)
{
	u8 *buf = kmalloc(17, GFP_KERNEL);
	u8 value;

	if (!buf)
		return 0;
	memset(buf, 0x5a, 17);
	value = READ_ONCE(buf[17]); /* the first bug: one byte past the allocation */
	kfree(buf);
	return value;
}

static noinline int oob_leak_alloc(void)
{
	oob_leak_buf = kmalloc(64, GFP_KERNEL);
	if (!oob_leak_buf)
		return -ENOMEM;
	snprintf(oob_leak_buf, 64, "oob_leak");
	return 0;
}

static int __init oob_leak_init(void)
{
	int err = oob_leak_alloc();

	if (err)
		return err;
	pr_info("oob_leak: read 0x%02x past a 17-byte buffer\n", oob_leak_read());
	return 0;
}

static void __exit oob_leak_exit(void)
{
	/* the second bug: no kfree(oob_leak_buf) */
}

module_init(oob_leak_init);
module_exit(oob_leak_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("reads past a kmalloc'ed buffer and leaks another (for KASAN and kmemleak tests)");
