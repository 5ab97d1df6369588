// SPDX-License-Identifier: GPL-2.0
/*
 * sleep_in_atomic: one bug on purpose, for the harness's debug-kernel tests.
 *
 * At load, sleep_in_atomic_locked() holds a spinlock and calls something that
 * may sleep:
 *   how=msleep (default)  msleep(1): it always sleeps. A DEBUG_ATOMIC_SLEEP
 *       kernel reports "BUG: sleeping function called from invalid context"
 *       at the call; a stock kernel whose preempt count is on (Debian's: the
 *       PREEMPT_DYNAMIC build) still reports "BUG: scheduling while atomic"
 *       when the task really schedules.
 *   how=alloc  kmalloc(GFP_KERNEL): it may sleep but almost never does. Only
 *       DEBUG_ATOMIC_SLEEP reports it; a stock kernel notices nothing.
 * Never load it outside a throwaway guest.
 */
#include <linux/delay.h>
#include <linux/module.h>
#include <linux/slab.h>
#include <linux/spinlock.h>
#include <linux/string.h>

static char how[8] = "msleep";
module_param_string(how, how, sizeof(how), 0444);
MODULE_PARM_DESC(how, "msleep or alloc: what is called under the spinlock");

static DEFINE_SPINLOCK(sleep_in_atomic_lock);

static noinline void sleep_in_atomic_locked(void)
{
	void *p = NULL;

	spin_lock(&sleep_in_atomic_lock);
	if (!strcmp(how, "alloc"))
		p = kmalloc(64, GFP_KERNEL); /* the bug: GFP_KERNEL may sleep */
	else
		msleep(1); /* the bug: sleeping with a spinlock held */
	spin_unlock(&sleep_in_atomic_lock);
	kfree(p);
}

static int __init sleep_in_atomic_init(void)
{
	if (strcmp(how, "msleep") && strcmp(how, "alloc"))
		return -EINVAL;
	sleep_in_atomic_locked();
	return 0;
}

static void __exit sleep_in_atomic_exit(void)
{
}

module_init(sleep_in_atomic_init);
module_exit(sleep_in_atomic_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("sleeps under a spinlock (for DEBUG_ATOMIC_SLEEP tests)");
