/*
 * File requests: read (streamed in DATA frames under flow control), write (DATA frames
 * from the host, acknowledged with CREDIT), stat, list (ENTRIES frames), mkdir, remove.
 * Paths are the guest's own; the agent is root in the guest, so there is no boundary to
 * enforce here beyond not following symlinks where that would surprise (stat, list and
 * recursive remove look at links, not through them).
 *
 * Read and write open only regular files, and never block on the way: the agent is PID 1
 * and single-threaded, so an open() that waits (a FIFO without a writer or reader, a
 * terminal) would stall every session and connection. Links are followed as usual.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "agent.h"

struct fs_req {
	char *path;
	uint64_t offset, length, mode;
	int has_length, has_mode, parents, recursive, append;
};

static const char *kind_of(int err)
{
	switch (err) {
	case ENOENT:
		return "not_found";
	case EACCES:
	case EPERM:
		return "permission_denied";
	case EEXIST:
		return "exists";
	case ENOTDIR:
		return "not_a_directory";
	case EISDIR:
		return "is_a_directory";
	case ENOTEMPTY:
		return "not_empty";
	}
	return "io";
}

static void fs_fail(struct conn *c, uint32_t sid, int err, const char *what, const char *path)
{
	char msg[PATH_MAX + 64];
	snprintf(msg, sizeof(msg), "%s %s: %s", what, path, strerror(err));
	send_error(c, sid, err, kind_of(err), msg);
}

static void send_done(struct conn *c, uint32_t sid, int with_size, uint64_t size)
{
	size_t f = frame_begin(&c->out, sid, T_DONE);
	if (with_size)
		put_u64(&c->out, G_SIZE, size);
	frame_end(&c->out, f);
}

static const char *parse_fs(struct fs_req *q, const uint8_t *p, uint32_t n)
{
	struct tlv t = {p, n};
	uint16_t tag;
	const uint8_t *v;
	uint32_t len;
	int rc;
	while ((rc = tlv_next(&t, &tag, &v, &len)) > 0) {
		uint64_t u = 0;
		if (tag == G_PATH) {
			free(q->path);
			q->path = tlv_strdup(v, len);
			if (!q->path || !q->path[0] || len >= PATH_MAX)
				return "bad PATH";
			continue;
		}
		if (tag != G_OFFSET && tag != G_LENGTH && tag != G_MODE && tag != G_PARENTS &&
		    tag != G_RECURSIVE && tag != G_APPEND)
			continue; /* unknown: ignored */
		if (tlv_u64(v, len, &u) < 0)
			return "integer field not 8 bytes";
		if (tag == G_OFFSET)
			q->offset = u;
		else if (tag == G_LENGTH)
			q->length = u, q->has_length = 1;
		else if (tag == G_MODE)
			q->mode = u & 07777, q->has_mode = 1;
		else if (tag == G_PARENTS)
			q->parents = u != 0;
		else if (tag == G_RECURSIVE)
			q->recursive = u != 0;
		else
			q->append = u != 0;
	}
	if (rc < 0)
		return "truncated field";
	if (!q->path)
		return "no PATH";
	return NULL;
}

/* A file session joins its connection at once (no child process to wait for). */
static struct session *open_session(struct conn *c, uint32_t sid, int kind)
{
	struct session *s = session_new(c, sid, kind);
	if (s)
		session_link(s);
	return s;
}

/* ---- one-shot requests --------------------------------------------------------------- */

