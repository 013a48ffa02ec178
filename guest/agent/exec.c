/*
 * exec sessions: start a process (pipes or a PTY), feed its stdin, stream its output,
 * deliver signals and window sizes, report how it ended.
 *
 * The child is a session leader (setsid), so its pid is also its process group and a
 * SIGNAL with the group flag (the host's timeout uses SIGKILL this way) reaches whatever
 * it started. Exec failure travels back through a CLOEXEC pipe: the parent reads
 * {stage, errno} from it, or EOF when execve succeeded.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <pty.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include "agent.h"

#define DEFAULT_PATH "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

struct exec_req {
	char *argv[MAX_ARGS + 1];
	int argc;
	char *env[2 * MAX_ARGS + 8];
	int nenv;
	char *cwd, *user;
	int tty;
	unsigned rows, cols;
	struct rlim_req rl[MAX_RLIMITS];
	int nrl;
	struct privs pv; /* groups, umask, no_new_privs, capabilities (privs.c) */
	struct exec_root root; /* ROOT, MOUNT*, ROOT_READONLY, JOIN (container_root.c) */
};

/* With its own root (or a joined one) the user is looked up and the environment made in
 * the child, once it sees that root's /etc/passwd. */
static int own_root(const struct exec_req *r)
{
	return r->root.root || r->root.join;
}

static void req_free(struct exec_req *r)
{
	for (int i = 0; i < r->argc; i++)
		free(r->argv[i]);
	for (int i = 0; i < r->nenv; i++)
		free(r->env[i]);
	free(r->cwd);
	free(r->user);
	root_free(&r->root);
}

/* ---- parsing the request -------------------------------------------------------------- */

static const char *parse_field(struct exec_req *r, uint16_t tag, const uint8_t *v, uint32_t len)
{
	uint64_t u;
	const char *bad = NULL;
	if (privs_field(&r->pv, tag, v, len, &bad) || root_field(&r->root, tag, v, len, &bad))
		return bad;
	switch (tag) {
	case G_ARGV:
	case G_ENV: {
		char *s = tlv_strdup(v, len);
		if (!s)
			return "argv/env string holds a NUL byte";
		if (tag == G_ARGV && r->argc < MAX_ARGS) {
			r->argv[r->argc++] = s;
			return NULL;
		}
		if (tag == G_ENV && r->nenv < MAX_ARGS && strchr(s, '=') && s[0] != '=') {
			r->env[r->nenv++] = s;
			return NULL;
		}
		free(s);
		return tag == G_ARGV ? "too many ARGV entries" : "bad or too many ENV entries";
	}
	case G_CWD:
	case G_USER: {
		char **dst = tag == G_CWD ? &r->cwd : &r->user;
		free(*dst);
		*dst = tlv_strdup(v, len);
		return *dst ? NULL : "cwd/user string holds a NUL byte";
	}
	case G_TTY:
	case G_ROWS:
	case G_COLS:
		if (tlv_u64(v, len, &u) < 0 || (tag != G_TTY && (u == 0 || u > 0xffff)))
			return "bad TTY/ROWS/COLS field";
		if (tag == G_TTY)
			r->tty = u != 0;
		else if (tag == G_ROWS)
			r->rows = (unsigned)u;
		else
			r->cols = (unsigned)u;
		return NULL;
	case G_RLIMIT:
		if (len != 20 || r->nrl == MAX_RLIMITS)
			return "bad RLIMIT field";
		r->rl[r->nrl].resource = (int)get_le32(v);
		tlv_u64(v + 4, 8, &r->rl[r->nrl].soft);
		tlv_u64(v + 12, 8, &r->rl[r->nrl].hard);
		r->nrl++;
		return NULL;
	}
	return NULL; /* unknown tags are ignored: newer hosts may send more */
}

static const char *parse_exec(struct exec_req *r, const uint8_t *p, uint32_t n)
{
	struct tlv t = {p, n};
	uint16_t tag;
	const uint8_t *v;
	uint32_t len;
	int rc;
	while ((rc = tlv_next(&t, &tag, &v, &len)) > 0) {
		const char *bad = parse_field(r, tag, v, len);
		if (bad)
			return bad;
	}
	if (rc < 0)
		return "truncated field";
	if (r->argc == 0 || r->argv[0][0] == 0)
		return "no ARGV (or an empty argv[0])";
	return root_check(&r->root);
}

