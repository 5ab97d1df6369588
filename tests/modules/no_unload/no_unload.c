// SPDX-License-Identifier: GPL-2.0
/*
 * no_unload: a module that will not unload, to test what the harness does
 * when rmmod fails. With pin=1 (the default) the init function takes a
 * reference on the module itself, so its refcount stays at 1 and rmmod
 * fails with "ERROR: Module no_unload is in use". Nothing else is left
 * running: no timers, no threads; the kernel stays healthy. Only
 * writing 1 to /sys/module/no_unload/parameters/release (the test's
 * cleanup) drops the reference; otherwise only `rmmod -f` (with
 * CONFIG_MODULE_FORCE_UNLOAD) or a reboot removes it.
 * With pin=0 it takes no reference and unloads normally.
 */
#include <linux/module.h>
#include <linux/moduleparam.h>

static bool pin = true;
module_param(pin, bool, 0444);
MODULE_PARM_DESC(pin, "take a reference on itself so rmmod fails (default 1)");

static DEFINE_MUTEX(pin_lock);
static bool pinned;

static int release_set(const char *val, const struct kernel_param *kp)
{
	mutex_lock(&pin_lock);
	if (pinned) {
		pinned = false;
		module_put(THIS_MODULE);
		pr_info("no_unload: released\n");
	}
	mutex_unlock(&pin_lock);
	return 0;
}

static const struct kernel_param_ops release_ops = {
	.set = release_set,
};
module_param_cb(release, &release_ops, NULL, 0200);
MODULE_PARM_DESC(release, "write anything: drop the reference pin=1 took");

static int __init no_unload_init(void)
{
	if (pin) {
		__module_get(THIS_MODULE);
		pinned = true;
	}
	pr_info("no_unload: loaded, pin=%d\n", pin);
	return 0;
}

static void __exit no_unload_exit(void)
{
	pr_info("no_unload: unloaded\n");
}

module_init(no_unload_init);
module_exit(no_unload_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("pins itself at load so rmmod fails (unless pin=0)");
