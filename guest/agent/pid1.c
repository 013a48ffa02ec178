/*
 * PID-1 duties: the early mounts, the root file system (an overlay of the read-only image
 * disk, or of a host directory shared over virtio-fs, and the sandbox's writable disk, or
 * a tmpfs upper layer), the switch into it,
 * hostname, and the orderly end (kill everything, sync, unmount, reboot).
 *
 * Settings come from the kernel command line (the host's engine writes them), because
 * they are needed before any host connection exists:
 *
 *   vmm.root=/dev/vda     image disk, mounted read-only ("none": stay in the initramfs);
 *                         with vmm.rootfstype=virtiofs, the tag of a virtio-fs device
 *                         instead (the host shares a directory as "vmm-root")
 *   vmm.rootfstype=auto   erofs | ext4 | auto (try erofs, then ext4) | virtiofs
 *   vmm.data=/dev/vdb     writable disk, ext4 ("none", or a missing device: tmpfs upper)
 *   vmm.port=1024         vsock port the agent listens on
 *   vmm.dial=1024         once listening, also connect to this vsock port of the host
 *                         (CID 2) and serve that connection too, READY first: the host
 *                         learns the agent is up the moment it is (absent: listen only)
 *   vmm.hostname=sandbox  hostname
 *   vmm.net=...           eth0, resolv.conf, hosts (net.c); absent: only lo
 *   vmm.vol=...           volumes: extra ext4 disks mounted in the new root (volumes.c)
 *   vmm.fs=...            shared host dirs (virtio-fs) mounted likewise (volumes.c)
 *   vmm.debug=1           log each step on the console
 *   page_reporting.page_reporting_order=N   the kernel's own parameter, applied again
 *                         (see apply_page_reporting_order)
 *
 * The kernel does not pass dotted parameters to init, so they are read from /proc/cmdline.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <net/if.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#if defined(__x86_64__) || defined(__i386__)
#include <sys/io.h>
#endif

#include "agent.h"

#define BOOT_TIMER_PORT 0x440
#define BOOT_TIMER_INIT_STARTED 123
#define DEFAULT_VSOCK_PORT 1024

static int old_root_fd = -1;
static int vsock_port = DEFAULT_VSOCK_PORT;
static int dial_port = -1;
static int have_overlay;
static char hostname[256] = "sandbox", net_spec[256];
static int net_files_written;
static char transport[128] = "vsock";

void log_msg(const char *fmt, ...)
{
	char line[768];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(line, sizeof(line) - 1, fmt, ap);
	va_end(ap);
	if (n < 0)
		return;
	if ((size_t)n > sizeof(line) - 2)
		n = (int)sizeof(line) - 2;
	line[n++] = '\n';
	ssize_t w = write(2, line, (size_t)n); /* one write: the line stays whole */
	(void)w;
}

int pid1_vsock_port(void) { return vsock_port; }

int pid1_dial_port(void) { return dial_port; }

const char *pid1_transport(void) { return transport; }

static void mark_init_started(void)
{
#if defined(__x86_64__) || defined(__i386__)
	/* The VMM's boot timer: the byte 123 on port 0x440 marks "init started". */
	if (ioperm(BOOT_TIMER_PORT, 1, 1) == 0)
		outb(BOOT_TIMER_INIT_STARTED, BOOT_TIMER_PORT);
#endif
}

/* fds 0-2 must be open before any other fd is: a transport fd landing on 2 would get
 * our log lines in its byte stream. Without a console, /dev/null stands in. */
static void ensure_console(void)
{
	if (fcntl(2, F_GETFD) != -1)
		return;
	int fd = open("/dev/console", O_RDWR | O_NOCTTY);
	if (fd < 0)
		fd = open("/dev/null", O_RDWR);
	if (fd < 0)
		return;
	for (int i = 0; i < 3; i++)
		dup2(fd, i);
	if (fd > 2)
		close(fd);
}

/* ---- the command line ------------------------------------------------------------------- */

static char cmdline[4096];

static void read_cmdline(void)
{
	int fd = open("/proc/cmdline", O_RDONLY | O_CLOEXEC);
	ssize_t n = fd >= 0 ? read(fd, cmdline, sizeof(cmdline) - 1) : 0;
	if (fd >= 0)
		close(fd);
	cmdline[n > 0 ? n : 0] = 0;
}

