/*
 * Volumes: extra ext4 disks the host attaches, and host directories it shares over
 * virtio-fs, mounted at guest paths before READY.
 *
 * The host names them on the kernel command line (vmm/sandbox/agent_cmdline.py):
 *
 *   vmm.vol=SERIAL:MODE:PATH[,SERIAL:MODE:PATH...]
 *   vmm.fs=TAG:MODE:PATH[,TAG:MODE:PATH...]
 *
 * SERIAL is the virtio-blk serial the host gave the disk (found under
 * /sys/block/vdX/serial, so the mount does not depend on the order devices are probed),
 * MODE is rw or ro, PATH the absolute mount point, percent-encoded (%XX) so that it can
 * hold spaces, commas and colons. TAG is the virtio-fs device's tag (%XX-encoded too).
 * The two lists are mounted as one, parents first (fewer path components first; the
 * host sends each list in that order), so a shared dir may sit under a disk volume or
 * the other way round and /a is always mounted before /a/b.
 *
 * The image is not trusted: the mount point is created and reached one component at a
 * time with openat(O_NOFOLLOW), so a symbolic link in the image (say /data -> /) cannot
 * move the mount elsewhere, and the mount goes onto the directory fd we opened
 * (/proc/self/fd/N), not onto a path that could be swapped in between. A volume that
 * cannot be mounted is fatal: the agent logs `agent: FATAL: volume SERIAL: REASON` (or
 * `agent: FATAL: shared dir TAG: REASON`) and powers off, and the host turns that line
 * into BootFailed naming the volume or directory.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "agent.h"

#define MAX_VOLUMES 32         /* of each kind */
#define SERIAL_MAX 20          /* virtio-blk IDs are 20 bytes */
#define TAG_MAX 36             /* virtio-fs tags, likewise */
#define VOL_PATH_MAX 512
#define VOLUME_WAIT_MS 5000    /* as for the root disks: devices may register late */
#define SHARED_WAIT_MS 2000    /* a virtio-fs tag is normally there before init runs */

enum kind { DISK, SHARED };

struct volume {
	enum kind kind;
	char id[TAG_MAX + 1];      /* the disk's serial, or the shared dir's tag */
	int read_only;
	char path[VOL_PATH_MAX];
	int depth;                 /* path components: the mount order */
	int mounted;
};

static struct volume volumes[2 * MAX_VOLUMES];
static int nvolumes;

static const char *kind_name(enum kind k)
{
	return k == DISK ? "volume" : "shared dir";
}

static int hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/* Decode %XX into out (NUL-terminated); refuse a NUL byte and what does not fit. */
static const char *decode(const char *in, size_t len, char *out, size_t outlen)
{
	size_t o = 0;
	for (size_t i = 0; i < len; i++) {
		int c = (unsigned char)in[i];
		if (c == '%') {
			int hi = i + 2 < len ? hexval(in[i + 1]) : -1;
			int lo = i + 2 < len ? hexval(in[i + 2]) : -1;
			if (hi < 0 || lo < 0)
				return "bad %-escape in the path";
			c = hi * 16 + lo;
			i += 2;
		}
		if (c == 0)
			return "NUL in the path";
		if (o + 1 >= outlen)
			return "too long";
		out[o++] = (char)c;
	}
	out[o] = 0;
	return NULL;
}

/* Decode a path; refuse a relative one, and empty, "." or ".." components (the host
 * checks the same; the agent does not rely on it). */
static const char *decode_path(const char *in, size_t len, char *out, size_t outlen)
{
	const char *err = decode(in, len, out, outlen);
	if (err)
		return strcmp(err, "too long") == 0 ? "path too long" : err;
	if (out[0] != '/' || out[1] == 0)
		return "the path must be absolute and not /";
	for (const char *p = out + 1;;) {
		const char *end = strchrnul(p, '/');
		size_t n = (size_t)(end - p);
		if (n == 0 || (n == 1 && p[0] == '.') || (n == 2 && p[0] == '.' && p[1] == '.'))
			return "empty, '.' or '..' component in the path";
		if (!*end)
			break;
		p = end + 1;
	}
	return NULL;
}

/* One entry "ID:MODE:PATH" of length len (ID a disk serial, or a %-encoded tag). NULL,
 * or what is wrong with it. */
