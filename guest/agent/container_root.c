/*
 * A process's own root (EXEC's ROOT, MOUNT, ROOT_READONLY and JOIN fields, PROTOCOL.md):
 * a pod member container's process tree runs with a guest directory as its `/`, in a
 * mount namespace of its own; an exec into that member joins the namespace.
 *
 * Everything here runs in the forked child, never in the agent: the agent keeps its own
 * namespace and root whatever a request asks. The child: unshare(CLONE_NEWNS); the whole
 * tree becomes a slave (nothing it mounts propagates back to the agent's tree); ROOT is
 * bound onto itself (a mount, as pivot_root wants); a fresh procfs at /proc, the guest's
 * /dev and /sys bound in; the MOUNTs in order; the root remounted read-only when asked;
 * pivot_root(".", ".") and a lazy unmount of the old root stacked on it (runc's shape),
 * so a later setns() into this namespace lands in the new root too.
 *
 * Mount points are resolved inside the new root with openat2(RESOLVE_IN_ROOT): a symbolic
 * link in the root's files (absolute, or ../..) or a ".." in a destination cannot take a
 * mount outside it, since the kernel treats the root as `/` while resolving. The mount
 * then goes onto the opened fd (/proc/self/fd/N), never onto a path resolved again.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "agent.h"

#ifndef SYS_openat2
#define SYS_openat2 437
#endif
#define RESOLVE_NO_MAGICLINKS 0x02
#define RESOLVE_IN_ROOT 0x10

struct open_how_ {
	uint64_t flags, mode, resolve;
};

#define MAX_JOIN_PID 4194304 /* PID_MAX_LIMIT */

/* ---- parsing (in the agent) ---------------------------------------------------------- */

/* A path field: absolute, 1..MAX_ROOT_PATH bytes, no NUL. NULL if it is not. */
static char *path_dup(const uint8_t *v, uint32_t len)
{
	if (len == 0 || len > MAX_ROOT_PATH || v[0] != '/')
		return NULL;
	return tlv_strdup(v, len);
}

static const char *mount_field(struct exec_root *er, const uint8_t *v, uint32_t len)
{
	if (er->nmounts == MAX_ROOT_MOUNTS)
		return "too many MOUNT fields (at most 64)";
	if (len < 4)
		return "bad MOUNT field (shorter than its 4-byte flags)";
	uint32_t flags = get_le32(v);
	if (flags & ~(uint32_t)(MOUNT_RO | MOUNT_TMPFS))
		return "bad MOUNT field (unknown flags)";
	const uint8_t *src = v + 4, *nul = memchr(src, 0, len - 4);
	if (!nul)
		return "bad MOUNT field (no NUL between source and destination)";
	uint32_t slen = (uint32_t)(nul - src), dlen = len - 4 - slen - 1;
	if (slen > MAX_ROOT_PATH)
		return "bad MOUNT field (source over 4096 bytes)";
	if (!(flags & MOUNT_TMPFS) && (slen == 0 || src[0] != '/'))
		return "bad MOUNT field (a bind's source must be an absolute path)";
	struct root_mount *m = &er->mounts[er->nmounts];
	m->dest = path_dup(nul + 1, dlen);
	if (!m->dest)
		return "bad MOUNT field (destination not an absolute path of at most 4096 bytes "
		       "without NUL)";
	m->source = malloc(slen + 1);
	if (!m->source) {
		free(m->dest);
		return "MOUNT field: out of memory";
	}
	memcpy(m->source, src, slen);
	m->source[slen] = 0;
	m->flags = flags;
	er->nmounts++;
	return NULL;
}

int root_field(struct exec_root *er, uint16_t tag, const uint8_t *v, uint32_t len,
	       const char **bad)
{
	uint64_t u;
	switch (tag) {
	case G_ROOT:
		free(er->root);
		er->root = path_dup(v, len);
		if (!er->root)
			*bad = "bad ROOT field (an absolute path of at most 4096 bytes without NUL)";
		return 1;
	case G_MOUNT:
		*bad = mount_field(er, v, len);
		return 1;
	case G_ROOT_READONLY:
		if (tlv_u64(v, len, &u) < 0 || u > 1)
			*bad = "bad ROOT_READONLY field (0 or 1)";
		else
			er->read_only = (int)u;
		return 1;
	case G_JOIN:
		if (tlv_u64(v, len, &u) < 0 || u < 2 || u > MAX_JOIN_PID)
			*bad = "bad JOIN field (a guest pid above 1)";
		else
			er->join = (pid_t)u;
		return 1;
	}
	return 0;
}

const char *root_check(const struct exec_root *er)
{
	if (er->join && er->root)
		return "JOIN and ROOT exclude each other (a joined process has its member's root)";
	if (!er->root && er->nmounts)
		return "MOUNT without ROOT";
	if (!er->root && er->read_only)
		return "ROOT_READONLY without ROOT";
	return NULL;
}

