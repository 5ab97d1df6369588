// SPDX-License-Identifier: GPL-2.0
/*
 * genl_echo - a generic netlink family that echoes a string back.
 *
 * Family "KNH_ECHO", version 1, one command:
 *
 *   GENL_ECHO_CMD_ECHO (1)
 *     request:  GENL_ECHO_ATTR_MSG (1), NUL-terminated string, at most
 *               GENL_ECHO_MSG_MAX bytes including the NUL
 *     reply:    GENL_ECHO_ATTR_MSG = <prefix><msg>, sent to the requester
 *               with genlmsg_reply(); a request without the attribute is
 *               answered with -EINVAL.
 *
 * Every echoed request writes one kernel log line
 *   genl_echo: echo <msg> (<n> bytes) portid <portid>
 * with the message escaped, so control characters cannot forge log lines.
 *
 * Parameter: prefix (string, default empty) is put in front of every reply.
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/module.h>
#include <linux/kernel.h>
#include <linux/init.h>
#include <linux/moduleparam.h>
#include <linux/string.h>
#include <linux/version.h>
#include <net/genetlink.h>

#define GENL_ECHO_FAMILY	"KNH_ECHO"
#define GENL_ECHO_VERSION	1
#define GENL_ECHO_MSG_MAX	256	/* bytes, including the terminating NUL */
#define GENL_ECHO_PREFIX_MAX	64

enum {
	GENL_ECHO_CMD_UNSPEC,
	GENL_ECHO_CMD_ECHO,
	__GENL_ECHO_CMD_MAX,
};

enum {
	GENL_ECHO_ATTR_UNSPEC,
	GENL_ECHO_ATTR_MSG,
	__GENL_ECHO_ATTR_MAX,
};
#define GENL_ECHO_ATTR_MAX	(__GENL_ECHO_ATTR_MAX - 1)

static char *prefix = "";
module_param(prefix, charp, 0444);
MODULE_PARM_DESC(prefix, "string put in front of every reply (default empty, at most 63 bytes)");

static atomic_t echoed = ATOMIC_INIT(0);

static const struct nla_policy genl_echo_policy[GENL_ECHO_ATTR_MAX + 1] = {
	[GENL_ECHO_ATTR_MSG] = { .type = NLA_NUL_STRING, .len = GENL_ECHO_MSG_MAX - 1 },
};

static struct genl_family genl_echo_family;

static int genl_echo_doit(struct sk_buff *skb, struct genl_info *info)
{
	const struct nlattr *attr = info->attrs[GENL_ECHO_ATTR_MSG];
	const char *msg;
	struct sk_buff *reply;
	void *hdr;
	char *text;
	size_t len;
	int err;

	if (!attr) {
		GENL_SET_ERR_MSG(info, "missing GENL_ECHO_ATTR_MSG");
		return -EINVAL;
	}
	msg = nla_data(attr);
	len = strnlen(msg, nla_len(attr));

	text = kasprintf(GFP_KERNEL, "%s%.*s", prefix, (int)len, msg);
	if (!text)
		return -ENOMEM;

	err = -ENOMEM;
	reply = genlmsg_new(nla_total_size(strlen(text) + 1), GFP_KERNEL);
	if (!reply)
		goto out_free;

	hdr = genlmsg_put_reply(reply, info, &genl_echo_family, 0, GENL_ECHO_CMD_ECHO);
	if (!hdr)
		goto out_nlmsg;
	err = nla_put_string(reply, GENL_ECHO_ATTR_MSG, text);
	if (err)
		goto out_nlmsg;
	genlmsg_end(reply, hdr);

	pr_info("echo %*pE (%zu bytes) portid %u\n", (int)len, msg, len, info->snd_portid);
	atomic_inc(&echoed);
	kfree(text);
	return genlmsg_reply(reply, info);

out_nlmsg:
	nlmsg_free(reply);
out_free:
	kfree(text);
	return err;
}

static const struct genl_small_ops genl_echo_ops[] = {
	{
		.cmd = GENL_ECHO_CMD_ECHO,
		.doit = genl_echo_doit,
	},
};

static struct genl_family genl_echo_family __ro_after_init = {
	.name = GENL_ECHO_FAMILY,
	.version = GENL_ECHO_VERSION,
	.maxattr = GENL_ECHO_ATTR_MAX,
	.policy = genl_echo_policy,
	.netnsok = true,
	.module = THIS_MODULE,
	.small_ops = genl_echo_ops,
	.n_small_ops = ARRAY_SIZE(genl_echo_ops),
#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 1, 0)
	/* strict header checks for every command: this family never had old users */
	.resv_start_op = __GENL_ECHO_CMD_MAX,
#endif
};

static int __init genl_echo_init(void)
{
	int err;

	if (strlen(prefix) >= GENL_ECHO_PREFIX_MAX) {
		pr_err("prefix is %zu bytes, at most %d allowed\n", strlen(prefix), GENL_ECHO_PREFIX_MAX - 1);
		return -EINVAL;
	}
	err = genl_register_family(&genl_echo_family);
	if (err) {
		pr_err("cannot register generic netlink family %s: %d\n", GENL_ECHO_FAMILY, err);
		return err;
	}
	pr_info("family %s registered (id %u, prefix \"%s\")\n", GENL_ECHO_FAMILY, genl_echo_family.id, prefix);
	return 0;
}

static void __exit genl_echo_exit(void)
{
	genl_unregister_family(&genl_echo_family);
	pr_info("family %s unregistered after %d echoes\n", GENL_ECHO_FAMILY, atomic_read(&echoed));
}

module_init(genl_echo_init);
module_exit(genl_echo_exit);

MODULE_LICENSE("GPL");
MODULE_AUTHOR("knetlink-harness");
MODULE_DESCRIPTION("Generic netlink family KNH_ECHO: echoes a string attribute back");
