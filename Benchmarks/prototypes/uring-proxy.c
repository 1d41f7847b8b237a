/*
 * uring-proxy.c - minimal single-threaded TCP proxy on io_uring (measurement prototype).
 *
 * Build:  gcc -O2 -g -Wall -Wextra -o uring-proxy uring-proxy.c -luring
 *         (needs liburing-dev >= 2.3: apt-get install -y liburing-dev)
 *         Written to measure a design (docs/BENCHMARKS.md, 2026-12-07); not part of tcpproxy.
 *         Optional -DSYNC_SHUTDOWN: half-close with a plain shutdown() instead of IORING_OP_SHUTDOWN
 *         (the kernel always runs IORING_OP_SHUTDOWN on an io-wq worker thread, iou-wrk-PID).
 *
 * Usage:  uring-proxy forward --listen 127.0.0.1:P --target 127.0.0.1:Q [--threads N] [--log-level L]
 *         --threads is accepted and ignored (always one thread); unknown --opts are ignored.
 *         --log-level info|debug (or env URING_PROXY_VERBOSE=1) prints ring setup + stats.
 *
 * Design: one ring (SINGLE_ISSUER|DEFER_TASKRUN, fallbacks), multishot accept, per bridge two
 * 16 KiB buffers. Per direction strictly: recv -> send(MSG_WAITALL) -> recv ... so at most one
 * op per direction is in flight and memory per bridge is bounded to the two buffers.
 * EOF -> IORING_OP_SHUTDOWN(SHUT_WR) on the other fd; both EOF + both shutdowns done -> close.
 * Errors -> ASYNC_CANCEL (by fd, all) and close once the outstanding-op count is 0.
 * Main loop: io_uring_submit_and_wait(ring,1) then drain all CQEs with a peek loop.
 * SIGTERM/SIGINT are read via a signalfd through the ring -> exit 0.
 */
#define _GNU_SOURCE
#include <liburing.h>
#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <unistd.h>

#define BUFSZ   16384
#define QD      4096
#define CQ_SIZE 65536

/* user_data = bridge pointer | kind (3 low bits; malloc alignment is >= 16) */
enum {
	K_CONNECT = 0,
	K_RECV0 = 1, K_SEND0 = 2, /* dir 0: client -> server */
	K_RECV1 = 3, K_SEND1 = 4, /* dir 1: server -> client */
	K_SHUT0 = 5, K_SHUT1 = 6,
	K_CANCEL = 7,
};
/* global ops: pointer part is 0 */
#define UD_ACCEPT 1ULL
#define UD_SIGNAL 2ULL
#define UD_IGNORE 3ULL /* IORING_OP_CLOSE of already-freed bridges */

struct dir {
	int src, dst;
	int len, off;          /* bytes in buf / bytes already sent */
	unsigned char pending_send; /* dir0 only: data received before connect completed */
	unsigned char shut_pending; /* dir0 only: EOF received before connect completed */
	unsigned char eof;
	unsigned char shut_done;
	char *buf;
};

struct bridge {
	int cfd, sfd;
	int outstanding;        /* SQEs queued/in flight that carry this bridge pointer */
	unsigned char connected;
	unsigned char closing;
	struct dir d[2];
};

static struct io_uring ring;
static int lfd = -1, sigfd = -1;
static struct sockaddr_storage target_addr;
static socklen_t target_len;
static struct signalfd_siginfo siginfo;
static int verbose;
static long n_accepted, n_live, n_errors, n_enters, n_cqes;

static struct io_uring_sqe *get_sqe(void)
{
	struct io_uring_sqe *sqe = io_uring_get_sqe(&ring);
	while (!sqe) {
		/* SQ full: push what we have to the kernel (no wait) and continue */
		int r = io_uring_submit(&ring);
		if (r < 0 && r != -EAGAIN && r != -EBUSY && r != -EINTR) {
			fprintf(stderr, "io_uring_submit: %s\n", strerror(-r));
			exit(1);
		}
		sqe = io_uring_get_sqe(&ring);
	}
	return sqe;
}

static inline void set_ud(struct io_uring_sqe *sqe, struct bridge *b, int kind)
{
	io_uring_sqe_set_data64(sqe, (uint64_t)(uintptr_t)b | (uint64_t)kind);
	b->outstanding++;
}