/* The value of key= on the command line (the last one wins), or def. */
static const char *param(const char *key, const char *def, char *out, size_t outlen)
{
	size_t klen = strlen(key);
	const char *found = NULL;
	size_t flen = 0;
	for (const char *p = cmdline; *p;) {
		while (*p == ' ' || *p == '\n')
			p++;
		const char *end = p + strcspn(p, " \n");
		if ((size_t)(end - p) > klen && strncmp(p, key, klen) == 0 && p[klen] == '=') {
			found = p + klen + 1;
			flen = (size_t)(end - found);
		}
		p = end;
	}
	if (!found)
		return def;
	if (flen >= outlen)
		flen = outlen - 1;
	memcpy(out, found, flen);
	out[flen] = 0;
	return out;
}

/* ---- mounts ------------------------------------------------------------------------------ */

static int do_mount(const char *src, const char *dst, const char *type, unsigned long flags,
		    const char *data)
{
	mkdir(dst, 0755);
	if (mount(src, dst, type, flags, data) == 0) {
		if (cfg.debug)
			log_msg("agent: mounted %s (%s) on %s", src, type ? type : "-", dst);
		return 0;
	}
	int e = errno;
	if (e != EBUSY) /* devtmpfs may be mounted by the kernel already */
		log_msg("agent: mount %s (%s) on %s: %s", src, type ? type : "-", dst, strerror(e));
	errno = e;
	return -1;
}

