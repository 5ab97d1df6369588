// SPDX-License-Identifier: GPL-2.0
/*
 * crashy: breaks the kernel on purpose, one way per parameter, so that the
 * harness's tests can check that each crash fails the right test.
 *
 *   timer_ms=N   run a periodic timer (period N ms) from load on, and at
 *                unload re-arm it instead of deleting it (no del_timer_sync):
 *                exactly N ms after rmmod the timer softirq runs freed module
 *                memory and the kernel panics ("Fatal exception in interrupt").
 *   panic_ms=N   start a kthread that calls panic() N ms after the load.
 *   oops_init=1  dereference NULL in the init function: insmod is killed by
 *                the oops and the module never loads.
 *
 * With no parameter it loads and unloads cleanly.  Never load it outside a
 * throwaway guest.
 */
#include <linux/delay.h>
#include <linux/jiffies.h>
#include <linux/kthread.h>
#include <linux/module.h>
#include <linux/timer.h>

static unsigned int timer_ms;
module_param(timer_ms, uint, 0444);
MODULE_PARM_DESC(timer_ms, "period of a timer left armed after unload (0: none)");

static unsigned int panic_ms;
module_param(panic_ms, uint, 0444);
MODULE_PARM_DESC(panic_ms, "panic from a kthread this many ms after load (0: never)");

static bool oops_init;
module_param(oops_init, bool, 0444);
MODULE_PARM_DESC(oops_init, "dereference NULL in the init function");

static struct timer_list crashy_timer;
static int *volatile crashy_null;

static void crashy_tick(struct timer_list *t)
{
	mod_timer(t, jiffies + msecs_to_jiffies(timer_ms));
}

static int crashy_panic_thread(void *unused)
{
	msleep(panic_ms);
	panic("crashy: deliberate panic %u ms after load", panic_ms);
	return 0;
}

static int __init crashy_init(void)
{
	struct task_struct *task;

	if (oops_init)
		*crashy_null = 1;
	if (timer_ms) {
		timer_setup(&crashy_timer, crashy_tick, 0);
		mod_timer(&crashy_timer, jiffies + msecs_to_jiffies(timer_ms));
	}
	if (panic_ms) {
		task = kthread_run(crashy_panic_thread, NULL, "crashy_panic");
		if (IS_ERR(task))
			return PTR_ERR(task);
	}
	return 0;
}

static void __exit crashy_exit(void)
{
	/* The bug under test: the timer is re-armed, not deleted (del_timer_sync). */
	if (timer_ms)
		mod_timer(&crashy_timer, jiffies + msecs_to_jiffies(timer_ms));
}

module_init(crashy_init);
module_exit(crashy_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("Deliberate kernel crashes for the harness's crash-attribution tests");