static void q_recv(struct bridge *b, int i)
{
	struct dir *d = &b->d[i];
	struct io_uring_sqe *sqe = get_sqe();
	io_uring_prep_recv(sqe, d->src, d->buf, BUFSZ, 0);
	set_ud(sqe, b, i ? K_RECV1 : K_RECV0);
}

static void q_send(struct bridge *b, int i)
{
	struct dir *d = &b->d[i];
	struct io_uring_sqe *sqe = get_sqe();
	io_uring_prep_send(sqe, d->dst, d->buf + d->off, (size_t)(d->len - d->off),
			   MSG_WAITALL | MSG_NOSIGNAL);
	set_ud(sqe, b, i ? K_SEND1 : K_SEND0);
}

static void q_shut(struct bridge *b, int i)
{
#ifdef SYNC_SHUTDOWN
	/* the kernel always punts IORING_OP_SHUTDOWN to an io-wq worker (REQ_F_FORCE_ASYNC);
	 * this variant does one plain shutdown() syscall per direction instead */
	shutdown(b->d[i].dst, SHUT_WR);
	b->d[i].shut_done = 1;
	return;
#endif
	struct io_uring_sqe *sqe = get_sqe();
	io_uring_prep_shutdown(sqe, b->d[i].dst, SHUT_WR);
	set_ud(sqe, b, i ? K_SHUT1 : K_SHUT0);
}

static void q_close_fd(int fd)
{
	struct io_uring_sqe *sqe = get_sqe();
	io_uring_prep_close(sqe, fd);
	io_uring_sqe_set_data64(sqe, UD_IGNORE);
}

static void maybe_finish(struct bridge *b)
{
	if (b->outstanding)
		return;
	if (!b->closing && !(b->d[0].shut_done && b->d[1].shut_done))
		return;
	q_close_fd(b->cfd);
	q_close_fd(b->sfd);
	free(b);
	n_live--;
}

static void teardown(struct bridge *b)
{
	if (b->closing)
		return;
	b->closing = 1;
	n_errors++;
	if (b->outstanding) {
		/* make every pending op on either fd complete (with -ECANCELED) */
		struct io_uring_sqe *sqe = get_sqe();
		io_uring_prep_cancel_fd(sqe, b->cfd, IORING_ASYNC_CANCEL_ALL);
		set_ud(sqe, b, K_CANCEL);
		sqe = get_sqe();
		io_uring_prep_cancel_fd(sqe, b->sfd, IORING_ASYNC_CANCEL_ALL);
		set_ud(sqe, b, K_CANCEL);
	}
}

static inline int retryable(int res)
{
	return res == -EAGAIN || res == -EINTR;
}

static void q_accept(void)
{
	struct io_uring_sqe *sqe = get_sqe();
	io_uring_prep_multishot_accept(sqe, lfd, NULL, NULL, SOCK_CLOEXEC);
	io_uring_sqe_set_data64(sqe, UD_ACCEPT);
}

static void q_signal(void)
{
	struct io_uring_sqe *sqe = get_sqe();
	io_uring_prep_read(sqe, sigfd, &siginfo, sizeof(siginfo), 0);
	io_uring_sqe_set_data64(sqe, UD_SIGNAL);
}

