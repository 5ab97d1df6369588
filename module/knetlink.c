// SPDX-License-Identifier: GPL-2.0
/*
 * knetlink - a small netlink echo-and-log kernel module.
 *
 * Registers a netlink protocol (default 21, like the classic 2.6.26 example),
 * writes one kernel log line "link:<payload>" for every data message it
 * receives and acknowledges each message with an NLMSG_ERROR ack.
 *
 * Message rules (see docs/module.md for the full table):
 *   - nlmsg_type 0 or >= NLMSG_MIN_TYPE: print one "link:" line, ack 0.
 *     NLM_F_REQUEST is not required (the classic sender sets no flags).
 *   - nlmsg_type 1..15 (control range): not printed, ack 0 only when
 *     NLM_F_ACK is set.
 *   - require_cap=1 and sender lacks CAP_NET_ADMIN: ack -EPERM, not printed.
 *   - malformed framing: ack -EINVAL and drop the rest of the datagram.
 *   - zero-length datagram: dropped without an ack (nothing to answer).
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/module.h>
#include <linux/kernel.h>
#include <linux/init.h>
#include <linux/atomic.h>
#include <linux/moduleparam.h>
#include <linux/percpu.h>
#include <linux/skbuff.h>
#include <linux/string.h>
#include <linux/netlink.h>
#include <net/sock.h>
#include <net/net_namespace.h>

#include "knetlink_compat.h"

#define KNL_DEFAULT_PROTO	21	/* same number as the classic example */

/*
 * Upper bound for print_max.  Every payload byte can expand to four
 * characters ("\xHH"), so the longest line is
 *   5 ("link:") + 4 * 200 + 23 ("...[+4294967295 bytes]" + NUL) = 828
 * characters, comfortably below the printk record limit (~1000).
 */
#define KNL_PRINT_MAX_LIMIT	200
#define KNL_TRUNC_MARK_MAX	sizeof("...[+4294967295 bytes]")
#define KNL_LINE_SIZE		(4 * KNL_PRINT_MAX_LIMIT + KNL_TRUNC_MARK_MAX)

/* ---- parameters ------------------------------------------------------- */

static int proto = KNL_DEFAULT_PROTO;
module_param(proto, int, 0444);
MODULE_PARM_DESC(proto, "netlink protocol number to register, 0..31 (default 21)");

static bool require_cap;
module_param(require_cap, bool, 0644);
MODULE_PARM_DESC(require_cap,
		 "require CAP_NET_ADMIN from senders, others get -EPERM (default 0)");

static unsigned int print_max = 128;

static int knl_print_max_set(const char *val, const struct kernel_param *kp)
{
	unsigned int v;
	int err;

	err = kstrtouint(val, 0, &v);
	if (err) {
		pr_err("print_max: '%s' is not a number\n", val);
		return -EINVAL;
	}
	if (v > KNL_PRINT_MAX_LIMIT) {
		pr_err("print_max=%u out of range (0..%u)\n", v, KNL_PRINT_MAX_LIMIT);
		return -EINVAL;
	}
	*(unsigned int *)kp->arg = v;
	return 0;
}

static int knl_print_max_get(char *buffer, const struct kernel_param *kp)
{
	return scnprintf(buffer, PAGE_SIZE, "%u\n", *(unsigned int *)kp->arg);
}

static const struct kernel_param_ops knl_print_max_ops = {
	.set = knl_print_max_set,
	.get = knl_print_max_get,
};
module_param_cb(print_max, &knl_print_max_ops, &print_max, 0644);
__MODULE_PARM_TYPE(print_max, "uint");
MODULE_PARM_DESC(print_max, "max payload bytes printed per message, 0..200 (default 128)");

/* ---- statistics, read-only parameters ---------------------------------- */

static atomic_t knl_received;	/* well-formed messages handled */
static atomic_t knl_printed;	/* "link:" lines written */
static atomic_t knl_acked;	/* acks sent, any error value */
static atomic_t knl_errors;	/* -EINVAL/-EPERM acks + dropped empty datagrams */

