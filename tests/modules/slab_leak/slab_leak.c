// SPDX-License-Identifier: GPL-2.0
/*
 * slab_leak: leaks `kb` KiB of slab memory at every load, for the load/unload
 * check's memory verdict. The init function kmallocs kb * 16 objects of 64
 * bytes and drops every pointer; nothing frees them, so the guest's
 * unreclaimable slab (SUnreclaim in /proc/meminfo) grows by about `kb` KiB
 * per load/unload cycle. Never load it outside a throwaway guest.
 */
#include <linux/module.h>
#include <linux/slab.h>

static unsigned int kb = 256;
module_param(kb, uint, 0444);
MODULE_PARM_DESC(kb, "KiB of slab leaked at each load (at most 4096)");

static int __init slab_leak_init(void)
{
	unsigned int i, n = min_t(unsigned int, kb, 4096) * 16;

	for (i = 0; i < n; i++) {
		void *p = kmalloc(64, GFP_KERNEL);

		if (!p)
			return -ENOMEM;
		/* the pointer is dropped on purpose: this is the leak */
		memset(p, 0x5a, 64);
	}
	pr_info("slab_leak: loaded, leaked %u objects of 64 bytes\n", n);
	return 0;
}

static void __exit slab_leak_exit(void)
{
	pr_info("slab_leak: unloaded\n");
}

module_init(slab_leak_init);
module_exit(slab_leak_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("leaks slab memory at every load, on purpose");
