// SPDX-License-Identifier: GPL-2.0
/*
 * A bug only one architecture sees: a reference count kept at an odd offset
 * of a wire-format header (as a driver that overlays a packed descriptor on
 * its buffer would). x86 takes a locked add at any address inside a cache
 * line; arm64's atomics (LL/SC, and LSE without FEAT_LSE2 as under QEMU's TCG)
 * need natural alignment and take an alignment fault: an Oops in the init.
 */
#include <linux/atomic.h>
#include <linux/module.h>
#include <linux/slab.h>

MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("harness test: an atomic_t at an odd address (faults on arm64, fine on x86)");

#define USERS_OFFSET 1 /* after a one-byte tag */

static u8 *desc;

static int __init unaligned_atomic_init(void)
{
	atomic_t *users;

	desc = kzalloc(16, GFP_KERNEL);
	if (!desc)
		return -ENOMEM;
	users = (atomic_t *)(desc + USERS_OFFSET);
	atomic_inc(users);
	pr_info("unaligned_atomic: users %d\n", atomic_read(users));
	return 0;
}

static void __exit unaligned_atomic_exit(void)
{
	kfree(desc);
}

module_init(unaligned_atomic_init);
module_exit(unaligned_atomic_exit);