static int knl_stat_set(const char *val, const struct kernel_param *kp)
{
	pr_err("%s is read-only\n", kp->name);
	return -EPERM;
}

static int knl_stat_get(char *buffer, const struct kernel_param *kp)
{
	return scnprintf(buffer, PAGE_SIZE, "%d\n", atomic_read((atomic_t *)kp->arg));
}

static const struct kernel_param_ops knl_stat_ops = {
	.set = knl_stat_set,
	.get = knl_stat_get,
};
module_param_cb(stat_received, &knl_stat_ops, &knl_received, 0444);
MODULE_PARM_DESC(stat_received, "well-formed messages handled (read-only)");
module_param_cb(stat_printed, &knl_stat_ops, &knl_printed, 0444);
MODULE_PARM_DESC(stat_printed, "link lines printed (read-only)");
module_param_cb(stat_acked, &knl_stat_ops, &knl_acked, 0444);
MODULE_PARM_DESC(stat_acked, "acks sent (read-only)");
module_param_cb(stat_errors, &knl_stat_ops, &knl_errors, 0444);
MODULE_PARM_DESC(stat_errors, "error acks and dropped empty datagrams (read-only)");

/* ---- state ------------------------------------------------------------ */

static struct sock *knl_sock;

/*
 * One line buffer per CPU: the receive callback runs in the sender's process
 * context, possibly on several CPUs at once.  Preemption stays disabled
 * while a buffer is in use (get_cpu_ptr/put_cpu_ptr), so nothing else on
 * the same CPU can touch it meanwhile.  Keeps ~830 bytes off the stack.
 */
struct knl_line {
	char buf[KNL_LINE_SIZE];
};
static DEFINE_PER_CPU(struct knl_line, knl_line_buf);

/* ---- helpers ---------------------------------------------------------- */

/*
 * Escape @n bytes of @src into @dst (which must hold 4 * n + 1 bytes):
 * printable ASCII 0x20..0x7e except '\\' is copied, '\\' becomes "\\\\",
 * everything else becomes "\xHH" (lowercase).  The result contains no
 * newline or other control character, so one message is one log line.
 */
static size_t knl_escape(char *dst, const u8 *src, size_t n)
{
	static const char hex[] = "0123456789abcdef";
	size_t i, o = 0;

	for (i = 0; i < n; i++) {
		u8 c = src[i];

		if (c == '\\') {
			dst[o++] = '\\';
			dst[o++] = '\\';
		} else if (c >= 0x20 && c <= 0x7e) {
			dst[o++] = c;
		} else {
			dst[o++] = '\\';
			dst[o++] = 'x';
			dst[o++] = hex[c >> 4];
			dst[o++] = hex[c & 0xf];
		}
	}
	dst[o] = '\0';
	return o;
}

static void knl_print_payload(const u8 *payload, u32 len)
{
	unsigned int max = READ_ONCE(print_max);
	struct knl_line *line;
	u32 shown;
	size_t o;

	if (max > KNL_PRINT_MAX_LIMIT)
		max = KNL_PRINT_MAX_LIMIT;
	shown = min_t(u32, len, max);

	line = get_cpu_ptr(&knl_line_buf);
	o = knl_escape(line->buf, payload, shown);
	if (shown < len)
		snprintf(line->buf + o, sizeof(line->buf) - o,
			 "...[+%u bytes]", len - shown);
	/* No pr_fmt prefix here: the classic expected log is "link:hello world!". */
	printk(KERN_INFO "link:%s\n", line->buf);
	put_cpu_ptr(&knl_line_buf);

	atomic_inc(&knl_printed);
}

static void knl_send_ack(struct sk_buff *skb, struct nlmsghdr *nlh, int err)
{
	knl_ack(skb, nlh, err);
	atomic_inc(&knl_acked);
	if (err)
		atomic_inc(&knl_errors);
}