static void do_stat(struct conn *c, uint32_t sid, const char *path)
{
	struct stat st;
	if (lstat(path, &st) < 0) {
		fs_fail(c, sid, errno, "stat", path);
		return;
	}
	struct buf *b = &c->out;
	size_t f = frame_begin(b, sid, T_STAT);
	put_u64(b, G_MODE, st.st_mode);
	put_u64(b, G_SIZE, (uint64_t)st.st_size);
	put_u64(b, G_MTIME_NS, (uint64_t)st.st_mtim.tv_sec * 1000000000ull + (uint64_t)st.st_mtim.tv_nsec);
	put_u64(b, G_UID, st.st_uid);
	put_u64(b, G_GID, st.st_gid);
	put_u64(b, G_NLINK, st.st_nlink);
	if (S_ISLNK(st.st_mode)) {
		char target[PATH_MAX];
		ssize_t n = readlink(path, target, sizeof(target) - 1);
		if (n >= 0)
			put_tlv(b, G_TARGET, target, (uint32_t)n);
	}
	frame_end(b, f);
}

static int mkdir_parents(char *path, mode_t mode)
{
	/* Create each missing ancestor in turn; existing directories are fine. */
	for (char *p = path + 1; *p; p++) {
		if (*p != '/')
			continue;
		*p = 0;
		int rc = mkdir(path, 0755);
		*p = '/';
		if (rc < 0 && errno != EEXIST)
			return -1;
	}
	if (mkdir(path, mode) < 0) {
		struct stat st;
		if (errno == EEXIST && stat(path, &st) == 0 && S_ISDIR(st.st_mode))
			return 0;
		return -1;
	}
	return 0;
}

/* "One file system" is checked on directories only: on overlayfs (the sandbox's root)
 * directories carry the overlay's st_dev but files carry their layer's, so nftw's
 * FTW_MOUNT would skip every file. A pre-order pass refuses a tree with a mount point
 * in it before anything is deleted. (The agent is single-threaded: statics are fine.)
 * check_one never stops the walk: musl's nftw leaks the directory fd it has open when a
 * pre-order callback returns non-zero, which would keep that mount busy. */
static dev_t remove_root_dev;
static int remove_crosses_mount;

static int check_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)path;
	(void)ftw;
	if ((flag == FTW_D || flag == FTW_DNR) && st->st_dev != remove_root_dev)
		remove_crosses_mount = 1;
	return 0;
}

static int remove_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)st;
	(void)ftw;
	return (flag == FTW_DP ? rmdir(path) : unlink(path)) < 0 ? -1 : 0;
}

static void do_remove(struct conn *c, uint32_t sid, const char *path, int recursive)
{
	struct stat st;
	if (lstat(path, &st) < 0) {
		fs_fail(c, sid, errno, "remove", path);
		return;
	}
	int rc;
	if (!S_ISDIR(st.st_mode))
		rc = unlink(path);
	else if (!recursive)
		rc = rmdir(path);
	else { /* depth first, not through symlinks, not into other file systems */
		remove_root_dev = st.st_dev;
		remove_crosses_mount = 0;
		rc = nftw(path, check_one, 32, FTW_PHYS);
		if (rc == 0 && remove_crosses_mount) {
			errno = EBUSY;
			rc = -1;
		}
		if (rc == 0)
			rc = nftw(path, remove_one, 32, FTW_DEPTH | FTW_PHYS);
	}
	if (rc < 0) {
		fs_fail(c, sid, errno, "remove", path);
		return;
	}
	send_done(c, sid, 0, 0);
}

/* ---- streamed requests -------------------------------------------------------------------- */

static const char *type_name(mode_t m)
{
	return S_ISFIFO(m) ? "a FIFO" : S_ISSOCK(m) ? "a socket" : S_ISCHR(m) ? "a character device"
	       : S_ISBLK(m) ? "a block device" : S_ISLNK(m) ? "a symbolic link" : "not a regular file";
}

/* open() a file the host reads or writes without ever blocking (O_NONBLOCK), then insist
 * on a regular file and make the fd blocking again. A directory is EISDIR as usual;
 * anything else that is not regular is refused: ERROR kind not_regular, ERRNO EINVAL. */