/* ---- environment ------------------------------------------------------------------------ */

/* Add "K=V" to r->env, replacing an earlier entry for K (later sources win). */
static void env_set(struct exec_req *r, const char *kv, int only_if_missing)
{
	size_t klen = strcspn(kv, "=");
	for (int i = 0; i < r->nenv; i++) {
		if (strncmp(r->env[i], kv, klen) == 0 && r->env[i][klen] == '=') {
			if (only_if_missing)
				return;
			char *dup = strdup(kv);
			if (dup) {
				free(r->env[i]);
				r->env[i] = dup;
			}
			return;
		}
	}
	if (r->nenv < (int)(sizeof(r->env) / sizeof(r->env[0])) - 1) {
		char *dup = strdup(kv);
		if (dup)
			r->env[r->nenv++] = dup;
	}
}

/* Order of precedence: the request's env, then the sandbox's (CONFIG), then defaults. */
static void build_env(struct exec_req *r, const struct cred *cr)
{
	for (int i = 0; i < cfg.nenv; i++)
		env_set(r, cfg.env[i], 1);
	char kv[300];
	env_set(r, "PATH=" DEFAULT_PATH, 1);
	snprintf(kv, sizeof(kv), "HOME=%s", cr->set ? cr->home : "/root");
	env_set(r, kv, 1);
	if (cr->set && cr->name[0]) {
		snprintf(kv, sizeof(kv), "USER=%s", cr->name);
		env_set(r, kv, 1);
	}
	if (r->tty)
		env_set(r, "TERM=xterm", 1);
	r->env[r->nenv] = NULL;
}

/* ---- the child ------------------------------------------------------------------------- */

/* What the child sends back when it cannot exec: one write, under PIPE_BUF (atomic). */
struct child_error {
	int stage, err;
	char msg[480]; /* the whole message when not empty (root set-up, user lookup) */
};

static void child_fail_msg(int errfd, int stage, const char *msg)
{
	struct child_error ce = {stage, errno, ""};
	if (msg)
		snprintf(ce.msg, sizeof(ce.msg), "%s", msg);
	ssize_t w = write(errfd, &ce, sizeof(ce));
	(void)w;
	_exit(127);
}

static void child_fail(int errfd, int stage)
{
	child_fail_msg(errfd, stage, NULL);
}

static void child_setup(struct exec_req *r, struct cred *cr, int fds[3], int errfd)
{
	sigset_t none;
	sigemptyset(&none);
	sigprocmask(SIG_SETMASK, &none, NULL);
	signal(SIGPIPE, SIG_DFL);
	setsid();
	if (r->tty && ioctl(fds[0], TIOCSCTTY, 0) < 0)
		child_fail(errfd, ST_TTY);
	for (int i = 0; i < 3; i++)
		if (dup2(fds[i], i) < 0)
			child_fail(errfd, ST_TTY);
	char why[480];
	if (root_enter(&r->root, why, sizeof(why)) < 0)
		child_fail_msg(errfd, ST_ROOT, why);
	if (own_root(r)) {
		if (r->user && r->user[0]) {
			int e = resolve_user(r->user, cr, why, sizeof(why));
			if (e) {
				errno = e;
				child_fail_msg(errfd, ST_USER, why);
			}
		}
		build_env(r, cr);
	}
	for (int i = 0; i < cfg.nrlimits + r->nrl; i++) {
		const struct rlim_req *q = i < cfg.nrlimits ? &cfg.rlimits[i] : &r->rl[i - cfg.nrlimits];
		struct rlimit lim = {(rlim_t)q->soft, (rlim_t)q->hard};
		if (setrlimit(q->resource, &lim) < 0)
			child_fail(errfd, ST_RLIMIT);
	}
	int stage = privs_before_user(&r->pv);
	if (stage)
		child_fail(errfd, stage);
	/* GROUPS, when given, is the whole supplementary list (as runc's additionalGids with
	 * a uid:gid user); else the user's groups from /etc/group */
	if ((r->pv.has_groups || cr->set) &&
	    setgroups(r->pv.has_groups ? (size_t)r->pv.ngroups : (size_t)cr->ngroups,
		      r->pv.has_groups ? (const gid_t *)r->pv.groups : cr->groups) < 0)
		child_fail(errfd, ST_USER);
	if (cr->set && (setgid(cr->gid) < 0 || setuid(cr->uid) < 0))
		child_fail(errfd, ST_USER);
	stage = privs_after_user(&r->pv);
	if (stage)
		child_fail(errfd, stage);
	/* CONFIG's WORKDIR is a place in the guest's root, not in a process's own */
	const char *cwd = r->cwd ? r->cwd : cfg.workdir && !own_root(r) ? cfg.workdir : NULL;
	if (cwd && chdir(cwd) < 0)
		child_fail(errfd, ST_CWD);
	if (!cwd && cr->set && chdir(cr->home) < 0 && chdir("/") < 0)
		child_fail(errfd, ST_CWD);
	extern char **environ;
	environ = r->env; /* execvpe searches the PATH of environ, so make it the child's */
	execvpe(r->argv[0], r->argv, r->env);
	child_fail(errfd, ST_EXEC);
}