/*
 * Answer a malformed datagram with -EINVAL.
 *
 * netlink_ack() copies nlh->nlmsg_len bytes of the offending message into
 * the error ack, so it must never see the sender's (bogus) length.  Build a
 * local header from the bytes that really exist (zero-filled when fewer
 * than a header remain) and clamp its length to the header itself.
 */
static void knl_reject(struct sk_buff *skb, const void *bytes, unsigned int avail,
		       unsigned int offset)
{
	struct nlmsghdr hdr;

	memset(&hdr, 0, sizeof(hdr));
	memcpy(&hdr, bytes, min_t(unsigned int, avail, sizeof(hdr)));
	if (avail >= sizeof(hdr))
		pr_warn_ratelimited("malformed message at offset %u: nlmsg_len %u, %u bytes left, -EINVAL\n",
				    offset, hdr.nlmsg_len, avail);
	else
		pr_warn_ratelimited("malformed message at offset %u: %u bytes left, shorter than a header, -EINVAL\n",
				    offset, avail);
	hdr.nlmsg_len = sizeof(hdr);
	knl_send_ack(skb, &hdr, -EINVAL);
}

/* ---- receive path ----------------------------------------------------- */

/*
 * Both are global and noinline on purpose: global symbols are not renamed
 * by GCC's IPA clones (.isra/.constprop), so kprobes and eBPF programs can
 * attach to them by name.  Not exported; nothing outside needs to call them.
 */
noinline int knetlink_handle_msg(struct sk_buff *skb, struct nlmsghdr *nlh);
noinline void knetlink_rcv(struct sk_buff *skb);

/*
 * Handle one well-formed message (nlmsg_len already checked against the
 * datagram).  Returns the error value that was acked, 0 also when no ack
 * was sent.  noinline so that kprobes can attach by name.
 */
noinline int knetlink_handle_msg(struct sk_buff *skb, struct nlmsghdr *nlh)
{
	const u8 *payload = (const u8 *)nlh + NLMSG_HDRLEN;
	u32 plen = nlh->nlmsg_len - NLMSG_HDRLEN;
	const u8 *nul;

	atomic_inc(&knl_received);

	if (READ_ONCE(require_cap) && !knl_capable(skb, CAP_NET_ADMIN)) {
		knl_send_ack(skb, nlh, -EPERM);
		return -EPERM;
	}

	if (nlh->nlmsg_type != 0 && nlh->nlmsg_type < NLMSG_MIN_TYPE) {
		/* Control range: nothing to print, ack only when asked. */
		if (nlh->nlmsg_flags & NLM_F_ACK)
			knl_send_ack(skb, nlh, 0);
		return 0;
	}

	/* The classic sender zero-pads; the payload ends at the first NUL. */
	nul = memchr(payload, '\0', plen);
	if (nul)
		plen = nul - payload;

	knl_print_payload(payload, plen);
	knl_send_ack(skb, nlh, 0);
	return 0;
}

/*
 * Netlink input callback.  A plain loop instead of netlink_rcv_skb(): the
 * latter skips messages without NLM_F_REQUEST and only acks on NLM_F_ACK,
 * while the classic sender sends type 0 with no flags and expects a log
 * line and an ack.
 */
noinline void knetlink_rcv(struct sk_buff *skb)
{
	/* Netlink skbs are linear; bound by the linear part to be safe. */
	const u8 *data = skb->data;
	unsigned int len = skb_headlen(skb);
	unsigned int off = 0;

	if (len == 0) {
		/* No header, no sequence number: nothing meaningful to ack. */
		atomic_inc(&knl_errors);
		return;
	}
	if (len < NLMSG_HDRLEN) {
		knl_reject(skb, data, len, 0);
		return;
	}

	/* Trailing bytes shorter than a header are ignored (like netlink_rcv_skb). */
	while (len - off >= NLMSG_HDRLEN) {
		struct nlmsghdr *nlh = (struct nlmsghdr *)(data + off);
		unsigned int left = len - off;
		unsigned int step;

		if (nlh->nlmsg_len < NLMSG_HDRLEN || nlh->nlmsg_len > left) {
			knl_reject(skb, nlh, left, off);
			return;
		}

		knetlink_handle_msg(skb, nlh);

		step = NLMSG_ALIGN(nlh->nlmsg_len);
		if (step > left)
			step = left;
		off += step;
	}
}

