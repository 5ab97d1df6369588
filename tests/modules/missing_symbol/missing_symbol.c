// SPDX-License-Identifier: GPL-2.0
/*
 * missing_symbol: calls a function that no kernel and no module exports,
 * to test how the harness reports a build-time undefined symbol. modpost
 * flags knh_symbol_no_kernel_exports as undefined (an error on 6.1 and
 * 6.12 unless KBUILD_MODPOST_WARN=1). If a .ko is produced anyway,
 * loading it fails with "Unknown symbol knh_symbol_no_kernel_exports".
 */
#include <linux/module.h>

extern int knh_symbol_no_kernel_exports(void);

static int __init missing_symbol_init(void)
{
	pr_info("missing_symbol: loaded, got %d\n",
		knh_symbol_no_kernel_exports());
	return 0;
}

static void __exit missing_symbol_exit(void)
{
	pr_info("missing_symbol: unloaded\n");
}

module_init(missing_symbol_init);
module_exit(missing_symbol_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("calls a symbol nobody exports (modpost undefined-symbol test)");
