/*
 * Volumes: extra ext4 disks the host attaches, mounted at guest paths before READY.
 *
 * The host names them on the kernel command line (vmm/sandbox/agent_cmdline.py):
 *
 *   vmm.vol=SERIAL:MODE:PATH[,SERIAL:MODE:PATH...]
 *
 * SERIAL is the virtio-blk serial the host gave the disk (found under
 * /sys/block/vdX/serial, so the mount does not depend on the order devices are probed),
 * MODE is rw or ro, PATH the absolute mount point, percent-encoded (%XX) so that it can
 * hold spaces, commas and colons. Entries come parents first, so /a is mounted before
 * /a/b.
 *
 * The image is not trusted: the mount point is created and reached one component at a
 * time with openat(O_NOFOLLOW), so a symbolic link in the image (say /data -> /) cannot
 * move the mount elsewhere, and the mount goes onto the directory fd we opened
 * (/proc/self/fd/N), not onto a path that could be swapped in between. A volume that
 * cannot be mounted is fatal: the agent logs `agent: FATAL: volume SERIAL: REASON` and
 * powers off, and the host turns that line into BootFailed naming the volume.
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

#define MAX_VOLUMES 32
#define SERIAL_MAX 21          /* virtio-blk IDs are 20 bytes */
#define VOL_PATH_MAX 512
#define VOLUME_WAIT_MS 5000    /* as for the root disks: devices may register late */

struct volume {
	char serial[SERIAL_MAX];
	int read_only;
	char path[VOL_PATH_MAX];
	int mounted;
};

static struct volume volumes[MAX_VOLUMES];
static int nvolumes;

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

/* Decode %XX; refuse NUL, a relative path, and empty, "." or ".." components (the host
 * checks the same; the agent does not rely on it). */
static const char *decode_path(const char *in, size_t len, char *out, size_t outlen)
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
			return "path too long";
		out[o++] = (char)c;
	}
	out[o] = 0;
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

/* One entry "SERIAL:MODE:PATH" of length len. NULL, or what is wrong with it. */
static const char *parse_entry(const char *e, size_t len, struct volume *v)
{
	const char *c1 = memchr(e, ':', len);
	const char *c2 = c1 ? memchr(c1 + 1, ':', len - (size_t)(c1 + 1 - e)) : NULL;
	if (!c2)
		return "not SERIAL:MODE:PATH";
	size_t slen = (size_t)(c1 - e), mlen = (size_t)(c2 - c1 - 1);
	if (slen == 0 || slen >= sizeof(v->serial))
		return "bad serial";
	memcpy(v->serial, e, slen);
	v->serial[slen] = 0;
	if (mlen == 2 && memcmp(c1 + 1, "rw", 2) == 0)
		v->read_only = 0;
	else if (mlen == 2 && memcmp(c1 + 1, "ro", 2) == 0)
		v->read_only = 1;
	else
		return "mode is not rw or ro";
	return decode_path(c2 + 1, len - (size_t)(c2 + 1 - e), v->path, sizeof(v->path));
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
	log_msg("agent: FATAL: volume %s: %s", v->serial, reason);
	return -1;
}

static int mount_volume(struct volume *v)
{
	char dev[64], what[VOL_PATH_MAX];
	if (find_device(v->serial, dev, sizeof(dev)) < 0)
		return fatal(v, "no disk with serial %s appeared%s", v->serial, "");
	int fd = open_mount_point(v->path, what, sizeof(what));
	if (fd < 0) {
		const char *why = errno == ELOOP ? "is a symbolic link (not followed)"
				 : errno == ENOTDIR ? "is not a directory" : strerror(errno);
		return fatal(v, "mount point %s %s", what, why);
	}
	char target[64];
	snprintf(target, sizeof(target), "/proc/self/fd/%d", fd);
	unsigned long flags = MS_NODEV | MS_NOATIME | (v->read_only ? MS_RDONLY : 0);
	int rc = mount(dev, target, "ext4", flags, NULL);
	if (rc < 0 && v->read_only && errno == EROFS) {
		/* A read-only disk whose journal needs replaying (its last writer crashed) can
		 * only be mounted without the journal: what was committed before the crash. */
		log_msg("agent: volume %s needs journal recovery; mounting it read-only "
			"without replaying the journal", v->serial);
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

int volumes_mount(const char *spec)
{
	nvolumes = 0;
	for (const char *p = spec; *p;) {
		const char *end = strchrnul(p, ',');
		if (nvolumes == MAX_VOLUMES) {
			log_msg("agent: FATAL: volume -: more than %d volumes", MAX_VOLUMES);
			return -1;
		}
		struct volume *v = &volumes[nvolumes];
		memset(v, 0, sizeof(*v));
		const char *err = parse_entry(p, (size_t)(end - p), v);
		if (err) {
			if (!v->serial[0])
				snprintf(v->serial, sizeof(v->serial), "-");
			return fatal(v, "vmm.vol entry: %s%s", err, "");
		}
		nvolumes++;
		if (mount_volume(v) < 0)
			return -1;
		p = *end ? end + 1 : end;
	}
	return 0;
}

void volumes_unmount(void)
{
	/* Children first; a busy one (it should not be: everything was killed) is at least
	 * made read-only, so its journal is clean. */
	for (int i = nvolumes - 1; i >= 0; i--) {
		struct volume *v = &volumes[i];
		if (!v->mounted)
			continue;
		if (umount2(v->path, UMOUNT_NOFOLLOW) < 0) {
			log_msg("agent: unmounting volume %s: %s; remounting read-only", v->serial,
				strerror(errno));
			mount(NULL, v->path, NULL, MS_REMOUNT | MS_RDONLY, NULL);
		}
		v->mounted = 0;
	}
}