/* ---- init / exit ------------------------------------------------------ */

static const char *const knl_proto_names[MAX_LINKS] = {
	[0] = "NETLINK_ROUTE",		[2] = "NETLINK_USERSOCK",
	[3] = "NETLINK_FIREWALL",	[4] = "NETLINK_SOCK_DIAG",
	[5] = "NETLINK_NFLOG",		[6] = "NETLINK_XFRM",
	[7] = "NETLINK_SELINUX",	[8] = "NETLINK_ISCSI",
	[9] = "NETLINK_AUDIT",		[10] = "NETLINK_FIB_LOOKUP",
	[11] = "NETLINK_CONNECTOR",	[12] = "NETLINK_NETFILTER",
	[13] = "NETLINK_IP6_FW",	[14] = "NETLINK_DNRTMSG",
	[15] = "NETLINK_KOBJECT_UEVENT", [16] = "NETLINK_GENERIC",
	[18] = "NETLINK_SCSITRANSPORT",	[19] = "NETLINK_ECRYPTFS",
	[20] = "NETLINK_RDMA",		[21] = "NETLINK_CRYPTO",
	[22] = "NETLINK_SMC",
};

/*
 * netlink_kernel_create() returned NULL.  It does that both when the
 * protocol already has a kernel socket (netlink_insert() fails with
 * -EADDRINUSE) and on allocation failure, without telling which.
 *
 * Probe only now, after the failure: creating a user-style kernel socket
 * succeeds exactly when the protocol is registered.  In that case
 * netlink_create() does not call request_module().  It only would when the
 * protocol is *not* registered, i.e. in the genuine out-of-memory case,
 * where it may autoload the module owning the protocol (crypto_user for
 * 21); that rare path is accepted and documented.  Probing before the
 * create would trigger the autoload on every successful load instead.
 */
static int knl_create_failed(void)
{
	const char *name = knl_proto_names[proto];
	struct socket *probe;
	int err;

	err = knl_sock_create_kern(&init_net, PF_NETLINK, SOCK_RAW, proto, &probe);
	if (err == 0) {
		sock_release(probe);
		if (proto == NETLINK_CRYPTO)
			pr_err("netlink protocol %d is already registered (%s: is crypto_user loaded?), use proto=N\n",
			       proto, name);
		else if (name)
			pr_err("netlink protocol %d is already registered (%s), use proto=N\n",
			       proto, name);
		else
			pr_err("netlink protocol %d is already registered, use proto=N\n",
			       proto);
		return -EADDRINUSE;
	}

	pr_err("cannot create netlink socket for protocol %d (probe: %d), assuming out of memory\n",
	       proto, err);
	return -ENOMEM;
}

static int __init knetlink_init(void)
{
	if (proto < 0 || proto >= MAX_LINKS) {
		pr_err("proto=%d out of range (0..%d)\n", proto, MAX_LINKS - 1);
		return -EINVAL;
	}

	knl_sock = knl_kernel_create(&init_net, proto, knetlink_rcv);
	if (!knl_sock)
		return knl_create_failed();

	pr_info("Init OK! (proto %d, print_max %u, require_cap %d)\n",
		proto, print_max, require_cap ? 1 : 0);
	return 0;
}

static void __exit knetlink_exit(void)
{
	netlink_kernel_release(knl_sock);
	pr_info("Release OK! (proto %d, received %d, printed %d, acked %d, errors %d)\n",
		proto, atomic_read(&knl_received), atomic_read(&knl_printed),
		atomic_read(&knl_acked), atomic_read(&knl_errors));
}

module_init(knetlink_init);
module_exit(knetlink_exit);

MODULE_LICENSE("GPL");
MODULE_AUTHOR("knetlink-harness");
MODULE_DESCRIPTION("netlink protocol that logs every message as link:<payload> and acks it");