static int open_regular(struct conn *c, uint32_t sid, const char *what, const char *path,
			int flags, mode_t mode)
{
	struct stat st;
	int fd = open(path, flags | O_NONBLOCK | O_CLOEXEC | O_NOCTTY, mode);
	if (fd < 0) {
		int e = errno;
		/* ENXIO: a FIFO opened for writing without a reader, or a socket. */
		if (e == ENXIO && stat(path, &st) == 0 && !S_ISREG(st.st_mode))
			goto not_regular;
		fs_fail(c, sid, e, what, path);
		return -1;
	}
	if (fstat(fd, &st) < 0 || S_ISDIR(st.st_mode)) {
		int e = errno;
		if (fstat(fd, &st) == 0 && S_ISDIR(st.st_mode))
			e = EISDIR;
		close(fd);
		fs_fail(c, sid, e, what, path);
		return -1;
	}
	if (!S_ISREG(st.st_mode)) {
		close(fd);
		goto not_regular;
	}
	int fl = fcntl(fd, F_GETFL);
	if (fl >= 0)
		fcntl(fd, F_SETFL, fl & ~O_NONBLOCK);
	return fd;
not_regular:;
	char msg[PATH_MAX + 64];
	snprintf(msg, sizeof(msg), "%s %s: %s, not a regular file", what, path,
		 type_name(st.st_mode));
	send_error(c, sid, EINVAL, "not_regular", msg);
	return -1;
}

static void start_read(struct conn *c, uint32_t sid, struct fs_req *q)
{
	int fd = open_regular(c, sid, "read", q->path, O_RDONLY, 0);
	if (fd < 0)
		return;
	if (q->offset && lseek(fd, (off_t)q->offset, SEEK_SET) < 0) {
		fs_fail(c, sid, errno, "read", q->path);
		close(fd);
		return;
	}
	struct session *s = open_session(c, sid, S_READ);
	if (!s) {
		close(fd);
		send_error(c, sid, ENOMEM, "resource", "out of memory");
		return;
	}
	s->file_fd = fd;
	s->remaining = q->has_length ? q->length : UINT64_MAX;
}

static void start_write(struct conn *c, uint32_t sid, struct fs_req *q)
{
	int flags = O_WRONLY | O_CREAT | (q->append ? O_APPEND : O_TRUNC);
	int fd = open_regular(c, sid, "write", q->path, flags, q->has_mode ? (mode_t)q->mode : 0644);
	if (fd < 0)
		return;
	struct session *s = open_session(c, sid, S_WRITE);
	if (!s) {
		close(fd);
		send_error(c, sid, ENOMEM, "resource", "out of memory");
		return;
	}
	s->file_fd = fd;
}

static void start_list(struct conn *c, uint32_t sid, const char *path)
{
	DIR *d = opendir(path);
	if (!d) {
		fs_fail(c, sid, errno, "list", path);
		return;
	}
	struct session *s = open_session(c, sid, S_LIST);
	if (!s) {
		closedir(d);
		send_error(c, sid, ENOMEM, "resource", "out of memory");
		return;
	}
	s->dir = d;
}

void fs_request(struct conn *c, uint32_t sid, uint16_t type, const uint8_t *p, uint32_t n)
{
	struct fs_req q = {0};
	const char *bad = parse_fs(&q, p, n);
	if (bad) {
		send_error(c, sid, EINVAL, "bad_request", bad);
		free(q.path);
		return;
	}
	switch (type) {
	case T_FS_READ:
		start_read(c, sid, &q);
		break;
	case T_FS_WRITE:
		start_write(c, sid, &q);
		break;
	case T_FS_STAT:
		do_stat(c, sid, q.path);
		break;
	case T_FS_LIST:
		start_list(c, sid, q.path);
		break;
	case T_FS_MKDIR:
		if ((q.parents ? mkdir_parents(q.path, q.has_mode ? (mode_t)q.mode : 0755)
			       : mkdir(q.path, q.has_mode ? (mode_t)q.mode : 0755)) < 0)
			fs_fail(c, sid, errno, "mkdir", q.path);
		else
			send_done(c, sid, 0, 0);
		break;
	case T_FS_REMOVE:
		do_remove(c, sid, q.path, q.recursive);
		break;
	}
	free(q.path);
}