static void early_mounts(void)
{
	do_mount("devtmpfs", "/dev", "devtmpfs", MS_NOSUID, "mode=0755");
	ensure_console();
	do_mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
	do_mount("sysfs", "/sys", "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
}

/* Disks may register a moment after init starts (like the kernel's rootwait): poll for
 * the device node for up to DEVICE_WAIT_MS before giving up. */
#define DEVICE_WAIT_MS 5000

static int wait_for_device(const char *dev)
{
	struct stat st;
	for (int waited = 0; waited < DEVICE_WAIT_MS; waited += 2) {
		if (stat(dev, &st) == 0)
			return 0;
		struct timespec ts = {0, 2 * 1000 * 1000};
		nanosleep(&ts, NULL);
	}
	return stat(dev, &st);
}

/* A host directory as the lower layer: `root=TAG rootfstype=virtiofs`, as the kernel's own
 * virtio-fs root takes it. Read-only here, and the host's virtiofsd refuses writes too;
 * overlayfs accepts a virtio-fs lower (a remote file system may be lower, never upper).
 * The device normally registers before init runs; a tag not (yet) known fails with
 * EINVAL, so that is retried as wait_for_device() does for disks. */
static int mount_shared_root(const char *tag)
{
	int e = 0;
	for (int waited = 0; waited < DEVICE_WAIT_MS; waited += 10) {
		if (mount(tag, "/mnt/image", "virtiofs", MS_RDONLY, NULL) == 0) {
			if (cfg.debug)
				log_msg("agent: mounted root directory %s (virtiofs) on /mnt/image", tag);
			return 0;
		}
		e = errno;
		if (e != EINVAL && e != ENODEV && e != ENOENT)
			break;
		struct timespec ts = {0, 10 * 1000 * 1000};
		nanosleep(&ts, NULL);
	}
	/* The host's BootFailed quotes this line (vmm/sandbox/root_dir.py). */
	log_msg("agent: root directory %s: %s", tag,
		e == EINVAL ? "no virtio-fs device with this tag" : strerror(e));
	return -1;
}

static int mount_image(const char *dev, const char *type)
{
	if (strcmp(type, "virtiofs") == 0)
		return mount_shared_root(dev);
	if (wait_for_device(dev) < 0) {
		log_msg("agent: image disk %s did not appear", dev);
		return -1;
	}
	step_mark("image_dev");
	if (strcmp(type, "auto") != 0)
		return do_mount(dev, "/mnt/image", type, MS_RDONLY, NULL);
	if (mount(dev, "/mnt/image", "erofs", MS_RDONLY, NULL) == 0)
		return 0;
	return do_mount(dev, "/mnt/image", "ext4", MS_RDONLY, NULL);
}

static int mount_data(const char *dev)
{
	int use_disk = strcmp(dev, "none") != 0;
	if (use_disk && wait_for_device(dev) < 0) {
		log_msg("agent: writable disk %s is missing; changes stay in memory", dev);
		use_disk = 0;
	}
	if (use_disk ? do_mount(dev, "/mnt/data", "ext4", MS_NOATIME, NULL)
		     : do_mount("tmpfs", "/mnt/data", "tmpfs", 0, "mode=0755"))
		return -1;
	mkdir("/mnt/data/upper", 0755);
	mkdir("/mnt/data/work", 0755);
	return 0;
}

/* Move the overlay to / (rootfs cannot be pivot_root'ed away, hence MS_MOVE + chroot),
 * taking /dev, /proc and /sys along. The old root stays reachable through a CLOEXEC fd
 * so shutdown can unmount the disks cleanly. */
static int switch_root(void)
{
	static const char *const moved[] = {"/dev", "/proc", "/sys"};
	char dst[64];
	for (size_t i = 0; i < sizeof(moved) / sizeof(moved[0]); i++) {
		snprintf(dst, sizeof(dst), "/mnt/root%s", moved[i]);
		mkdir(dst, 0755);
		if (mount(moved[i], dst, NULL, MS_MOVE, NULL) < 0)
			log_msg("agent: moving %s: %s", moved[i], strerror(errno));
	}
	old_root_fd = open("/", O_PATH | O_DIRECTORY | O_CLOEXEC);
	if (chdir("/mnt/root") < 0 || mount(".", "/", NULL, MS_MOVE, NULL) < 0 ||
	    chroot(".") < 0 || chdir("/") < 0) {
		log_msg("agent: switching root: %s", strerror(errno));
		return -1;
	}
	return 0;
}

static int setup_root(void)
{
	char root[256], type[32], data[256];
	const char *dev = param("vmm.root", "/dev/vda", root, sizeof(root));
	if (strcmp(dev, "none") == 0)
		return 0; /* serve from the initramfs itself (tests, rescue) */
	mkdir("/mnt", 0755); /* the initramfs holds only /init, /dev, /proc and /sys */
	mkdir("/mnt/image", 0755);
	if (mount_image(dev, param("vmm.rootfstype", "auto", type, sizeof(type))) < 0)
		return -1;
	step_mark("image");
	if (mount_data(param("vmm.data", "/dev/vdb", data, sizeof(data))) < 0)
		return -1;
	if (net_spec[0])
		net_files_written = net_write_files(net_spec, hostname, "/mnt/data/upper") == 0;
	step_mark("data");
	if (do_mount("overlay", "/mnt/root", "overlay", 0,
		     "lowerdir=/mnt/image,upperdir=/mnt/data/upper,workdir=/mnt/data/work") < 0)
		return -1;
	step_mark("overlay");
	have_overlay = 1;
	int rc = switch_root();
	step_mark("switch_root");
	return rc;
}

/* The free-page-reporting balloon (qemu engine) reports free blocks of 2^order pages to the
 * host, which drops them. The kernel takes page_reporting.page_reporting_order= from its
 * command line but the balloon driver overwrites it with the pageblock order (4 MiB in our
 * kernel) when it registers, and blocks that large rarely come free on a small guest: the
 * kernel's freed init sections (~3.5 MiB in pieces) never got reported. Setting it again
 * through sysfs, after the driver registered, makes them reportable. */
static void apply_page_reporting_order(void)
{
	char buf[16];
	const char *order = param("page_reporting.page_reporting_order", NULL, buf, sizeof(buf));
	if (!order)
		return;
	int fd = open("/sys/module/page_reporting/parameters/page_reporting_order",
		      O_WRONLY | O_CLOEXEC);
	if (fd < 0 || write(fd, order, strlen(order)) < 0)
		log_msg("agent: page_reporting_order=%s: %s", order, strerror(errno));
	if (fd >= 0)
		close(fd);
}

static void later_mounts(void)
{
	do_mount("devpts", "/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC, "gid=5,mode=620,ptmxmode=666");
	do_mount("tmpfs", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777");
	do_mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777");
	/* Not a mount, but it wants the command line read and /sys in its final place. */
	apply_page_reporting_order();
}

static void loopback_up(void)
{
	int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return;
	struct ifreq ifr = {0};
	snprintf(ifr.ifr_name, sizeof(ifr.ifr_name), "lo");
	if (ioctl(fd, SIOCGIFFLAGS, &ifr) == 0) {
		ifr.ifr_flags |= IFF_UP;
		ioctl(fd, SIOCSIFFLAGS, &ifr);
	}
	close(fd);
}

void pid1_setup(void)
{
	mark_init_started();
	early_mounts();
	read_cmdline();
	step_mark("early_mounts");
	char buf[256];
	cfg.debug = param("vmm.debug", NULL, buf, sizeof(buf)) != NULL;
	const char *port = param("vmm.port", NULL, buf, sizeof(buf));
	if (port)
		vsock_port = atoi(port);
	const char *dial = param("vmm.dial", NULL, buf, sizeof(buf));
	if (dial)
		dial_port = atoi(dial);
	param("vmm.transport", "vsock", transport, sizeof(transport));
	param("vmm.hostname", "sandbox", hostname, sizeof(hostname));
	param("vmm.net", "", net_spec, sizeof(net_spec));
	if (setup_root() < 0) {
		log_msg("agent: FATAL: cannot set up the root file system; powering off");
		pid1_poweroff();
	}
	later_mounts();
	step_mark("later_mounts");
	/* After /tmp's tmpfs, so a volume may be mounted there too; a volume that cannot be
	 * mounted is fatal, as a missing root is: the first exec must see every volume. */
	static char vols[2048], shared[2048];
	const char *vol_spec = param("vmm.vol", NULL, vols, sizeof(vols));
	const char *fs_spec = param("vmm.fs", NULL, shared, sizeof(shared));
	if ((vol_spec || fs_spec) && volumes_mount(vol_spec, fs_spec) < 0) {
		log_msg("agent: FATAL: cannot mount the volumes; powering off");
		pid1_poweroff();
	}
	step_mark("volumes");
	sethostname(hostname, strlen(hostname));
	loopback_up();
	step_mark("lo");
	if (net_spec[0])
		net_setup(net_spec, hostname, net_files_written);
	step_mark("net");
	setenv("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", 1);
}

/* The root mount read-only, for a container whose root.readonly is set: asked for in CONFIG
 * once the host has written what it must (copied files, made mount points), as runc
 * remounts the root read-only after its mounts. A bind remount changes this mount only:
 * /dev, /proc, /sys, /tmp and the volumes and shared dirs on top keep their own modes, and
 * the overlay's upper layer stays writable underneath for shutdown's sync. The mount's
 * other flags are carried over, since a remount sets them all. */
int pid1_root_readonly(void)
{
	if (!cfg.pid1)
		return EPERM;
	struct statvfs st;
	if (statvfs("/", &st) < 0)
		return errno;
	unsigned long flags = MS_REMOUNT | MS_BIND | MS_RDONLY;
	static const unsigned long map[][2] = {
		{ST_NOSUID, MS_NOSUID}, {ST_NODEV, MS_NODEV}, {ST_NOEXEC, MS_NOEXEC},
		{ST_NOATIME, MS_NOATIME}, {ST_NODIRATIME, MS_NODIRATIME}, {ST_RELATIME, MS_RELATIME}};
	for (size_t i = 0; i < sizeof(map) / sizeof(map[0]); i++)
		if (st.f_flag & map[i][0])
			flags |= map[i][1];
	if (mount(NULL, "/", NULL, flags, NULL) < 0)
		return errno;
	if (cfg.debug)
		log_msg("agent: the root is read-only");
	return 0;
}

/* ---- the end ------------------------------------------------------------------------------ */

static void kill_everything(void)
{
	kill(-1, SIGTERM);
	/* Up to one second for a graceful exit, then SIGKILL. Every user process is our
	 * descendant (orphans are re-parented to PID 1), so ECHILD means none is left;
	 * kill(-1, 0) cannot tell, as it also succeeds on kernel threads. */
	for (int i = 0; i < 100; i++) {
		pid_t r;
		while ((r = waitpid(-1, NULL, WNOHANG)) > 0)
			;
		if (r < 0 && errno == ECHILD)
			break;
		struct timespec ts = {0, 10 * 1000 * 1000};
		nanosleep(&ts, NULL);
	}
	kill(-1, SIGKILL);
	while (waitpid(-1, NULL, WNOHANG) > 0)
		;
}

static void unmount_all(void)
{
	volumes_unmount(); /* for a clean journal, before the root they sit in goes */
	umount2("/tmp", MNT_DETACH);
	umount2("/dev/shm", MNT_DETACH);
	umount2("/dev/pts", MNT_DETACH);
	if (!have_overlay || old_root_fd < 0)
		return;
	/* Detach the overlay (our root), step back into the initramfs, then unmount the
	 * disks for real so the ext4 journal is clean; remount read-only if busy. */
	if (fchdir(old_root_fd) < 0)
		return;
	umount2("/", MNT_DETACH);
	if (chroot(".") < 0)
		return;
	sync();
	if (umount("/mnt/data") < 0 && errno != EINVAL) {
		log_msg("agent: unmounting the writable disk: %s; remounting read-only", strerror(errno));
		mount(NULL, "/mnt/data", NULL, MS_REMOUNT | MS_RDONLY, NULL);
	}
	umount("/mnt/image");
}

void pid1_poweroff(void)
{
	kill_everything();
	sync();
	unmount_all();
	sync();
	/* With reboot=k or reboot=t and a VMM that treats a reset as the end, this ends
	 * the VM (a power-off needs ACPI, which the guest does not have). */
	reboot(RB_AUTOBOOT);
	log_msg("agent: reboot: %s", strerror(errno));
	for (;;)
		pause();
}
