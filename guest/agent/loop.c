/*
 * The event loop: accept connections, read frames, write queued output, move bytes
 * between children's pipes and the connection, reap children.
 *
 * The pollfd array is rebuilt every turn from the live objects. With at most
 * MAX_CONNS * MAX_SESSIONS sessions that is cheap next to a fork, and there is no
 * registration state to get out of sync when sessions come and go mid-turn.
 * Backpressure: a session's output is polled only while the host has granted it credit
 * and the connection's backlog is under OUT_HIGH_WATER; a connection is read only while
 * its backlog is under OUT_HARD_LIMIT (a host that never reads cannot grow us forever).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "agent.h"

static struct conn *conns;
static int nconns;

struct conn *conn_list(void) { return conns; }

uint64_t boottime_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_BOOTTIME, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static uint64_t realtime_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* ---- connections ---------------------------------------------------------------------- */

static void send_ready(struct conn *c)
{
	char host[256] = "";
	gethostname(host, sizeof(host) - 1);
	size_t f = frame_begin(&c->out, 0, T_READY);
	put_u64(&c->out, G_VERSION, PROTO_VERSION);
	put_u64(&c->out, G_MAX_PAYLOAD, MAX_PAYLOAD);
	put_u64(&c->out, G_WINDOW, WINDOW);
	put_u64(&c->out, G_AGENT_START_NS, cfg.agent_start_ns);
	put_u64(&c->out, G_READY_NS, cfg.ready_ns);
	put_u64(&c->out, G_NOW_NS, boottime_ns());
	put_u64(&c->out, G_REALTIME_NS, realtime_ns());
	put_u64(&c->out, G_PID1, (uint64_t)cfg.pid1);
	put_str(&c->out, G_HOSTNAME, host);
	frame_end(&c->out, f);
}

static void conn_add(int fd)
{
	struct conn *c = calloc(1, sizeof(*c));
	uint8_t *in = malloc(HDR_LEN + MAX_PAYLOAD);
	if (!c || !in) {
		free(c);
		free(in);
		close(fd);
		return;
	}
	c->fd = fd;
	c->in = in;
	c->next = conns;
	conns = c;
	nconns++;
	send_ready(c);
}

static void conn_free(struct conn *c)
{
	/* The host is gone: nobody can collect these processes' output any more. */
	while (c->sessions) {
		struct session *s = c->sessions;
		session_close(s);
		c->sessions = s->next;
		free(s);
	}
	close(c->fd);
	free(c->in);
	buf_free(&c->out);
	free(c);
	nconns--;
}

static void conn_write(struct conn *c);

/* Parse whole frames out of c->in. A frame over the limit is unrecoverable (we cannot
 * find the next frame boundary without trusting the length), so it ends the connection. */
static void conn_parse(struct conn *c)
{
	size_t pos = 0;
	while (!c->dead && c->in_len - pos >= HDR_LEN) {
		const uint8_t *h = c->in + pos;
		uint32_t len = get_le32(h);
		if (len > MAX_PAYLOAD) {
			send_error(c, get_le32(h + 4), EMSGSIZE, "frame_too_large",
				   "frame payload over the maximum; closing the connection");
			log_msg("agent: frame of %u bytes over the limit, closing connection", len);
			conn_write(c); /* best effort: let the host see why */
			c->dead = 1;
			return;
		}
		if (c->in_len - pos < HDR_LEN + (size_t)len)
			break;
		handle_frame(c, get_le32(h + 4), get_le16(h + 8), h + HDR_LEN, len);
		pos += HDR_LEN + len;
	}
	memmove(c->in, c->in + pos, c->in_len - pos);
	c->in_len -= pos;
}

static void conn_read(struct conn *c)
{
	ssize_t n = read(c->fd, c->in + c->in_len, HDR_LEN + MAX_PAYLOAD - c->in_len);
	if (n < 0 && (errno == EAGAIN || errno == EINTR))
		return;
	if (n <= 0) {
		c->dead = 1;
		return;
	}
	c->in_len += (size_t)n;
	conn_parse(c);
}

