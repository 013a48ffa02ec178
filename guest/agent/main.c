/*
 * Entry point: decide the role (PID 1 in a VM, or an ordinary process in host tests),
 * open the transport, and run the loop.
 *
 *   As PID 1 (argv is ignored: the kernel puts stray command-line words there):
 *     PID-1 duties (pid1.c), then listen on AF_VSOCK port vmm.port (default 1024), and
 *     with vmm.dial=P also connect to the host's port P and serve that connection
 *     (the host then needs no polling to learn when the agent is up).
 *   Otherwise:
 *     agent --unix PATH      listen on a Unix socket (many connections, runs until killed
 *                            or asked to shut down)
 *     agent --fd N           serve one inherited, connected stream socket; exit at its end
 *     agent --vsock PORT     listen on AF_VSOCK
 *     --hostname NAME        sethostname first (needs CAP_SYS_ADMIN in the UTS namespace)
 *   No mounts, no pivot, no power-off: shutdown just ends the process.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <termios.h>
#include <unistd.h>

#include "agent.h"

#ifndef AF_VSOCK
#define AF_VSOCK 40
#endif
#define VMADDR_CID_ANY 0xffffffffu
#define VMADDR_CID_HOST 2u

/* <linux/vm_sockets.h> is not among musl's headers; the layout is the kernel ABI. */
struct sockaddr_vm {
	unsigned short svm_family;
	unsigned short svm_reserved1;
	unsigned int svm_port;
	unsigned int svm_cid;
	unsigned char svm_flags;
	unsigned char svm_zero[3];
};

struct config cfg;

static int listen_vsock(int port)
{
	int fd = socket(AF_VSOCK, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	struct sockaddr_vm a = {.svm_family = AF_VSOCK, .svm_port = (unsigned)port,
				.svm_cid = VMADDR_CID_ANY};
	if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof(a)) < 0 || listen(fd, 16) < 0) {
		log_msg("agent: vsock port %d: %s", port, strerror(errno));
		return -1;
	}
	return fd;
}

/* A connection to the host's vsock port, or -1 (logged): the host may not listen there
 * (an older host), and the agent then just waits to be connected to. */
static int dial_vsock(int port)
{
	int fd = socket(AF_VSOCK, SOCK_STREAM | SOCK_CLOEXEC, 0);
	struct sockaddr_vm a = {.svm_family = AF_VSOCK, .svm_port = (unsigned)port,
				.svm_cid = VMADDR_CID_HOST};
	if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof(a)) < 0) {
		log_msg("agent: connecting to the host's vsock port %d: %s", port, strerror(errno));
		if (fd >= 0)
			close(fd);
		return -1;
	}
	fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
	return fd;
}

static int listen_unix(const char *path)
{
	struct sockaddr_un a = {.sun_family = AF_UNIX};
	if (strlen(path) >= sizeof(a.sun_path)) {
		log_msg("agent: socket path too long: %s", path);
		return -1;
	}
	strcpy(a.sun_path, path);
	unlink(path);
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof(a)) < 0 || listen(fd, 16) < 0) {
		log_msg("agent: unix socket %s: %s", path, strerror(errno));
		return -1;
	}
	return fd;
}

/* A serial line as the one connection: raw mode, so every byte passes unchanged. */
static int open_serial(const char *path)
{
	int fd = open(path, O_RDWR | O_NOCTTY | O_CLOEXEC | O_NONBLOCK);
	struct termios t;
	if (fd < 0 || tcgetattr(fd, &t) < 0) {
		log_msg("agent: serial transport %s: %s", path, strerror(errno));
		if (fd >= 0)
			close(fd);
		return -1;
	}
	cfmakeraw(&t);
	tcsetattr(fd, TCSANOW, &t);
	/* The line is likely the console too: our log lines would corrupt the stream. */
	int null = open("/dev/null", O_RDWR | O_CLOEXEC);
	if (null >= 0) {
		dup2(null, 1);
		dup2(null, 2);
		close(null);
	}
	return fd;
}

static void usage(void)
{
	log_msg("usage: agent (--unix PATH | --fd N | --vsock PORT) [--hostname NAME]");
	exit(2);
}

/* The child-side dup2() calls assume fds 0-2 are taken, so pipes never land there. */
static void ensure_std_fds(void)
{
	for (int i = 0; i < 3; i++)
		if (fcntl(i, F_GETFD) < 0 && open("/dev/null", O_RDWR) != i)
			return;
}

static int host_mode(int argc, char **argv, int *single_fd)
{
	const char *unix_path = NULL, *hostname = NULL;
	int vsock = -1;
	for (int i = 1; i < argc; i++) {
		if (i + 1 >= argc)
			usage();
		if (strcmp(argv[i], "--unix") == 0)
			unix_path = argv[++i];
		else if (strcmp(argv[i], "--fd") == 0)
			*single_fd = atoi(argv[++i]);
		else if (strcmp(argv[i], "--vsock") == 0)
			vsock = atoi(argv[++i]);
		else if (strcmp(argv[i], "--hostname") == 0)
			hostname = argv[++i];
		else
			usage();
	}
	if (hostname && sethostname(hostname, strlen(hostname)) < 0)
		log_msg("agent: sethostname %s: %s", hostname, strerror(errno));
	/* Orphans of our children come to us, as they would to PID 1. */
	prctl(PR_SET_CHILD_SUBREAPER, 1);
	if (*single_fd >= 0) {
		fcntl(*single_fd, F_SETFD, FD_CLOEXEC);
		fcntl(*single_fd, F_SETFL, fcntl(*single_fd, F_GETFL) | O_NONBLOCK);
		return -1;
	}
	if (unix_path)
		return listen_unix(unix_path);
	if (vsock >= 0)
		return listen_vsock(vsock);
	usage();
	return -1;
}

int main(int argc, char **argv)
{
	cfg.agent_start_ns = boottime_ns();
	cfg.pid1 = getpid() == 1;
	int listen_fd, single_fd = -1, dialed_fd = -1;
	if (cfg.pid1) {
		pid1_setup();
		const char *tr = pid1_transport();
		if (strncmp(tr, "serial:", 7) == 0) {
			listen_fd = -1;
			single_fd = open_serial(tr + 7);
		} else {
			listen_fd = listen_vsock(pid1_vsock_port());
		}
		if (listen_fd < 0 && single_fd < 0) {
			log_msg("agent: FATAL: no transport (%s); powering off", tr);
			pid1_poweroff();
		}
	} else {
		listen_fd = host_mode(argc, argv, &single_fd);
		if (listen_fd < 0 && single_fd < 0)
			return 1;
	}
	ensure_std_fds();
	signal(SIGPIPE, SIG_IGN);
	cfg.ready_ns = boottime_ns();
	step_mark("ready");
	if (cfg.pid1 && listen_fd >= 0 && pid1_dial_port() >= 0)
		dialed_fd = dial_vsock(pid1_dial_port());
	if (cfg.debug) {
		step_mark("dialed");
		steps_log();
	}
	loop_run(listen_fd, single_fd, dialed_fd);
	if (cfg.pid1)
		pid1_poweroff(); /* the one serial connection ended: nothing left to serve */
	return 0;
}
