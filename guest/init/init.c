/*
 * The test init: PID 1 of the test initramfs (vmm.kernel.test_initramfs()).
 *
 * It marks "init started" on the boot-timer port (the byte 123 to I/O port 0x440),
 * prints one line the engines and tests look for,
 *
 *     READY boottime_ns=<CLOCK_BOOTTIME> cpus=<online CPUs> [say=<text>]
 *
 * then ends the VM. What it does at the end comes from the kernel command line:
 *
 *     vmmtest.end=reboot    reboot(RB_AUTOBOOT) (default): with reboot=k/reboot=t and
 *                           a VMM that treats a reset as the end, the VM stops
 *     vmmtest.end=poweroff  reboot(RB_POWER_OFF)
 *     vmmtest.end=panic     exit, so the kernel panics ("Attempted to kill init!")
 *     vmmtest.end=hang      sleep forever (for host-stop tests)
 *     vmmtest.say=<text>    add say=<text> to the READY line (a marker for tests)
 *
 * Everything here is static and freestanding enough for musl: no libc start-up
 * assumptions beyond a working stack, no files besides /dev/console and /proc.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/io.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define BOOT_TIMER_PORT 0x440
#define BOOT_TIMER_INIT_STARTED 123

static void mark_init_started(void)
{
	/* ioperm needs CAP_SYS_RAWIO, which PID 1 has; if it fails the VMM simply sees
	 * no boot-timer mark, and the READY line still comes. */
	if (ioperm(BOOT_TIMER_PORT, 1, 1) == 0)
		outb(BOOT_TIMER_INIT_STARTED, BOOT_TIMER_PORT);
}

static void ensure_console(void)
{
	/* The kernel gives init /dev/console as fds 0-2 when the initramfs has it. */
	if (fcntl(1, F_GETFD) != -1)
		return;
	int fd = open("/dev/console", O_RDWR | O_NOCTTY);
	if (fd < 0)
		return;
	dup2(fd, 0);
	dup2(fd, 1);
	dup2(fd, 2);
	if (fd > 2)
		close(fd);
}

/* The value of `key=` on the kernel command line, copied into out; 0 if absent. */
static int cmdline_value(const char *cmdline, const char *key, char *out, size_t outlen)
{
	size_t klen = strlen(key);
	const char *p = cmdline;
	while (*p) {
		while (*p == ' ' || *p == '\n')
			p++;
		const char *end = p;
		while (*end && *end != ' ' && *end != '\n')
			end++;
		if ((size_t)(end - p) > klen && strncmp(p, key, klen) == 0 && p[klen] == '=') {
			size_t n = (size_t)(end - p) - klen - 1;
			if (n >= outlen)
				n = outlen - 1;
			memcpy(out, p + klen + 1, n);
			out[n] = 0;
			return 1;
		}
		p = end;
	}
	return 0;
}

static void read_cmdline(char *buf, size_t len)
{
	buf[0] = 0;
	int fd = open("/proc/cmdline", O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return;
	ssize_t n = read(fd, buf, len - 1);
	close(fd);
	buf[n > 0 ? n : 0] = 0;
}

static int online_cpus(void)
{
	cpu_set_t set;
	if (sched_getaffinity(0, sizeof(set), &set) != 0)
		return -1;
	return CPU_COUNT(&set);
}

static void end_vm(const char *how)
{
	if (strcmp(how, "hang") == 0) {
		for (;;)
			pause();
	}
	if (strcmp(how, "panic") == 0)
		exit(3); /* PID 1 exiting makes the kernel panic */
	sync();
	reboot(strcmp(how, "poweroff") == 0 ? RB_POWER_OFF : RB_AUTOBOOT);
	/* reboot() returns only on error. */
	dprintf(2, "init: reboot failed: %s\n", strerror(errno));
	for (;;)
		pause();
}

int main(void)
{
	mark_init_started();

	struct timespec ts;
	clock_gettime(CLOCK_BOOTTIME, &ts);
	long long boottime_ns = (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;

	mkdir("/dev", 0755);
	mount("devtmpfs", "/dev", "devtmpfs", 0, NULL); /* EBUSY if already mounted: fine */
	ensure_console();
	mkdir("/proc", 0755);
	mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);

	char cmdline[4096], say[256] = "", end[32] = "reboot";
	read_cmdline(cmdline, sizeof(cmdline));
	cmdline_value(cmdline, "vmmtest.end", end, sizeof(end));
	int have_say = cmdline_value(cmdline, "vmmtest.say", say, sizeof(say));

	char line[512];
	int n = snprintf(line, sizeof(line), "READY boottime_ns=%lld cpus=%d%s%s\n", boottime_ns,
			 online_cpus(), have_say ? " say=" : "", have_say ? say : "");
	/* One write, so the line reaches the console whole. */
	if (write(1, line, (size_t)n) < 0)
		return 1;

	end_vm(end);
	return 0;
}