static void on_accept(int res, unsigned flags)
{
	static int warned;
	if (!(flags & IORING_CQE_F_MORE))
		q_accept(); /* multishot ended: re-arm */
	if (res < 0) {
		if (!warned++)
			fprintf(stderr, "accept: %s\n", strerror(-res));
		return;
	}
	int cfd = res, one = 1;
	setsockopt(cfd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	int sfd = socket(target_addr.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (sfd < 0) {
		close(cfd);
		return;
	}
	setsockopt(sfd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));

	struct bridge *b = malloc(sizeof(*b) + 2 * BUFSZ);
	if (!b) {
		close(cfd);
		close(sfd);
		return;
	}
	memset(b, 0, sizeof(*b));
	b->cfd = cfd;
	b->sfd = sfd;
	b->d[0].src = cfd; b->d[0].dst = sfd; b->d[0].buf = (char *)(b + 1);
	b->d[1].src = sfd; b->d[1].dst = cfd; b->d[1].buf = (char *)(b + 1) + BUFSZ;
	n_accepted++;
	n_live++;

	struct io_uring_sqe *sqe = get_sqe();
	io_uring_prep_connect(sqe, sfd, (struct sockaddr *)&target_addr, target_len);
	set_ud(sqe, b, K_CONNECT);
	q_recv(b, 0); /* client may speak first */
}

static void on_bridge(struct bridge *b, int kind, int res)
{
	b->outstanding--;
	if (b->closing) {
		maybe_finish(b);
		return;
	}
	switch (kind) {
	case K_CONNECT:
		if (res < 0) {
			teardown(b);
			break;
		}
		b->connected = 1;
		q_recv(b, 1);
		if (b->d[0].pending_send) {
			b->d[0].pending_send = 0;
			q_send(b, 0);
		} else if (b->d[0].shut_pending) {
			b->d[0].shut_pending = 0;
			q_shut(b, 0);
		}
		break;
	case K_RECV0:
	case K_RECV1: {
		int i = kind == K_RECV1;
		struct dir *d = &b->d[i];
		if (res > 0) {
			d->len = res;
			d->off = 0;
			if (i == 0 && !b->connected)
				d->pending_send = 1;
			else
				q_send(b, i);
		} else if (res == 0) {
			d->eof = 1;
			if (i == 0 && !b->connected)
				d->shut_pending = 1;
			else
				q_shut(b, i);
		} else if (retryable(res)) {
			q_recv(b, i);
		} else {
			teardown(b);
		}
		break;
	}
	case K_SEND0:
	case K_SEND1: {
		int i = kind == K_SEND1;
		struct dir *d = &b->d[i];
		if (res > 0) {
			d->off += res;
			if (d->off < d->len)
				q_send(b, i);   /* short send despite MSG_WAITALL: send the rest */
			else
				q_recv(b, i);   /* buffer drained: only now read more */
		} else if (retryable(res)) {
			q_send(b, i);
		} else {
			teardown(b);
		}
		break;
	}
	case K_SHUT0:
	case K_SHUT1:
		b->d[kind - K_SHUT0].shut_done = 1;
		break;
	case K_CANCEL:
	default:
		break;
	}
	maybe_finish(b);
}

static int parse_addr(const char *s, struct sockaddr_storage *ss, socklen_t *len)
{
	char host[256];
	const char *colon = strrchr(s, ':');
	if (!colon || (size_t)(colon - s) >= sizeof(host))
		return -1;
	memcpy(host, s, (size_t)(colon - s));
	host[colon - s] = 0;
	char *h = host;
	if (h[0] == '[') {
		h++;
		char *e = strchr(h, ']');
		if (e)
			*e = 0;
	}
	struct addrinfo hints = {0}, *res;
	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_STREAM;
	hints.ai_flags = AI_NUMERICSERV;
	if (getaddrinfo(*h ? h : "0.0.0.0", colon + 1, &hints, &res) != 0)
		return -1;
	memcpy(ss, res->ai_addr, res->ai_addrlen);
	*len = res->ai_addrlen;
	freeaddrinfo(res);
	return 0;
}

static void usage(void)
{
	fprintf(stderr, "usage: uring-proxy forward --listen HOST:PORT --target HOST:PORT "
			"[--threads N] [--log-level L]\n");
	exit(2);
}

int main(int argc, char **argv)
{
	const char *listen_s = NULL, *target_s = NULL, *loglevel = "warning";
	int i = 1;
	if (i < argc && strcmp(argv[i], "forward") == 0)
		i++;
	for (; i < argc; i++) {
		const char *a = argv[i], *val = NULL;
		char name[64];
		if (strncmp(a, "--", 2) != 0)
			continue; /* stray positional: ignore */
		const char *eq = strchr(a, '=');
		if (eq) {
			snprintf(name, sizeof(name), "%.*s", (int)(eq - a), a);
			val = eq + 1;
		} else {
			snprintf(name, sizeof(name), "%s", a);
			if (i + 1 < argc && strncmp(argv[i + 1], "--", 2) != 0)
				val = argv[++i];
		}
		if (!strcmp(name, "--listen"))
			listen_s = val;
		else if (!strcmp(name, "--target"))
			target_s = val;
		else if (!strcmp(name, "--log-level"))
			loglevel = val ? val : loglevel;
		/* --threads and anything else: ignored */
	}
	if (!listen_s || !target_s)
		usage();
	verbose = !strcmp(loglevel, "info") || !strcmp(loglevel, "debug") ||
		  (getenv("URING_PROXY_VERBOSE") && *getenv("URING_PROXY_VERBOSE") == '1');

	struct sockaddr_storage laddr;
	socklen_t llen;
	if (parse_addr(listen_s, &laddr, &llen) || parse_addr(target_s, &target_addr, &target_len)) {
		fprintf(stderr, "bad address\n");
		return 2;
	}

	/* lots of connections possible: raise the fd limit to the hard limit */
	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		setrlimit(RLIMIT_NOFILE, &rl);
	}
	signal(SIGPIPE, SIG_IGN);

	/* signals via signalfd read through the ring */
	sigset_t ss;
	sigemptyset(&ss);
	sigaddset(&ss, SIGTERM);
	sigaddset(&ss, SIGINT);
	sigprocmask(SIG_BLOCK, &ss, NULL);
	sigfd = signalfd(-1, &ss, SFD_CLOEXEC);
	if (sigfd < 0) {
		perror("signalfd");
		return 1;
	}

	/* ring: try SINGLE_ISSUER|DEFER_TASKRUN, then COOP_TASKRUN, then plain */
	static const struct { unsigned flags; const char *name; } tries[] = {
		{ IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN | IORING_SETUP_CQSIZE,
		  "SINGLE_ISSUER|DEFER_TASKRUN|CQSIZE" },
		{ IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_COOP_TASKRUN | IORING_SETUP_CQSIZE,
		  "SINGLE_ISSUER|COOP_TASKRUN|CQSIZE" },
		{ IORING_SETUP_COOP_TASKRUN | IORING_SETUP_CQSIZE, "COOP_TASKRUN|CQSIZE" },
		{ IORING_SETUP_CQSIZE, "CQSIZE" },
		{ 0, "none" },
	};
	int r = -EINVAL;
	struct io_uring_params p;
	const char *used = NULL;
	for (unsigned t = 0; t < sizeof(tries) / sizeof(tries[0]); t++) {
		memset(&p, 0, sizeof(p));
		p.flags = tries[t].flags;
		p.cq_entries = CQ_SIZE;
		r = io_uring_queue_init_params(QD, &ring, &p);
		if (r == 0) {
			used = tries[t].name;
			break;
		}
		if (r != -EINVAL)
			break;
	}
	if (r < 0) {
		fprintf(stderr, "io_uring_queue_init_params: %s\n", strerror(-r));
		return 1;
	}
	if (verbose)
		fprintf(stderr, "ring: sq_entries=%u cq_entries=%u flags=0x%x (%s) features=0x%x\n",
			p.sq_entries, p.cq_entries, p.flags, used, p.features);

	lfd = socket(laddr.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
	int one = 1;
	if (lfd < 0 || setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) ||
	    bind(lfd, (struct sockaddr *)&laddr, llen) || listen(lfd, 4096)) {
		perror("listen socket");
		return 1;
	}

	q_signal();
	q_accept();
	fprintf(stderr, "listening on %s\n", listen_s);

	int running = 1;
	while (running) {
		r = io_uring_submit_and_wait(&ring, 1);
		if (r < 0 && r != -EINTR && r != -EAGAIN && r != -EBUSY && r != -ETIME) {
			fprintf(stderr, "io_uring_submit_and_wait: %s\n", strerror(-r));
			return 1;
		}
		n_enters++;
		struct io_uring_cqe *cqe;
		while (io_uring_peek_cqe(&ring, &cqe) == 0) {
			n_cqes++;
			uint64_t ud = cqe->user_data;
			int res = cqe->res;
			unsigned flags = cqe->flags;
			io_uring_cqe_seen(&ring, cqe);
			if (ud < 8) {
				if (ud == UD_ACCEPT) {
					on_accept(res, flags);
				} else if (ud == UD_SIGNAL) {
					if (res == (int)sizeof(siginfo))
						running = 0;
					else
						q_signal();
				}
				/* UD_IGNORE: close results */
			} else {
				on_bridge((struct bridge *)(uintptr_t)(ud & ~7ULL), (int)(ud & 7), res);
			}
		}
	}
	if (verbose)
		fprintf(stderr, "exit: accepted=%ld live=%ld errors=%ld enters=%ld cqes=%ld (%.2f cqes/enter)\n",
			n_accepted, n_live, n_errors, n_enters, n_cqes,
			n_enters ? (double)n_cqes / (double)n_enters : 0.0);
	return 0;
}