static void conn_write(struct conn *c)
{
	for (;;) {
		uint64_t before = c->out_written;
		int blocked = 0;
		while (buf_pending(&c->out) && !blocked) {
			/* write(), not send(): the connection may be a tty (serial transport).
			 * The fd is non-blocking and SIGPIPE is ignored. */
			ssize_t n = write(c->fd, c->out.data + c->out.off, buf_pending(&c->out));
			if (n < 0 && errno == EINTR)
				continue;
			if (n < 0 && errno == EAGAIN) {
				blocked = 1;
				break;
			}
			if (n <= 0) {
				c->dead = 1;
				return;
			}
			buf_consumed(&c->out, (size_t)n);
			c->out_written += (uint64_t)n;
		}
		if (c->out_written == before)
			return;
		/* CREDITs written now count as given; ones that waited behind them are queued
		 * (session_ack), and written at once if the fd still takes data. */
		conn_flushed(c);
		if (blocked || !buf_pending(&c->out))
			return;
	}
}

/* ---- children ------------------------------------------------------------------------- */

static void reap_children(int sfd)
{
	struct signalfd_siginfo si;
	while (read(sfd, &si, sizeof(si)) == sizeof(si))
		;
	int status;
	pid_t pid;
	/* Reap everything: our own children and, as PID 1 or subreaper, orphans. */
	while ((pid = waitpid(-1, &status, WNOHANG)) > 0)
		exec_reaped(pid, status);
}

/* ---- the loop ------------------------------------------------------------------------- */

enum owner_kind { O_SIGNAL, O_LISTEN, O_CONN, O_STDIN, O_STDOUT, O_STDERR };

struct owner {
	int kind;
	struct conn *conn;
	struct session *s;
};

static struct pollfd *pfds;
static struct owner *owners;
static size_t pcap, npfd;

static void watch(int fd, short events, int kind, struct conn *c, struct session *s)
{
	if (npfd == pcap) {
		size_t cap = pcap ? pcap * 2 : 64;
		struct pollfd *p = realloc(pfds, cap * sizeof(*p));
		if (p)
			pfds = p;
		struct owner *o = realloc(owners, cap * sizeof(*o));
		if (o)
			owners = o;
		if (!p || !o)
			return; /* out of memory: this fd waits a turn */
		pcap = cap;
	}
	pfds[npfd] = (struct pollfd){.fd = fd, .events = events};
	owners[npfd] = (struct owner){.kind = kind, .conn = c, .s = s};
	npfd++;
}

/* A listing frame is built whole (up to CHUNK bytes), so it needs a CHUNK of credit;
 * reads and pipes take whatever credit there is. */
static int has_credit(const struct session *s)
{
	return s->kind == S_LIST ? s->out_credit >= CHUNK : s->out_credit > 0;
}

/* Register a session's fds; returns 1 if it has file data ready to produce now. */
static int watch_session(struct conn *c, struct session *s)
{
	int room = buf_pending(&c->out) < OUT_HIGH_WATER;
	if (s->kind == S_READ || s->kind == S_LIST)
		return room && has_credit(s);
	if (s->kind != S_EXEC)
		return 0;
	if (s->in_fd >= 0 && (buf_pending(&s->inq) || s->stdin_eof))
		watch(s->in_fd, POLLOUT, O_STDIN, c, s);
	if (room && s->out_credit > 0) {
		if (s->out_fd >= 0)
			watch(s->out_fd, POLLIN, O_STDOUT, c, s);
		if (s->err_fd >= 0)
			watch(s->err_fd, POLLIN, O_STDERR, c, s);
	}
	return 0;
}

