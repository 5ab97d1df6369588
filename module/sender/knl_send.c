// SPDX-License-Identifier: GPL-2.0
/*
 * knl_send - send text messages to the knetlink module and wait for acks.
 *
 *   knl_send [-p PROTO] [-n COUNT] [-q] MESSAGE...
 *
 * Each MESSAGE goes out as one netlink message framed like the classic
 * example (nlmsg_type 0, payload without NUL, zero-padded to NLMSG_SPACE),
 * with NLM_F_REQUEST|NLM_F_ACK and its own sequence number (1, 2, ...).
 * The kernel's NLMSG_ERROR ack is awaited and checked against the sequence
 * number.  Output per message:   ack seq=<n> error=<errno>
 * With -n COUNT each MESSAGE is sent COUNT times; with -q only a summary
 *   sent=<n> acked=<n> failed=<n> elapsed_us=<n>
 * is printed.  Exit status: 0 all acks were 0, 1 some ack failed or timed
 * out, 2 usage or socket setup error.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <linux/netlink.h>

#define DEFAULT_PROTO	21
#define RECV_TIMEOUT_S	2
#define RECV_BUF_SIZE	(128 * 1024)	/* error acks echo the whole message */

static void usage(const char *prog)
{
	fprintf(stderr,
		"usage: %s [-p PROTO] [-n COUNT] [-q] MESSAGE...\n"
		"  -p PROTO  netlink protocol number (default %d)\n"
		"  -n COUNT  send every MESSAGE COUNT times (default 1)\n"
		"  -q        print only the summary line\n",
		prog, DEFAULT_PROTO);
}

static int parse_long(const char *s, long min, long max, long *out)
{
	char *end;
	long v;

	errno = 0;
	v = strtol(s, &end, 0);
	if (errno || end == s || *end || v < min || v > max)
		return -1;
	*out = v;
	return 0;
}

static int64_t now_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/*
 * Wait for the NLMSG_ERROR ack carrying @seq.  Returns the errno of the ack
 * as a non-negative number (0 = success), or the errno of a failed or timed
 * out receive.
 */
static int wait_ack(int fd, uint32_t seq, char *buf, size_t bufsize)
{
	for (;;) {
		ssize_t n = recv(fd, buf, bufsize, 0);
		struct nlmsghdr *nlh;
		int len;

		if (n < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN || errno == EWOULDBLOCK)
				return ETIMEDOUT;
			return errno;
		}
		len = (int)n;
		for (nlh = (struct nlmsghdr *)buf; NLMSG_OK(nlh, len);
		     nlh = NLMSG_NEXT(nlh, len)) {
			const struct nlmsgerr *e;

			if (nlh->nlmsg_type != NLMSG_ERROR || nlh->nlmsg_seq != seq)
				continue;	/* stale or unrelated */
			if (nlh->nlmsg_len < NLMSG_LENGTH(sizeof(e->error)))
				return EBADMSG;
			e = NLMSG_DATA(nlh);
			return e->error < 0 ? -e->error : e->error;
		}
	}
}

int main(int argc, char **argv)
{
	struct sockaddr_nl local = { .nl_family = AF_NETLINK };
	struct sockaddr_nl kernel = { .nl_family = AF_NETLINK };
	struct timeval tv = { .tv_sec = RECV_TIMEOUT_S };
	long proto = DEFAULT_PROTO, count = 1;
	unsigned long sent = 0, acked = 0, failed = 0;
	uint32_t seq = 0;
	int quiet = 0, opt, fd, i;
	char *rbuf, *sbuf = NULL;
	size_t sbuf_size = 0;
	int64_t start;

	while ((opt = getopt(argc, argv, "p:n:qh")) != -1) {
		switch (opt) {
		case 'p':
			if (parse_long(optarg, 0, 31, &proto)) {
				fprintf(stderr, "bad protocol '%s' (0..31)\n", optarg);
				return 2;
			}
			break;
		case 'n':
			if (parse_long(optarg, 1, 1000000000L, &count)) {
				fprintf(stderr, "bad count '%s'\n", optarg);
				return 2;
			}
			break;
		case 'q':
			quiet = 1;
			break;
		case 'h':
			usage(argv[0]);
			return 0;
		default:
			usage(argv[0]);
			return 2;
		}
	}
	if (optind >= argc) {
		usage(argv[0]);
		return 2;
	}

	fd = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, (int)proto);
	if (fd < 0) {
		fprintf(stderr, "socket(AF_NETLINK, SOCK_RAW, %ld): %s\n",
			proto, strerror(errno));
		return 2;
	}
	/* nl_pid 0: the kernel assigns the port id. */
	if (bind(fd, (struct sockaddr *)&local, sizeof(local)) < 0) {
		fprintf(stderr, "bind: %s\n", strerror(errno));
		close(fd);
		return 2;
	}
	if (setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)) < 0) {
		fprintf(stderr, "setsockopt(SO_RCVTIMEO): %s\n", strerror(errno));
		close(fd);
		return 2;
	}

	rbuf = malloc(RECV_BUF_SIZE);
	if (!rbuf) {
		fprintf(stderr, "out of memory\n");
		close(fd);
		return 2;
	}

	start = now_us();
	for (i = optind; i < argc; i++) {
		size_t plen = strlen(argv[i]);
		size_t total = NLMSG_SPACE(plen);
		struct nlmsghdr *nlh;
		long rep;

		if (total > UINT32_MAX) {
			fprintf(stderr, "message %d too long\n", i - optind + 1);
			failed++;
			continue;
		}
		if (total > sbuf_size) {
			char *nb = realloc(sbuf, total);

			if (!nb) {
				fprintf(stderr, "out of memory\n");
				failed++;
				continue;
			}
			sbuf = nb;
			sbuf_size = total;
		}
		memset(sbuf, 0, total);
		nlh = (struct nlmsghdr *)sbuf;
		nlh->nlmsg_len = (uint32_t)total;
		nlh->nlmsg_type = 0;
		nlh->nlmsg_flags = NLM_F_REQUEST | NLM_F_ACK;
		memcpy(NLMSG_DATA(nlh), argv[i], plen);

		for (rep = 0; rep < count; rep++) {
			int err;

			nlh->nlmsg_seq = ++seq;
			if (sendto(fd, sbuf, total, 0, (struct sockaddr *)&kernel,
				   sizeof(kernel)) < 0) {
				err = errno;
			} else {
				sent++;
				err = wait_ack(fd, seq, rbuf, RECV_BUF_SIZE);
			}
			if (err)
				failed++;
			else
				acked++;
			if (!quiet)
				printf("ack seq=%u error=%d\n", seq, err);
		}
	}

	if (quiet)
		printf("sent=%lu acked=%lu failed=%lu elapsed_us=%lld\n",
		       sent, acked, failed, (long long)(now_us() - start));

	free(sbuf);
	free(rbuf);
	close(fd);
	return failed ? 1 : 0;
}
