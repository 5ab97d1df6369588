/* SPDX-License-Identifier: GPL-2.0 */
/*
 * knetlink_compat.h - kernel API differences the module has to bridge.
 *
 * Only the newest branch of each guard is compiled in CI (6.1 and 6.12),
 * the older branches document the historical signatures:
 *
 *   netlink_kernel_create()
 *     < 3.6 : (net, unit, groups, input, cb_mutex, module)
 *     3.6   : (net, unit, module, cfg)            [struct netlink_kernel_cfg]
 *     >= 3.7: (net, unit, cfg)                    [inline wrapper passing THIS_MODULE]
 *
 *   netlink_ack()
 *     < 4.12 : (in_skb, nlh, err)
 *     >= 4.12: (in_skb, nlh, err, extack)
 *
 *   netlink_capable(skb, cap)
 *     added in 3.15; before that only the global capable() test exists.
 *
 *   sock_create_kern()
 *     < 4.2 : (family, type, proto, res)
 *     >= 4.2: (net, family, type, proto, res)
 *
 *   READ_ONCE() replaced ACCESS_ONCE() in 3.19.
 *
 * module_param_cb() with 'const struct kernel_param *' callbacks appeared
 * in 2.6.36, which is therefore the oldest kernel this file claims to cover.
 */
#ifndef KNETLINK_COMPAT_H
#define KNETLINK_COMPAT_H

#include <linux/version.h>
#include <linux/netlink.h>
#include <linux/capability.h>
#include <linux/net.h>
#include <net/sock.h>

#if LINUX_VERSION_CODE < KERNEL_VERSION(2, 6, 36)
#error "knetlink needs Linux 2.6.36 or newer (module_param_cb, skb input callback)"
#endif

static inline struct sock *knl_kernel_create(struct net *net, int unit,
					     void (*input)(struct sk_buff *skb))
{
#if LINUX_VERSION_CODE >= KERNEL_VERSION(3, 7, 0)
	struct netlink_kernel_cfg cfg = {
		.input = input,
	};

	return netlink_kernel_create(net, unit, &cfg);
#elif LINUX_VERSION_CODE >= KERNEL_VERSION(3, 6, 0)
	struct netlink_kernel_cfg cfg = {
		.input = input,
	};

	return netlink_kernel_create(net, unit, THIS_MODULE, &cfg);
#else
	return netlink_kernel_create(net, unit, 0, input, NULL, THIS_MODULE);
#endif
}

static inline void knl_ack(struct sk_buff *in_skb, struct nlmsghdr *nlh, int err)
{
#if LINUX_VERSION_CODE >= KERNEL_VERSION(4, 12, 0)
	netlink_ack(in_skb, nlh, err, NULL);
#else
	netlink_ack(in_skb, nlh, err);
#endif
}

static inline bool knl_capable(const struct sk_buff *skb, int cap)
{
#if LINUX_VERSION_CODE >= KERNEL_VERSION(3, 15, 0)
	return netlink_capable(skb, cap);
#else
	/* Before 3.15 the check is made against the sending task. */
	(void)skb;
	return capable(cap);
#endif
}

static inline int knl_sock_create_kern(struct net *net, int family, int type,
				       int protocol, struct socket **res)
{
#if LINUX_VERSION_CODE >= KERNEL_VERSION(4, 2, 0)
	return sock_create_kern(net, family, type, protocol, res);
#else
	/* Before 4.2 kernel sockets always lived in init_net. */
	(void)net;
	return sock_create_kern(family, type, protocol, res);
#endif
}

#ifndef READ_ONCE
#define READ_ONCE(x) ACCESS_ONCE(x)
#endif

#endif /* KNETLINK_COMPAT_H */