void root_free(struct exec_root *er)
{
	free(er->root);
	for (int i = 0; i < er->nmounts; i++) {
		free(er->mounts[i].source);
		free(er->mounts[i].dest);
	}
	memset(er, 0, sizeof(*er));
}

/* ---- setting it up (in the child) ------------------------------------------------------ */

/* msg = "STEP PATH: strerror(errno)"; returns -1 with errno kept. */
static int fail(char *msg, size_t len, const char *step, const char *path)
{
	int e = errno;
	snprintf(msg, len, "%s%s%s: %s", step, path ? " " : "", path ? path : "", strerror(e));
	errno = e;
	return -1;
}

static const char *fd_path(int fd, char buf[32])
{
	snprintf(buf, 32, "/proc/self/fd/%d", fd);
	return buf;
}

/* An O_PATH fd for path inside the root rootfd: symbolic links and ".." stay in it. */
static int open_in_root(int rootfd, const char *path)
{
	struct open_how_ how = {.flags = O_PATH | O_CLOEXEC,
				.resolve = RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS};
	return (int)syscall(SYS_openat2, rootfd, path, &how, sizeof(how));
}

/* The mount point dest in the root, created when missing (directories on the way; the
 * last one a directory, or an empty file when dir is 0). Each missing component is made
 * in its parent as resolved in the root, so a link cannot lead the creation out either. */
static int mount_point(int rootfd, const char *dest, int dir, char *msg, size_t len)
{
	int fd = open_in_root(rootfd, dest);
	if (fd >= 0 || errno != ENOENT)
		return fd >= 0 ? fd : fail(msg, len, "mount point", dest);
	char path[MAX_ROOT_PATH + 1];
	snprintf(path, sizeof(path), "%s", dest);
	size_t n = strlen(path);
	while (n > 1 && path[n - 1] == '/')
		path[--n] = 0; /* so the last component is a name, the one whose fd we return */
	for (size_t end = 1; end <= n; end++) {
		if (end < n && path[end] != '/')
			continue;
		if (path[end - 1] == '/')
			continue; /* "//": an empty component */
		char saved = path[end];
		path[end] = 0;
		fd = open_in_root(rootfd, path);
		if (fd < 0 && errno == ENOENT) {
			char *slash = strrchr(path, '/');
			const char *name = slash + 1;
			*slash = 0;
			int parent = open_in_root(rootfd, slash == path ? "/" : path);
			*slash = '/';
			if (parent < 0)
				return fail(msg, len, "mount point", path);
			int rc;
			if (end == n && !dir) {
				rc = openat(parent, name, O_CREAT | O_EXCL | O_WRONLY | O_NOFOLLOW |
					    O_CLOEXEC, 0644);
				if (rc >= 0)
					close(rc);
			} else {
				rc = mkdirat(parent, name, 0755);
			}
			close(parent);
			if (rc < 0 && errno != EEXIST)
				return fail(msg, len, "create mount point", path);
			fd = open_in_root(rootfd, path); /* EEXIST: a dangling link fails here */
		}
		if (fd < 0)
			return fail(msg, len, "mount point", path);
		path[end] = saved;
		if (end < n)
			close(fd);
	}
	return fd;
}

/* The mount flags of path's mount, as mount(2) flags, so a remount keeps them. */
static unsigned long kept_flags(const char *path)
{
	static const unsigned long map[][2] = {
		{ST_NOSUID, MS_NOSUID}, {ST_NODEV, MS_NODEV}, {ST_NOEXEC, MS_NOEXEC},
		{ST_NOATIME, MS_NOATIME}, {ST_NODIRATIME, MS_NODIRATIME}, {ST_RELATIME, MS_RELATIME}};
	struct statvfs st;
	unsigned long flags = 0;
	if (statvfs(path, &st) == 0)
		for (size_t i = 0; i < sizeof(map) / sizeof(map[0]); i++)
			if (st.f_flag & map[i][0])
				flags |= map[i][1];
	return flags;
}

static int remount_ro(const char *path)
{
	return mount(NULL, path, NULL, MS_REMOUNT | MS_BIND | MS_RDONLY | kept_flags(path), NULL);
}

/* One mount into the root: a bind of source (a guest path, resolved in the agent's tree),
 * a tmpfs, or (fstype) a fresh file system of that type. */