/* ---- the parent ------------------------------------------------------------------------- */

static void send_failed(struct conn *c, uint32_t sid, int err, const char *kind, const char *msg)
{
	size_t f = frame_begin(&c->out, sid, T_FAILED);
	put_u64(&c->out, G_ERRNO, (uint64_t)err);
	put_str(&c->out, G_KIND, kind);
	put_str(&c->out, G_MESSAGE, msg);
	frame_end(&c->out, f);
}

static const char *failure_kind(int stage, int err)
{
	switch (stage) {
	case ST_CWD:
		return "bad_cwd";
	case ST_USER:
		return "bad_user";
	case ST_RLIMIT:
		return "bad_rlimit";
	case ST_TTY:
		return "tty";
	case ST_CAPS:
		return "bad_capabilities";
	case ST_NNP:
		return "bad_no_new_privs";
	case ST_ROOT:
		return "bad_root";
	}
	if (err == ENOENT || err == ENOTDIR)
		return "not_found";
	if (err == EACCES || err == EPERM)
		return "permission_denied";
	if (err == ENOEXEC)
		return "exec_format";
	return "exec_error";
}

/* Child-side fds in fds[0..2], our ends in the session. Returns 0 or an errno. */
static int make_stdio(struct exec_req *r, struct session *s, int fds[3])
{
	if (r->tty) {
		int master, slave;
		struct winsize ws = {.ws_row = (unsigned short)(r->rows ? r->rows : 24),
				     .ws_col = (unsigned short)(r->cols ? r->cols : 80)};
		if (openpty(&master, &slave, NULL, NULL, &ws) < 0)
			return errno;
		fcntl(master, F_SETFD, FD_CLOEXEC);
		fcntl(slave, F_SETFD, FD_CLOEXEC);
		fcntl(master, F_SETFL, O_NONBLOCK);
		s->out_fd = master;
		s->in_fd = fcntl(master, F_DUPFD_CLOEXEC, 0); /* stdin closes apart from output */
		fds[0] = fds[1] = fds[2] = slave;
		return s->in_fd < 0 ? EMFILE : 0;
	}
	int in[2], out[2], err[2];
	if (pipe2(in, O_CLOEXEC) < 0)
		return errno;
	if (pipe2(out, O_CLOEXEC) < 0) {
		close(in[0]), close(in[1]);
		return errno;
	}
	if (pipe2(err, O_CLOEXEC) < 0) {
		close(in[0]), close(in[1]), close(out[0]), close(out[1]);
		return errno;
	}
	s->in_fd = in[1];
	s->out_fd = out[0];
	s->err_fd = err[0];
	fcntl(in[1], F_SETFL, O_NONBLOCK);
	fcntl(out[0], F_SETFL, O_NONBLOCK);
	fcntl(err[0], F_SETFL, O_NONBLOCK);
	fds[0] = in[0];
	fds[1] = out[1];
	fds[2] = err[1];
	return 0;
}

static void close_child_fds(int fds[3])
{
	close(fds[0]);
	if (fds[1] != fds[0])
		close(fds[1]);
	if (fds[2] != fds[0] && fds[2] != fds[1])
		close(fds[2]);
}

