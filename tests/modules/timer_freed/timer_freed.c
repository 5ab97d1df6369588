// SPDX-License-Identifier: GPL-2.0
/*
 * timer_freed: one bug on purpose, for the harness's debug-kernel tests.
 *
 * At load a kmalloc'ed object with a timer is armed to fire in an hour; at
 * unload timer_freed_release() kfrees the object without del_timer_sync().
 * A DEBUG_OBJECTS_TIMERS kernel reports "ODEBUG: free active ... object type:
 * timer_list hint: timer_freed_fn" with timer_freed_release in the trace,
 * and fixes it up (deactivates the timer). A stock kernel notices nothing:
 * the freed timer stays queued and would fire into freed memory an hour
 * later, long after a test guest is gone.
 * Never load it outside a throwaway guest.
 */
#include <linux/jiffies.h>
#include <linux/module.h>
#include <linux/slab.h>
#include <linux/timer.h>

struct timer_freed {
	struct timer_list timer;
	unsigned long fired;
};

static struct timer_freed *obj;

static void timer_freed_fn(struct timer_list *t)
{
	struct timer_freed *o = from_timer(o, t, timer);

	o->fired++;
}

static noinline void timer_freed_release(struct timer_freed *o)
{
	kfree(o); /* the bug: the timer is still armed */
	pr_info("timer_freed: object freed\n"); /* not a tail call: the report's trace shows this function */
}

static int __init timer_freed_init(void)
{
	obj = kzalloc(sizeof(*obj), GFP_KERNEL);
	if (!obj)
		return -ENOMEM;
	timer_setup(&obj->timer, timer_freed_fn, 0);
	mod_timer(&obj->timer, jiffies + 3600 * HZ);
	return 0;
}

static void __exit timer_freed_exit(void)
{
	timer_freed_release(obj);
	obj = NULL;
}

module_init(timer_freed_init);
module_exit(timer_freed_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("frees an armed timer at unload (for ODEBUG tests)");
