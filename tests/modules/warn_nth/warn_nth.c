// SPDX-License-Identifier: GPL-2.0
/*
 * warn_nth: a kernel WARNING on demand, for testing the harness itself.
 *
 * Every write to /sys/module/warn_nth/parameters/poke is counted; the write
 * that brings the count to warn_at (default 40) triggers WARN_ON(), the
 * shape of a regression that only shows on the Nth message. Reading poke
 * gives the count. warn_at=0 never warns.
 *
 *   insmod warn_nth.ko [warn_at=N]
 *   echo 1 > /sys/module/warn_nth/parameters/poke    (N times)
 */

#include <linux/atomic.h>
#include <linux/bug.h>
#include <linux/kernel.h>
#include <linux/module.h>
#include <linux/moduleparam.h>
#include <linux/sysfs.h>

static unsigned int warn_at = 40;
module_param(warn_at, uint, 0644);
MODULE_PARM_DESC(warn_at, "number of the poke write that warns (default 40, 0: never)");

static atomic_t warn_nth_pokes = ATOMIC_INIT(0);

/* set() of poke: the value written is ignored, only the write counts. */
static int warn_nth_poke_set(const char *val, const struct kernel_param *kp)
{
	unsigned int count = atomic_inc_return(&warn_nth_pokes);

	WARN_ON(count == READ_ONCE(warn_at));
	return 0;
}

/* get() of poke: the number of writes so far. */
static int warn_nth_poke_get(char *buffer, const struct kernel_param *kp)
{
	return sysfs_emit(buffer, "%d\n", atomic_read(&warn_nth_pokes));
}

static const struct kernel_param_ops warn_nth_poke_ops = {
	.set = warn_nth_poke_set,
	.get = warn_nth_poke_get,
};

module_param_cb(poke, &warn_nth_poke_ops, NULL, 0644);
MODULE_PARM_DESC(poke, "write anything: counts writes, WARNs on write number warn_at");

static int __init warn_nth_init(void)
{
	pr_info("warn_nth: loaded, warns on poke write %u\n", warn_at);
	return 0;
}

static void __exit warn_nth_exit(void)
{
	pr_info("warn_nth: unloaded after %d pokes\n", atomic_read(&warn_nth_pokes));
}

module_init(warn_nth_init);
module_exit(warn_nth_exit);

MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("Counts writes to a parameter and WARNs on the Nth one (harness self-test)");
