// SPDX-License-Identifier: GPL-2.0
/*
 * lock_order: one bug on purpose, for the harness's debug-kernel tests.
 *
 * At load, lock_order_ab() takes mutex a then b, and lock_order_ba() takes b
 * then a: two threads doing that at the same time deadlock. Run one after the
 * other here, nothing hangs, and a stock kernel notices nothing; a lockdep
 * kernel (PROVE_LOCKING) reports "WARNING: possible circular locking
 * dependency detected" with lock_order_ba in the trace.
 * Never load it outside a throwaway guest.
 */
#include <linux/module.h>
#include <linux/mutex.h>

static DEFINE_MUTEX(lock_order_a);
static DEFINE_MUTEX(lock_order_b);
static unsigned long lock_order_counter;

static noinline void lock_order_ab(void)
{
	mutex_lock(&lock_order_a);
	mutex_lock(&lock_order_b);
	lock_order_counter++;
	mutex_unlock(&lock_order_b);
	mutex_unlock(&lock_order_a);
}

static noinline void lock_order_ba(void)
{
	mutex_lock(&lock_order_b);
	mutex_lock(&lock_order_a); /* the bug: the opposite order of lock_order_ab */
	lock_order_counter++;
	mutex_unlock(&lock_order_a);
	mutex_unlock(&lock_order_b);
}

static int __init lock_order_init(void)
{
	lock_order_ab();
	lock_order_ba();
	return 0;
}

static void __exit lock_order_exit(void)
{
}

module_init(lock_order_init);
module_exit(lock_order_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("takes two mutexes in both orders (for lockdep tests)");