/* Fork and exec; on success the session joins the connection. */
static void spawn(struct conn *c, uint32_t sid, struct exec_req *r, struct cred *cr)
{
	struct session *s = session_new(c, sid, S_EXEC);
	int fds[3], ep[2];
	int err = s ? make_stdio(r, s, fds) : ENOMEM;
	if (err) {
		send_failed(c, sid, err, "resource", strerror(err));
		if (s)
			session_close(s), free(s);
		return;
	}
	if (pipe2(ep, O_CLOEXEC) < 0) {
		send_failed(c, sid, errno, "resource", strerror(errno));
		close_child_fds(fds);
		session_close(s), free(s);
		return;
	}
	pid_t pid = fork();
	if (pid == 0) {
		close(ep[0]);
		child_setup(r, cr, fds, ep[1]);
	}
	int fork_errno = errno;
	close(ep[1]);
	close_child_fds(fds);
	struct child_error ce = {0, 0, ""};
	ssize_t got = pid > 0 ? read(ep[0], &ce, sizeof(ce)) : 0;
	while (got < 0 && errno == EINTR)
		got = read(ep[0], &ce, sizeof(ce));
	close(ep[0]);
	if (pid < 0 || got == (ssize_t)sizeof(ce)) {
		int e = pid < 0 ? fork_errno : ce.err;
		const char *kind = pid < 0 ? "resource" : failure_kind(ce.stage, e);
		char why[600];
		/* the new stages name themselves: "true: Operation not permitted" would not say
		 * that the capability sets were refused */
		const char *what = pid < 0 ? "fork" : ce.stage == ST_CAPS ? "setting the capabilities"
			: ce.stage == ST_NNP ? "setting no_new_privs" : r->argv[0];
		ce.msg[sizeof(ce.msg) - 1] = 0;
		if (pid > 0 && ce.msg[0])
			snprintf(why, sizeof(why), "%s", ce.msg);
		else
			snprintf(why, sizeof(why), "%s: %s", what, strerror(e));
		if (pid > 0)
			waitpid(pid, NULL, 0);
		send_failed(c, sid, e, kind, why);
		session_close(s), free(s);
		return;
	}
	s->pid = pid;
	s->tty = r->tty;
	session_link(s);
	size_t f = frame_begin(&c->out, sid, T_STARTED);
	put_u64(&c->out, G_PID, (uint64_t)pid);
	frame_end(&c->out, f);
}

void exec_start(struct conn *c, uint32_t sid, const uint8_t *p, uint32_t n)
{
	struct exec_req *r = calloc(1, sizeof(*r));
	if (!r) {
		send_error(c, sid, ENOMEM, "resource", "out of memory");
		return;
	}
	const char *bad = parse_exec(r, p, n);
	if (bad) {
		send_error(c, sid, EINVAL, "bad_request", bad);
		req_free(r), free(r);
		return;
	}
	struct cred cr = {0};
	char why[300];
	if (r->user && r->user[0] && !own_root(r)) {
		int e = resolve_user(r->user, &cr, why, sizeof(why));
		if (e) {
			send_failed(c, sid, e, "bad_user", why);
			req_free(r), free(r);
			return;
		}
	}
	if (!own_root(r))
		build_env(r, &cr);
	r->argv[r->argc] = NULL;
	spawn(c, sid, r, &cr);
	req_free(r);
	free(r);
}

/* ---- stdin -------------------------------------------------------------------------------- */

static void close_stdin(struct session *s)
{
	if (s->in_fd >= 0)
		close(s->in_fd);
	s->in_fd = -1;
}

void exec_pump_stdin(struct session *s)
{
	while (s->in_fd >= 0 && buf_pending(&s->inq)) {
		ssize_t w = write(s->in_fd, s->inq.data + s->inq.off, buf_pending(&s->inq));
		if (w < 0 && errno == EINTR)
			continue;
		if (w < 0 && errno == EAGAIN)
			break;
		if (w <= 0) {
			/* The child closed its stdin: what is left can never be delivered. */
			s->credit_back += (uint32_t)buf_pending(&s->inq);
			buf_consumed(&s->inq, buf_pending(&s->inq));
			close_stdin(s);
			break;
		}
		s->credit_back += (uint32_t)w;
		buf_consumed(&s->inq, (size_t)w);
	}
	if (s->in_fd >= 0 && s->stdin_eof && !buf_pending(&s->inq)) {
		if (s->tty) {
			ssize_t w = write(s->in_fd, "\x04", 1); /* VEOF: the terminal's end of input */
			(void)w;
		}
		close_stdin(s);
	}
	/* Acknowledge in batches, but at once when the queue ran dry (the host may wait). */
	if (s->credit_back >= WINDOW / 4 || !buf_pending(&s->inq))
		session_ack(s);
}