static int mount_in(int rootfd, const struct root_mount *m, const char *fstype,
		    unsigned long fsflags, char *msg, size_t len)
{
	char sbuf[32], dbuf[32];
	int src = -1, dir = 1;
	struct stat st, rst;
	if (!fstype) {
		src = open(m->source, O_PATH | O_CLOEXEC);
		if (src < 0 || fstat(src, &st) < 0)
			return fail(msg, len, "mount source", m->source);
		dir = S_ISDIR(st.st_mode);
	}
	int dst = mount_point(rootfd, m->dest, dir, msg, len);
	if (dst < 0) {
		if (src >= 0)
			close(src);
		return -1;
	}
	/* a destination that is the root itself ("/..", a link to /) would be hidden by the
	 * switch yet seen by a JOIN: refuse it */
	if (fstat(dst, &st) == 0 && fstat(rootfd, &rst) == 0 && st.st_dev == rst.st_dev &&
	    st.st_ino == rst.st_ino) {
		errno = EINVAL;
		fail(msg, len, "mount", m->dest);
		snprintf(msg + strlen(msg), len - strlen(msg), " (it is the new root itself)");
		return -1;
	}
	int rc;
	if (fstype)
		rc = mount(fstype, fd_path(dst, dbuf), fstype,
			   fsflags | (m->flags & MOUNT_RO ? MS_RDONLY : 0),
			   m->source[0] ? m->source : NULL);
	else
		rc = mount(fd_path(src, sbuf), fd_path(dst, dbuf), NULL, MS_BIND | MS_REC, NULL);
	int e = errno;
	close(dst);
	if (src >= 0)
		close(src);
	errno = e;
	if (rc < 0)
		return fail(msg, len, "mount", m->dest);
	if (!fstype && (m->flags & MOUNT_RO)) {
		/* a bind takes MS_RDONLY only in a remount of the new mount, found again
		 * (in the root) now that it sits on the mount point */
		dst = open_in_root(rootfd, m->dest);
		rc = dst < 0 ? -1 : remount_ro(fd_path(dst, dbuf));
		e = errno;
		if (dst >= 0)
			close(dst);
		errno = e;
		if (rc < 0)
			return fail(msg, len, "remount read-only", m->dest);
	}
	return 0;
}

static int join(pid_t pid, char *msg, size_t len)
{
	char ns[64];
	snprintf(ns, sizeof(ns), "/proc/%d/ns/mnt", (int)pid);
	int fd = open(ns, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return fail(msg, len, "join", ns);
	if (setns(fd, CLONE_NEWNS) < 0) {
		fail(msg, len, "join", ns);
		close(fd);
		return -1;
	}
	close(fd);
	return 0;
}

int root_enter(const struct exec_root *er, char *msg, size_t len)
{
	if (er->join)
		return join(er->join, msg, len);
	if (!er->root)
		return 0;
	if (unshare(CLONE_NEWNS) < 0)
		return fail(msg, len, "unshare the mount namespace", NULL);
	if (mount(NULL, "/", NULL, MS_REC | MS_SLAVE, NULL) < 0)
		return fail(msg, len, "make the old tree a slave", "/");
	if (mount(er->root, er->root, NULL, MS_BIND | MS_REC, NULL) < 0)
		return fail(msg, len, "bind", er->root);
	int rootfd = open(er->root, O_PATH | O_DIRECTORY | O_CLOEXEC);
	if (rootfd < 0)
		return fail(msg, len, "open", er->root);
	/* the guest's own first, so a MOUNT at /dev/shm or /proc/... lands on top of them */
	static const struct root_mount proc = {0, "", "/proc"};
	static const struct root_mount dev = {0, "/dev", "/dev"};
	static const struct root_mount sys = {0, "/sys", "/sys"};
	if (mount_in(rootfd, &proc, "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, msg, len) < 0 ||
	    mount_in(rootfd, &dev, NULL, 0, msg, len) < 0 ||
	    mount_in(rootfd, &sys, NULL, 0, msg, len) < 0)
		return -1;
	for (int i = 0; i < er->nmounts; i++) {
		const struct root_mount *m = &er->mounts[i];
		if (mount_in(rootfd, m, m->flags & MOUNT_TMPFS ? "tmpfs" : NULL,
			     MS_NOSUID | MS_NODEV, msg, len) < 0)
			return -1;
	}
	char rbuf[32];
	if (er->read_only && remount_ro(fd_path(rootfd, rbuf)) < 0)
		return fail(msg, len, "remount read-only", er->root);
	if (fchdir(rootfd) < 0)
		return fail(msg, len, "chdir", er->root);
	close(rootfd);
	/* the old root is stacked on the new one, then detached: no put_old directory needed */
	if (syscall(SYS_pivot_root, ".", ".") < 0)
		return fail(msg, len, "pivot_root", er->root);
	if (umount2(".", MNT_DETACH) < 0)
		return fail(msg, len, "detach the old root", NULL);
	if (chdir("/") < 0)
		return fail(msg, len, "chdir", "/");
	return 0;
}
