// SPDX-License-Identifier: GPL-2.0
/*
 * cov_probe: a module for the harness's coverage tests.
 *
 * At load, cov_probe_init() calls cov_taken() when `path` is 1 (the default)
 * and cov_never() otherwise: loaded with the default, a coverage report must
 * count cov_taken() once per load and cov_never() not at all.
 * Never load it outside a throwaway guest.
 */
#include <linux/module.h>

static unsigned int path = 1;
module_param(path, uint, 0444);
MODULE_PARM_DESC(path, "1: call cov_taken() at load; anything else: cov_never()");

static int result;

static noinline int cov_taken(unsigned int x)
{
	return x * 3 + 1;
}

static noinline int cov_never(unsigned int x)
{
	return x * 5 + 2;
}

static int __init cov_probe_init(void)
{
	result = path == 1 ? cov_taken(path) : cov_never(path);
	pr_info("cov_probe: %d\n", result);
	return 0;
}

static void __exit cov_probe_exit(void)
{
}

module_init(cov_probe_init);
module_exit(cov_probe_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("calls one of two functions at load (for coverage tests)");
