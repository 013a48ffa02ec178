/*
 * Sessions: routing each received frame to its session, opening sessions for requests,
 * and closing them with an error when the host sends something that does not fit.
 *
 * Rule: a malformed frame costs the host that session, never the connection or the
 * agent. Only a frame over the size limit ends a connection (see loop.c).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "agent.h"

struct session *session_new(struct conn *c, uint32_t id, int kind)
{
	struct session *s = calloc(1, sizeof(*s));
	if (!s)
		return NULL;
	s->conn = c;
	s->id = id;
	s->kind = kind;
	s->in_fd = s->out_fd = s->err_fd = s->file_fd = -1;
	s->out_credit = WINDOW;
	return s;
}

void session_link(struct session *s)
{
	s->next = s->conn->sessions;
	s->conn->sessions = s;
	s->conn->nsessions++;
}

struct session *session_find(struct conn *c, uint32_t id)
{
	for (struct session *s = c->sessions; s; s = s->next)
		if (s->id == id && !s->closing)
			return s;
	return NULL;
}

void send_error(struct conn *c, uint32_t sid, int err, const char *kind, const char *msg)
{
	size_t f = frame_begin(&c->out, sid, T_ERROR);
	put_u64(&c->out, G_ERRNO, (uint64_t)err);
	put_str(&c->out, G_KIND, kind);
	put_str(&c->out, G_MESSAGE, msg);
	frame_end(&c->out, f);
}

static void close_fd(int *fd)
{
	if (*fd >= 0)
		close(*fd);
	*fd = -1;
}

void session_close(struct session *s)
{
	if (s->closing)
		return;
	s->closing = 1;
	/* A process still running loses its only reader: kill its whole group. */
	if (s->kind == S_EXEC && s->pid > 0 && !s->exited)
		kill(-s->pid, SIGKILL);
	close_fd(&s->in_fd);
	close_fd(&s->out_fd);
	close_fd(&s->err_fd);
	close_fd(&s->file_fd);
	if (s->dir)
		closedir(s->dir);
	s->dir = NULL;
	buf_free(&s->inq);
}

void session_error(struct session *s, int err, const char *kind, const char *fmt, ...)
{
	char msg[512];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	send_error(s->conn, s->id, err, kind, msg);
	session_close(s);
}

/* An exec session ends once the process is reaped and both output streams hit EOF, so
 * EXITED is always the last frame after all of its output. */
void session_try_finish(struct session *s)
{
	if (s->closing || s->kind != S_EXEC || !s->exited || s->out_fd >= 0 || s->err_fd >= 0)
		return;
	struct buf *b = &s->conn->out;
	size_t f = frame_begin(b, s->id, T_EXITED);
	if (WIFSIGNALED(s->status)) {
		put_u64(b, G_SIGNAL, (uint64_t)WTERMSIG(s->status));
		put_u64(b, G_CORE, WCOREDUMP(s->status) ? 1 : 0);
	} else {
		put_u64(b, G_CODE, (uint64_t)WEXITSTATUS(s->status));
	}
	frame_end(b, f);
	session_close(s);
}

static void handle_credit(struct session *s, const uint8_t *p, uint32_t n)
{
	struct tlv r = {p, n};
	uint16_t tag;
	const uint8_t *v;
	uint32_t len;
	uint64_t bytes = 0;
	int rc;
	while ((rc = tlv_next(&r, &tag, &v, &len)) > 0)
		if (tag == G_BYTES && tlv_u64(v, len, &bytes) < 0) {
			rc = -1; /* not 8 bytes: malformed (the loop must not overwrite rc) */
			break;
		}
	/* The host acknowledges only what we sent: more than one window outstanding plus
	 * credit is a lie (and unbounded credit would let us flood it). */
	if (rc < 0 || bytes == 0 || bytes > WINDOW || s->out_credit + bytes > WINDOW) {
		session_error(s, EPROTO, "bad_frame", "bad CREDIT frame");
		return;
	}
	s->out_credit += (uint32_t)bytes;
}

/* ---- the inbound window ---------------------------------------------------------------- */

/* The CREDIT in flight has been written out: the host may have read it, so the bytes it
 * covers no longer count against the window. */
static void settle(struct session *s)
{
	if (s->ack_pending && s->conn->out_written >= s->ack_end) {
		s->in_unacked -= s->ack_pending;
		s->ack_pending = 0;
	}
}

int session_take_input(struct session *s, uint32_t n)
{
	settle(s);
	if ((uint64_t)s->in_unacked + n > WINDOW)
		return 0;
	s->in_unacked += n;
	return 1;
}

void session_ack(struct session *s)
{
	settle(s);
	if (!s->credit_back || s->ack_pending)
		return; /* nothing to say, or wait until the last CREDIT has left */
	size_t f = frame_begin(&s->conn->out, s->id, T_CREDIT);
	put_u64(&s->conn->out, G_BYTES, s->credit_back);
	frame_end(&s->conn->out, f);
	s->ack_pending = s->credit_back;
	s->ack_end = s->conn->out_written + buf_pending(&s->conn->out);
	s->credit_back = 0;
}

void conn_flushed(struct conn *c)
{
	for (struct session *s = c->sessions; s; s = s->next)
		if (!s->closing && s->ack_pending)
			session_ack(s); /* settles, then sends what waited behind it */
}