static int build_pollset(int sfd, int listen_fd)
{
	int busy = 0;
	npfd = 0;
	watch(sfd, POLLIN, O_SIGNAL, NULL, NULL);
	if (listen_fd >= 0 && nconns < MAX_CONNS)
		watch(listen_fd, POLLIN, O_LISTEN, NULL, NULL);
	for (struct conn *c = conns; c; c = c->next) {
		short ev = 0;
		if (buf_pending(&c->out) < OUT_HARD_LIMIT)
			ev |= POLLIN;
		if (buf_pending(&c->out))
			ev |= POLLOUT;
		watch(c->fd, ev, O_CONN, c, NULL);
		for (struct session *s = c->sessions; s; s = s->next)
			busy |= watch_session(c, s);
	}
	return busy;
}

static void produce_files(void)
{
	for (struct conn *c = conns; c; c = c->next)
		for (struct session *s = c->sessions; s; s = s->next)
			if ((s->kind == S_READ || s->kind == S_LIST) && !s->closing &&
			    buf_pending(&c->out) < OUT_HIGH_WATER && has_credit(s))
				fs_produce(s);
}

static void dispatch(size_t i, int listen_fd)
{
	struct owner *o = &owners[i];
	short re = pfds[i].revents;
	if (!re)
		return;
	if (o->s && o->s->closing)
		return;
	switch (o->kind) {
	case O_LISTEN: {
		int fd = accept4(listen_fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
		if (fd >= 0)
			conn_add(fd);
		break;
	}
	case O_CONN:
		if (o->conn->dead)
			break;
		if (re & (POLLIN | POLLHUP | POLLERR))
			conn_read(o->conn);
		if (!o->conn->dead && (re & POLLOUT))
			conn_write(o->conn);
		break;
	case O_STDIN:
		exec_pump_stdin(o->s);
		break;
	case O_STDOUT:
	case O_STDERR:
		exec_read_output(o->s, o->kind == O_STDOUT ? 1 : 2);
		break;
	}
}

/* Free finished sessions and dead connections; flush what was queued this turn. */
static int sweep(int single_fd)
{
	struct conn **cp = &conns;
	int single_gone = 0;
	while (*cp) {
		struct conn *c = *cp;
		struct session **sp = &c->sessions;
		while (*sp) {
			struct session *s = *sp;
			if (s->closing) {
				*sp = s->next;
				c->nsessions--;
				free(s);
			} else {
				sp = &s->next;
			}
		}
		if (!c->dead && buf_pending(&c->out))
			conn_write(c);
		if (c->dead || c->out.failed) {
			*cp = c->next;
			if (c->fd == single_fd)
				single_gone = 1;
			conn_free(c);
		} else {
			cp = &c->next;
		}
	}
	return single_gone;
}

void loop_run(int listen_fd, int single_fd, int dialed_fd)
{
	sigset_t mask;
	sigemptyset(&mask);
	sigaddset(&mask, SIGCHLD);
	sigprocmask(SIG_BLOCK, &mask, NULL);
	int sfd = signalfd(-1, &mask, SFD_NONBLOCK | SFD_CLOEXEC);
	if (sfd < 0) {
		log_msg("agent: signalfd: %s", strerror(errno));
		exit(1);
	}
	if (single_fd >= 0)
		conn_add(single_fd);
	if (dialed_fd >= 0)
		conn_add(dialed_fd); /* READY goes out on it first; its end ends nothing */
	for (;;) {
		int busy = build_pollset(sfd, listen_fd);
		int n = poll(pfds, npfd, busy ? 0 : -1);
		if (n < 0 && errno != EINTR) {
			log_msg("agent: poll: %s", strerror(errno));
			exit(1);
		}
		size_t count = npfd;
		for (size_t i = 0; n > 0 && i < count; i++) {
			if (owners[i].kind == O_SIGNAL) {
				if (pfds[i].revents)
					reap_children(sfd);
				continue;
			}
			dispatch(i, listen_fd);
		}
		produce_files();
		if (sweep(single_fd))
			return; /* the one inherited connection ended */
	}
}