void exec_stdin(struct session *s, const uint8_t *p, uint32_t n)
{
	if (s->stdin_eof) {
		if (n)
			session_error(s, EPROTO, "bad_frame", "STDIN after end of input");
		return;
	}
	if (n == 0) {
		s->stdin_eof = 1;
	} else if (!session_take_input(s, n)) {
		session_error(s, EPROTO, "bad_frame", "STDIN beyond the flow-control window");
		return;
	} else if (s->in_fd < 0) {
		s->credit_back += n;
	} else {
		buf_put(&s->inq, p, n);
		if (s->inq.failed) {
			session_error(s, ENOMEM, "resource", "out of memory for stdin");
			return;
		}
	}
	exec_pump_stdin(s);
}

/* ---- output --------------------------------------------------------------------------------- */

void exec_read_output(struct session *s, int which)
{
	int *fd = which == 1 ? &s->out_fd : &s->err_fd;
	uint16_t type = which == 1 ? T_STDOUT : T_STDERR;
	struct buf *b = &s->conn->out;
	size_t want = s->out_credit < CHUNK ? s->out_credit : CHUNK;
	if (*fd < 0 || want == 0 || buf_reserve(b, HDR_LEN + want) < 0)
		return;
	ssize_t n = read(*fd, b->data + b->len + HDR_LEN, want);
	if (n < 0 && (errno == EAGAIN || errno == EINTR))
		return;
	if (n > 0) {
		frame_header(b->data + b->len, (uint32_t)n, s->id, type);
		b->len += HDR_LEN + (size_t)n;
		s->out_credit -= (uint32_t)n;
		return;
	}
	/* EOF (or EIO from a PTY master whose slave side is gone): an empty frame says so. */
	close(*fd);
	*fd = -1;
	size_t f = frame_begin(b, s->id, type);
	frame_end(b, f);
	session_try_finish(s);
}

void exec_reaped(pid_t pid, int status)
{
	for (struct conn *c = conn_list(); c; c = c->next)
		for (struct session *s = c->sessions; s; s = s->next)
			if (s->kind == S_EXEC && s->pid == pid && !s->exited && !s->closing) {
				s->exited = 1;
				s->status = status;
				session_try_finish(s);
				return;
			}
}

/* ---- signals and window size ------------------------------------------------------------------ */

void exec_signal(struct session *s, const uint8_t *p, uint32_t n)
{
	struct tlv t = {p, n};
	uint16_t tag;
	const uint8_t *v;
	uint32_t len;
	uint64_t sig = 0, group = 1;
	int rc;
	while ((rc = tlv_next(&t, &tag, &v, &len)) > 0) {
		if ((tag == G_SIGNAL && tlv_u64(v, len, &sig) < 0) ||
		    (tag == G_GROUP && tlv_u64(v, len, &group) < 0))
			rc = -1;
		if (rc < 0)
			break;
	}
	if (rc < 0 || sig == 0 || sig >= 65) {
		session_error(s, EINVAL, "bad_frame", "bad SIGNAL frame");
		return;
	}
	/* After the leader is reaped its group may live on (it cannot be reused while it
	 * has members), so a group signal still makes sense then. */
	if (group)
		kill(-s->pid, (int)sig);
	else if (!s->exited)
		kill(s->pid, (int)sig);
}

void exec_resize(struct session *s, const uint8_t *p, uint32_t n)
{
	struct tlv t = {p, n};
	uint16_t tag;
	const uint8_t *v;
	uint32_t len;
	uint64_t rows = 0, cols = 0;
	int rc;
	while ((rc = tlv_next(&t, &tag, &v, &len)) > 0) {
		if ((tag == G_ROWS && tlv_u64(v, len, &rows) < 0) ||
		    (tag == G_COLS && tlv_u64(v, len, &cols) < 0))
			rc = -1;
		if (rc < 0)
			break;
	}
	if (rc < 0 || rows == 0 || cols == 0 || rows > 0xffff || cols > 0xffff) {
		session_error(s, EINVAL, "bad_frame", "bad RESIZE frame");
		return;
	}
	if (!s->tty || s->out_fd < 0)
		return; /* no terminal: nothing to resize */
	struct winsize ws = {.ws_row = (unsigned short)rows, .ws_col = (unsigned short)cols};
	ioctl(s->out_fd, TIOCSWINSZ, &ws); /* the kernel sends SIGWINCH to the foreground */
}