static const char *parse_entry(const char *e, size_t len, struct volume *v)
{
	const char *c1 = memchr(e, ':', len);
	const char *c2 = c1 ? memchr(c1 + 1, ':', len - (size_t)(c1 + 1 - e)) : NULL;
	if (!c2)
		return v->kind == DISK ? "not SERIAL:MODE:PATH" : "not TAG:MODE:PATH";
	size_t slen = (size_t)(c1 - e), mlen = (size_t)(c2 - c1 - 1);
	if (v->kind == DISK) {
		if (slen == 0 || slen > SERIAL_MAX)
			return "bad serial";
		memcpy(v->id, e, slen);
		v->id[slen] = 0;
	} else if (slen == 0 || decode(e, slen, v->id, sizeof(v->id)) || !v->id[0]) {
		v->id[0] = 0;
		return "bad tag";
	}
	if (mlen == 2 && memcmp(c1 + 1, "rw", 2) == 0)
		v->read_only = 0;
	else if (mlen == 2 && memcmp(c1 + 1, "ro", 2) == 0)
		v->read_only = 1;
	else
		return "mode is not rw or ro";
	const char *err = decode_path(c2 + 1, len - (size_t)(c2 + 1 - e), v->path, sizeof(v->path));
	for (const char *p = v->path; !err && *p; p++)
		v->depth += *p == '/';
	return err;
}

/* The block device whose virtio serial is `serial`, as "/dev/vdX", waiting for it to
 * register. 0, or -1 if it never appeared. */
static int find_device(const char *serial, char *dev, size_t devlen)
{
	for (int waited = 0; waited <= VOLUME_WAIT_MS; waited += 5) {
		DIR *d = opendir("/sys/block");
		struct dirent *e;
		while (d && (e = readdir(d))) {
			if (strncmp(e->d_name, "vd", 2) != 0 || strlen(e->d_name) > 16)
				continue;
			char path[300], id[64];
			snprintf(path, sizeof(path), "/sys/block/%.16s/serial", e->d_name);
			int fd = open(path, O_RDONLY | O_CLOEXEC);
			if (fd < 0)
				continue;
			ssize_t n = read(fd, id, sizeof(id) - 1);
			close(fd);
			if (n < 0)
				continue;
			while (n > 0 && (id[n - 1] == '\n' || id[n - 1] == ' ' || id[n - 1] == 0))
				n--;
			id[n] = 0;
			struct stat st;
			snprintf(dev, devlen, "/dev/%.16s", e->d_name);
			if (strcmp(id, serial) == 0 && stat(dev, &st) == 0) {
				closedir(d);
				return 0;
			}
		}
		if (d)
			closedir(d);
		struct timespec ts = {0, 5 * 1000 * 1000};
		nanosleep(&ts, NULL);
	}
	return -1;
}

/* Open (creating what is missing) the directory at the absolute path, never following
 * a symbolic link and never leaving the root. An O_DIRECTORY fd, or -1 with errno set and
 * *what naming the component that failed. */
