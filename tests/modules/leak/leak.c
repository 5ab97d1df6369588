// SPDX-License-Identifier: GPL-2.0
/*
 * leak: one bug on purpose, for the harness's debug-kernel tests.
 *
 * At load, leak_alloc() kmallocs `count` buffers of 64 bytes and keeps their
 * addresses only in the module's own memory; the exit function forgets to
 * kfree them. After rmmod nothing refers to them any more: kmemleak's next
 * scan lists each as an "unreferenced object" whose backtrace has
 * leak_alloc. A stock kernel has no kmemleak and nothing notices.
 * Never load it outside a throwaway guest.
 */
#include <linux/module.h>
#include <linux/slab.h>

#define LEAK_MAX 8

static unsigned int count = 1;
module_param(count, uint, 0444);
MODULE_PARM_DESC(count, "buffers leaked at unload (at most 8)");

static void *leak_bufs[LEAK_MAX];

static noinline int leak_alloc(unsigned int i)
{
	leak_bufs[i] = kmalloc(64, GFP_KERNEL);
	if (!leak_bufs[i])
		return -ENOMEM;
	snprintf(leak_bufs[i], 64, "leak %u", i);
	return 0;
}

static int __init leak_init(void)
{
	unsigned int i;
	int err;

	for (i = 0; i < min_t(unsigned int, count, LEAK_MAX); i++) {
		err = leak_alloc(i);
		if (err)
			return err;
	}
	return 0;
}

static void __exit leak_exit(void)
{
	/* the bug: no kfree(leak_bufs[i]) */
}

module_init(leak_init);
module_exit(leak_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("leaks kmalloc'ed buffers at unload (for kmemleak tests)");