void fs_write_data(struct session *s, const uint8_t *p, uint32_t n)
{
	if (n == 0) {
		int rc = close(s->file_fd);
		s->file_fd = -1;
		if (rc < 0)
			session_error(s, errno, kind_of(errno), "close: %s", strerror(errno));
		else {
			send_done(s->conn, s->id, 1, s->done_bytes);
			session_close(s);
		}
		return;
	}
	if (!session_take_input(s, n)) {
		session_error(s, EPROTO, "bad_frame", "DATA beyond the flow-control window");
		return;
	}
	for (uint32_t off = 0; off < n;) {
		ssize_t w = write(s->file_fd, p + off, n - off);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0) {
			int e = w < 0 ? errno : ENOSPC;
			session_error(s, e, kind_of(e), "write: %s", strerror(e));
			return;
		}
		off += (uint32_t)w;
	}
	s->done_bytes += n;
	s->credit_back += n;
	/* The data is written already; acknowledging in quarter windows keeps frames few
	 * while the host (which stops at a full window) can never stall. What the host sent
	 * still counts against its window until the CREDIT has left (session_ack). */
	if (s->credit_back >= WINDOW / 4)
		session_ack(s);
}

static int produce_read(struct session *s)
{
	struct buf *b = &s->conn->out;
	uint64_t want = s->out_credit < CHUNK ? s->out_credit : CHUNK;
	if (want > s->remaining)
		want = s->remaining;
	if (want && buf_reserve(b, HDR_LEN + want) < 0)
		return 0;
	ssize_t n = want ? read(s->file_fd, b->data + b->len + HDR_LEN, want) : 0;
	if (n < 0 && errno == EINTR)
		return 1;
	if (n < 0) {
		session_error(s, errno, kind_of(errno), "read: %s", strerror(errno));
		return 0;
	}
	if (n == 0) {
		send_done(s->conn, s->id, 1, s->done_bytes);
		session_close(s);
		return 0;
	}
	frame_header(b->data + b->len, (uint32_t)n, s->id, T_DATA);
	b->len += HDR_LEN + (size_t)n;
	s->out_credit -= (uint32_t)n;
	s->remaining -= (uint64_t)n;
	s->done_bytes += (uint64_t)n;
	return 1;
}

static int produce_list(struct session *s)
{
	struct buf *b = &s->conn->out;
	size_t f = frame_begin(b, s->id, T_ENTRIES);
	int count = 0;
	struct dirent *e;
	/* Fill one frame with up to ~CHUNK bytes of entries (each far under CHUNK). */
	while (b->len - b->off - f - HDR_LEN < CHUNK - PATH_MAX - 128 && (e = readdir(s->dir))) {
		if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
			continue;
		struct stat st;
		if (fstatat(dirfd(s->dir), e->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0)
			continue; /* vanished meanwhile */
		put_str(b, G_NAME, e->d_name);
		put_u64(b, G_MODE, st.st_mode);
		put_u64(b, G_SIZE, (uint64_t)st.st_size);
		put_u64(b, G_MTIME_NS, (uint64_t)st.st_mtim.tv_sec * 1000000000ull + (uint64_t)st.st_mtim.tv_nsec);
		count++;
	}
	if (count == 0) {
		b->len = b->off + f; /* drop the empty frame */
		send_done(s->conn, s->id, 1, s->done_bytes);
		session_close(s);
		return 0;
	}
	uint32_t payload = (uint32_t)(b->len - b->off - f - HDR_LEN);
	frame_end(b, f);
	s->out_credit = payload > s->out_credit ? 0 : s->out_credit - payload;
	s->done_bytes += (uint64_t)count;
	return 1;
}

int fs_produce(struct session *s)
{
	if (s->closing)
		return 0;
	return s->kind == S_READ ? produce_read(s) : produce_list(s);
}