static int open_mount_point(const char *path, char *what, size_t whatlen)
{
	int dir = open("/", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dir < 0)
		return -1;
	char comp[NAME_MAX + 1];
	for (const char *p = path + 1; *p;) {
		const char *end = strchrnul(p, '/');
		size_t n = (size_t)(end - p);
		snprintf(what, whatlen, "%.*s", (int)(end - path), path);
		if (n > NAME_MAX) {
			close(dir);
			errno = ENAMETOOLONG;
			return -1;
		}
		memcpy(comp, p, n);
		comp[n] = 0;
		int next = openat(dir, comp, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
		if (next < 0 && errno == ENOENT) {
			if (mkdirat(dir, comp, 0755) < 0 && errno != EEXIST) {
				int e = errno;
				close(dir);
				errno = e;
				return -1;
			}
			next = openat(dir, comp, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
		}
		int e = errno;
		struct stat st;
		/* O_DIRECTORY wins over O_NOFOLLOW: a symlink fails with ENOTDIR, not ELOOP. */
		if (next < 0 && e == ENOTDIR && fstatat(dir, comp, &st, AT_SYMLINK_NOFOLLOW) == 0 &&
		    S_ISLNK(st.st_mode))
			e = ELOOP;
		close(dir);
		if (next < 0) {
			errno = e;
			return -1;
		}
		dir = next;
		p = *end ? end + 1 : end;
	}
	return dir;
}

static int fatal(const struct volume *v, const char *fmt, const char *a, const char *b)
{
	char reason[600];
	snprintf(reason, sizeof(reason), fmt, a, b);
	log_msg("agent: FATAL: %s %s: %s", kind_name(v->kind), v->id[0] ? v->id : "-", reason);
	return -1;
}

/* The opened mount point as a /proc/self/fd path in target, or -1 after fatal(). */
static int mount_point(struct volume *v, char *target, size_t targetlen)
{
	char what[VOL_PATH_MAX];
	int fd = open_mount_point(v->path, what, sizeof(what));
	if (fd < 0) {
		const char *why = errno == ELOOP ? "is a symbolic link (not followed)"
				 : errno == ENOTDIR ? "is not a directory" : strerror(errno);
		return fatal(v, "mount point %s %s", what, why);
	}
	snprintf(target, targetlen, "/proc/self/fd/%d", fd);
	return fd;
}

static int mount_shared(struct volume *v)
{
	char target[64];
	int fd = mount_point(v, target, sizeof(target));
	if (fd < 0)
		return -1;
	/* No noatime: the host's files keep the host's atime rules. An unknown tag is
	 * EINVAL; the device is normally probed before init runs, but wait a little as
	 * for disks rather than fail on a late probe. */
	unsigned long flags = MS_NODEV | (v->read_only ? MS_RDONLY : 0);
	int rc, e = 0;
	for (int waited = 0; waited <= SHARED_WAIT_MS; waited += 10) {
		rc = mount(v->id, target, "virtiofs", flags, NULL);
		e = errno;
		if (rc == 0 || e != EINVAL)
			break;
		struct timespec ts = {0, 10 * 1000 * 1000};
		nanosleep(&ts, NULL);
	}
	close(fd);
	if (rc < 0) {
		char on[VOL_PATH_MAX + 8];
		snprintf(on, sizeof(on), "on %s", v->path);
		return fatal(v, e == EINVAL ? "mounting it %s: %s (no virtio-fs device with this tag?)"
				  : "mounting it %s: %s", on, strerror(e));
	}
	v->mounted = 1;
	return 0;
}

static int mount_volume(struct volume *v)
{
	char dev[64], target[64];
	if (v->kind == SHARED)
		return mount_shared(v);
	if (find_device(v->id, dev, sizeof(dev)) < 0)
		return fatal(v, "no disk with serial %s appeared%s", v->id, "");
	int fd = mount_point(v, target, sizeof(target));
	if (fd < 0)
		return -1;
	unsigned long flags = MS_NODEV | MS_NOATIME | (v->read_only ? MS_RDONLY : 0);
	int rc = mount(dev, target, "ext4", flags, NULL);
	if (rc < 0 && v->read_only && errno == EROFS) {
		/* A read-only disk whose journal needs replaying (its last writer crashed) can
		 * only be mounted without the journal: what was committed before the crash. */
		log_msg("agent: volume %s needs journal recovery; mounting it read-only "
			"without replaying the journal", v->id);
		rc = mount(dev, target, "ext4", flags, "noload");
	}
	int e = errno;
	close(fd);
	if (rc < 0) {
		char on[VOL_PATH_MAX + 8];
		snprintf(on, sizeof(on), "on %s", v->path);
		return fatal(v, "mounting it %s: %s", on, strerror(e));
	}
	v->mounted = 1;
	return 0;
}

/* Parse one list (vmm.vol= or vmm.fs=) into the table. 0, or -1 after fatal(). */
static int parse_list(const char *spec, enum kind kind)
{
	int count = 0;
	for (const char *p = spec; p && *p;) {
		const char *end = strchrnul(p, ',');
		struct volume *v = &volumes[nvolumes];
		memset(v, 0, sizeof(*v));
		v->kind = kind;
		if (count == MAX_VOLUMES)
			return fatal(v, "more than 32 entries in %s%s",
				     kind == DISK ? "vmm.vol" : "vmm.fs", "");
		const char *err = parse_entry(p, (size_t)(end - p), v);
		if (err)
			return fatal(v, "%s entry: %s", kind == DISK ? "vmm.vol" : "vmm.fs", err);
		nvolumes++;
		count++;
		p = *end ? end + 1 : end;
	}
	return 0;
}

int volumes_mount(const char *vol_spec, const char *fs_spec)
{
	nvolumes = 0;
	if (parse_list(vol_spec, DISK) < 0 || parse_list(fs_spec, SHARED) < 0)
		return -1;
	/* Parents first across both lists: a stable sort by depth keeps each list's own
	 * order, and a parent always has fewer components than what sits under it. */
	for (int i = 1; i < nvolumes; i++) {
		struct volume v = volumes[i];
		int j = i;
		for (; j > 0 && volumes[j - 1].depth > v.depth; j--)
			volumes[j] = volumes[j - 1];
		volumes[j] = v;
	}
	for (int i = 0; i < nvolumes; i++)
		if (mount_volume(&volumes[i]) < 0)
			return -1;
	return 0;
}

void volumes_unmount(void)
{
	/* Children first; a busy one (it should not be: everything was killed) is at least
	 * made read-only, so its journal is clean (a shared dir has none: it is detached). */
	for (int i = nvolumes - 1; i >= 0; i--) {
		struct volume *v = &volumes[i];
		if (!v->mounted)
			continue;
		v->mounted = 0;
		if (umount2(v->path, UMOUNT_NOFOLLOW) == 0)
			continue;
		if (v->kind == SHARED) {
			umount2(v->path, UMOUNT_NOFOLLOW | MNT_DETACH);
			continue;
		}
		log_msg("agent: unmounting volume %s: %s; remounting read-only", v->id,
			strerror(errno));
		mount(NULL, v->path, NULL, MS_REMOUNT | MS_RDONLY, NULL);
	}
}