/* CONFIG: sandbox-wide environment, working directory, rlimits and hostname. */
static void handle_config(struct conn *c, uint32_t sid, const uint8_t *p, uint32_t n)
{
	struct tlv r = {p, n};
	uint16_t tag;
	const uint8_t *v;
	uint32_t len;
	int rc;
	const char *bad = NULL;
	int err = EINVAL;
	while ((rc = tlv_next(&r, &tag, &v, &len)) > 0 && !bad) {
		char *s = NULL;
		if (tag == G_ENV || tag == G_WORKDIR || tag == G_HOSTNAME) {
			s = tlv_strdup(v, len);
			if (!s) {
				bad = "string with a NUL byte";
				break;
			}
		}
		if (tag == G_ENV) {
			if (cfg.nenv == MAX_ARGS || !strchr(s, '=')) {
				bad = "bad or too many ENV entries";
				free(s);
				break;
			}
			cfg.env[cfg.nenv++] = s;
		} else if (tag == G_WORKDIR) {
			free(cfg.workdir);
			cfg.workdir = s;
		} else if (tag == G_HOSTNAME) {
			if (sethostname(s, strlen(s)) < 0)
				bad = "sethostname failed";
			free(s);
		} else if (tag == G_RLIMIT) {
			if (len != 20 || cfg.nrlimits == MAX_RLIMITS) {
				bad = "bad RLIMIT field";
				break;
			}
			struct rlim_req *rl = &cfg.rlimits[cfg.nrlimits++];
			rl->resource = (int)get_le32(v);
			tlv_u64(v + 4, 8, &rl->soft);
			tlv_u64(v + 12, 8, &rl->hard);
		} else if (tag == G_READONLY_ROOT) {
			uint64_t on;
			if (tlv_u64(v, len, &on) < 0 || on > 1) {
				bad = "bad READONLY_ROOT field (0 or 1)";
				break;
			}
			err = on ? pid1_root_readonly() : 0; /* one-way: 0 asks for nothing */
			if (err) {
				bad = err == EPERM && !cfg.pid1 ? "a read-only root needs the agent as PID 1"
								: "remounting the root read-only failed";
				break;
			}
		}
	}
	if (rc < 0)
		bad = "truncated field";
	if (bad) {
		send_error(c, sid, err ? err : EINVAL, "bad_request", bad);
		return;
	}
	size_t f = frame_begin(&c->out, sid, T_DONE);
	frame_end(&c->out, f);
}

static void handle_request(struct conn *c, uint32_t sid, uint16_t type, const uint8_t *p,
			   uint32_t n)
{
	if (sid == 0) {
		send_error(c, 0, EPROTO, "bad_session", "session 0 cannot carry requests");
		return;
	}
	if (c->nsessions >= MAX_SESSIONS) {
		send_error(c, sid, EMFILE, "too_many_sessions", "too many open sessions");
		return;
	}
	switch (type) {
	case T_EXEC:
		exec_start(c, sid, p, n);
		return;
	case T_FS_READ:
	case T_FS_WRITE:
	case T_FS_STAT:
	case T_FS_LIST:
	case T_FS_MKDIR:
	case T_FS_REMOVE:
		fs_request(c, sid, type, p, n);
		return;
	case T_CONFIG:
		handle_config(c, sid, p, n);
		return;
	case T_PING: {
		size_t f = frame_begin(&c->out, sid, T_DONE);
		put_u64(&c->out, G_NOW_NS, boottime_ns());
		frame_end(&c->out, f);
		return;
	}
	case T_SHUTDOWN: {
		size_t f = frame_begin(&c->out, sid, T_DONE);
		frame_end(&c->out, f);
		agent_shutdown();
		return;
	}
	}
}

static int is_request(uint16_t type)
{
	return type == T_EXEC || (type >= T_FS_READ && type <= T_FS_REMOVE) ||
	       type == T_CONFIG || type == T_SHUTDOWN || type == T_PING;
}

void handle_frame(struct conn *c, uint32_t sid, uint16_t type, const uint8_t *p, uint32_t n)
{
	struct session *s = session_find(c, sid);
	if (is_request(type)) {
		if (s) {
			session_error(s, EEXIST, "bad_session", "session %u is already open", sid);
			return;
		}
		handle_request(c, sid, type, p, n);
		return;
	}
	if (!s) {
		/* Late frames for a session that just ended are normal (a CREDIT racing an
		 * EXITED, a SIGNAL after exit): drop those quietly, report anything else. */
		if (type != T_CREDIT && type != T_SIGNAL && type != T_RESIZE && type != T_STDIN)
			send_error(c, sid, ENOENT, "bad_session", "no such session");
		return;
	}
	if (type == T_CREDIT) {
		handle_credit(s, p, n);
		return;
	}
	if (s->kind == S_EXEC && type == T_STDIN)
		exec_stdin(s, p, n);
	else if (s->kind == S_EXEC && type == T_SIGNAL)
		exec_signal(s, p, n);
	else if (s->kind == S_EXEC && type == T_RESIZE)
		exec_resize(s, p, n);
	else if (s->kind == S_WRITE && type == T_DATA)
		fs_write_data(s, p, n);
	else
		session_error(s, EPROTO, "bad_frame", "message type 0x%x does not fit this session",
			      type);
}

void agent_shutdown(void)
{
	for (struct conn *c = conn_list(); c; c = c->next) {
		for (struct session *s = c->sessions; s; s = s->next)
			session_close(s);
		/* Best effort: the DONE frame should reach the host before we go. */
		while (buf_pending(&c->out)) {
			ssize_t w = write(c->fd, c->out.data + c->out.off, buf_pending(&c->out));
			if (w <= 0)
				break;
			buf_consumed(&c->out, (size_t)w);
			c->out_written += (uint64_t)w;
		}
	}
	if (cfg.pid1)
		pid1_poweroff();
	sync();
	exit(0);
}
