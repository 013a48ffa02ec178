/*
 * The guest agent: PID 1 of the sandbox VM, serving exec and file requests from the host
 * over one or more stream connections (AF_VSOCK in a VM; a Unix socket or an inherited
 * fd in host tests). The wire format is described in PROTOCOL.md next to this file.
 *
 * Single-threaded: one poll() loop (loop.c) owns every fd. Nothing here blocks for long
 * except fork+exec (the child reports exec failure through a CLOEXEC pipe, which the
 * parent reads before going on) and file system calls on the local disk.
 */
#ifndef AGENT_H
#define AGENT_H

#include <dirent.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* ---- wire constants (PROTOCOL.md is the reference) ---------------------------------- */

#define PROTO_VERSION 1
#define HDR_LEN 12
#define MAX_PAYLOAD (1u << 20)      /* a frame announcing more closes the connection */
#define WINDOW (256u * 1024)        /* unacknowledged bytes per session and direction */
#define CHUNK (64u * 1024)          /* largest data frame the agent produces */
#define OUT_HIGH_WATER (1u << 20)   /* stop producing session data above this backlog */
#define OUT_HARD_LIMIT (8u << 20)   /* stop reading requests above this backlog */
#define MAX_CONNS 16
#define MAX_SESSIONS 1024           /* per connection */
#define MAX_ARGS 4096               /* argv or env entries in one request */
#define MAX_RLIMITS 32
#define MAX_GROUPS_REQ 1024         /* supplementary groups in one EXEC (GROUPS field) */
#define CAP_LAST 40                 /* CAP_CHECKPOINT_RESTORE: the last capability known */

enum msg_type {
	/* guest -> host, session 0 */
	T_READY = 0x01,
	/* requests: the first frame of a new session (host -> guest) */
	T_EXEC = 0x10,
	T_FS_READ = 0x20,
	T_FS_WRITE = 0x21,
	T_FS_STAT = 0x22,
	T_FS_LIST = 0x23,
	T_FS_MKDIR = 0x24,
	T_FS_REMOVE = 0x25,
	T_CONFIG = 0x30,
	T_SHUTDOWN = 0x31,
	T_PING = 0x32,
	/* within a session */
	T_STARTED = 0x11,
	T_STDIN = 0x12,
	T_STDOUT = 0x13,
	T_STDERR = 0x14,
	T_EXITED = 0x15,
	T_FAILED = 0x16,
	T_SIGNAL = 0x17,
	T_RESIZE = 0x18,
	T_DATA = 0x26,
	T_ENTRIES = 0x27,
	T_STAT = 0x28,
	T_DONE = 0x40,
	T_ERROR = 0x41,
	T_CREDIT = 0x42,
};

enum tlv_tag {
	G_ARGV = 1, G_ENV = 2, G_CWD = 3, G_USER = 4, G_TTY = 5, G_ROWS = 6, G_COLS = 7,
	G_RLIMIT = 8, G_PID = 9, G_CODE = 10, G_SIGNAL = 11, G_ERRNO = 12, G_KIND = 13,
	G_MESSAGE = 14, G_PATH = 15, G_OFFSET = 16, G_LENGTH = 17, G_MODE = 18, G_SIZE = 19,
	G_MTIME_NS = 20, G_UID = 21, G_GID = 22, G_NLINK = 23, G_NAME = 24, G_TARGET = 25,
	G_BYTES = 26, G_HOSTNAME = 27, G_AGENT_START_NS = 28, G_READY_NS = 29,
	G_REALTIME_NS = 30, G_VERSION = 31, G_PARENTS = 32, G_RECURSIVE = 33, G_GROUP = 34,
	G_APPEND = 35, G_CORE = 36, G_PID1 = 37, G_MAX_PAYLOAD = 38, G_WINDOW = 39,
	G_NOW_NS = 40, G_WORKDIR = 41, G_GROUPS = 42, G_UMASK = 43, G_NO_NEW_PRIVS = 44,
	G_CAPS = 45, G_READONLY_ROOT = 46, G_ROOT = 47, G_MOUNT = 48, G_ROOT_READONLY = 49,
	G_JOIN = 50,
};

/* ---- byte buffers and frames (proto.c) ----------------------------------------------- */

struct buf {
	uint8_t *data;
	size_t off, len, cap; /* bytes [off, len) are pending */
	int failed;           /* an allocation failed: the owner must give up */
};

int buf_reserve(struct buf *b, size_t more);
void buf_put(struct buf *b, const void *p, size_t n);
void buf_consumed(struct buf *b, size_t n);
void buf_free(struct buf *b);
static inline size_t buf_pending(const struct buf *b) { return b->len - b->off; }

void frame_header(uint8_t *h, uint32_t len, uint32_t session, uint16_t type);
size_t frame_begin(struct buf *b, uint32_t session, uint16_t type);
void frame_end(struct buf *b, size_t start);
void put_tlv(struct buf *b, uint16_t tag, const void *val, uint32_t len);
void put_u64(struct buf *b, uint16_t tag, uint64_t v);
void put_str(struct buf *b, uint16_t tag, const char *s);

struct tlv {
	const uint8_t *p;
	size_t left;
};
/* 1: a field in tag, val, len; 0: end; -1: malformed (truncated field). */
int tlv_next(struct tlv *r, uint16_t *tag, const uint8_t **val, uint32_t *len);
int tlv_u64(const uint8_t *val, uint32_t len, uint64_t *out);
char *tlv_strdup(const uint8_t *val, uint32_t len); /* NULL if it holds a NUL or on OOM */

uint16_t get_le16(const uint8_t *p);
uint32_t get_le32(const uint8_t *p);
void set_le32(uint8_t *p, uint32_t v);

/* ---- the exec user (user.c) ----------------------------------------------------------- */

#define MAX_GROUPS 64 /* supplementary groups found in /etc/group for a user name */

struct cred {
	int set;
	uid_t uid;
	gid_t gid;
	gid_t groups[MAX_GROUPS];
	int ngroups;
	char home[256];
	char name[64];
};

/* 0, or an errno with why[] saying what was not found */
int resolve_user(const char *spec, struct cred *cr, char *why, size_t whylen);

/* ---- a process's privileges (privs.c) ------------------------------------------------- */

/* Stages of the exec child, reported back through its error pipe (exec.c). */
enum exec_stage { ST_RLIMIT = 1, ST_USER, ST_CWD, ST_EXEC, ST_TTY, ST_CAPS, ST_NNP, ST_ROOT };
enum cap_set { CAPS_BOUNDING, CAPS_EFFECTIVE, CAPS_PERMITTED, CAPS_INHERITABLE, CAPS_AMBIENT,
	       NCAPSETS };

struct privs {
	int has_groups;          /* GROUPS given: exactly these supplementary groups */
	int ngroups;
	uint32_t groups[MAX_GROUPS_REQ];
	int has_umask;
	unsigned umask;
	int no_new_privs;
	int has_caps;            /* CAPS given: these five sets, bit n = capability n */
	uint64_t caps[NCAPSETS];
};

/* One EXEC field: 1 if tag is a privilege field (then *bad is set when it is malformed),
 * 0 if it is not one of them. */
int privs_field(struct privs *pv, uint16_t tag, const uint8_t *v, uint32_t len, const char **bad);
/* In the child, around the user switch: 0, or the failed stage (errno set). */
int privs_before_user(const struct privs *pv);
int privs_after_user(const struct privs *pv);

/* ---- a process's own root (container_root.c) ------------------------------------------ */

#define MAX_ROOT_MOUNTS 64
#define MAX_ROOT_PATH 4096
#define MOUNT_RO 1    /* MOUNT flags */
#define MOUNT_TMPFS 2

struct root_mount {
	uint32_t flags;
	char *source; /* a guest path for a bind; tmpfs data ("" for none) */
	char *dest;   /* absolute, resolved inside the new root */
};

struct exec_root {
	char *root;   /* ROOT: the guest directory that becomes / (NULL: none) */
	struct root_mount mounts[MAX_ROOT_MOUNTS];
	int nmounts;
	int read_only; /* ROOT_READONLY */
	pid_t join;    /* JOIN: enter this pid's mount namespace (0: none) */
};

/* One EXEC field: 1 if tag is ROOT, MOUNT, ROOT_READONLY or JOIN (then *bad is set when it
 * is malformed), 0 if it is not one of them. */
int root_field(struct exec_root *er, uint16_t tag, const uint8_t *v, uint32_t len,
	       const char **bad);
const char *root_check(const struct exec_root *er); /* fields that exclude each other */
void root_free(struct exec_root *er);
/* In the child, before rlimits and the user switch: 0, or -1 with errno set and msg
 * saying the step and path ("mount /etc/hosts: No such file or directory"). */
int root_enter(const struct exec_root *er, char *msg, size_t len);

/* ---- sessions and connections (loop.c, session.c) ------------------------------------ */

enum session_kind { S_EXEC = 1, S_READ, S_WRITE, S_LIST };

struct rlim_req {
	int resource;
	uint64_t soft, hard;
};

struct session {
	struct session *next;
	struct conn *conn;
	uint32_t id;
	int kind;
	int closing; /* finished or failed: freed at the end of this loop turn */

	/* exec */
	pid_t pid;
	int exited, status;
	int tty;
	int in_fd, out_fd, err_fd; /* -1 once closed; with a tty out_fd is the master */
	struct buf inq;            /* stdin received, not yet written to the child */
	int stdin_eof;             /* host sent the empty STDIN frame */
	uint32_t credit_back;      /* stdin/file bytes consumed, not yet in a CREDIT frame */
	uint32_t out_credit;       /* bytes the host is willing to take */
	/* Inbound window (STDIN, file DATA): bytes received that no CREDIT the host could
	 * have read covers yet. A CREDIT counts once it has left the agent (written to the
	 * connection); one at a time is in flight (ack_pending bytes, ending at stream
	 * position ack_end), later ones wait in credit_back. */
	uint32_t in_unacked;
	uint32_t ack_pending;
	uint64_t ack_end;

	/* files */
	int file_fd;
	DIR *dir;
	uint64_t remaining, done_bytes;
};

struct conn {
	struct conn *next;
	int fd;
	int dead;
	uint8_t *in;   /* HDR_LEN + MAX_PAYLOAD bytes */
	size_t in_len;
	struct buf out;
	uint64_t out_written; /* bytes of out written to fd so far (CREDIT flush tracking) */
	struct session *sessions;
	int nsessions;
};

/* Agent-wide settings: from the command line or /proc/cmdline, then CONFIG requests. */
struct config {
	int pid1;              /* do PID-1 duties (mounts, pivot, power-off) */
	char *env[MAX_ARGS];   /* sandbox environment, "K=V", added to every exec */
	int nenv;
	char *workdir;         /* default cwd */
	struct rlim_req rlimits[MAX_RLIMITS];
	int nrlimits;
	uint64_t agent_start_ns, ready_ns;
	int debug;             /* vmm.debug=1: log each step (PID 1) */
};

extern struct config cfg;

struct session *session_find(struct conn *c, uint32_t id);
struct session *session_new(struct conn *c, uint32_t id, int kind); /* not yet linked */
void session_link(struct session *s);               /* join s->conn's session list */
void session_close(struct session *s);              /* kill, close fds, mark closing */
void session_error(struct session *s, int err, const char *kind, const char *fmt, ...);
void send_error(struct conn *c, uint32_t sid, int err, const char *kind, const char *msg);
void handle_frame(struct conn *c, uint32_t sid, uint16_t type, const uint8_t *p, uint32_t n);
void session_try_finish(struct session *s);
int session_take_input(struct session *s, uint32_t n); /* count STDIN/DATA; 0: over the window */
void session_ack(struct session *s);                   /* CREDIT for credit_back, when allowed */
void conn_flushed(struct conn *c);                      /* out was written: settle CREDITs */
void agent_shutdown(void);

/* exec.c */
void exec_start(struct conn *c, uint32_t sid, const uint8_t *p, uint32_t n);
void exec_stdin(struct session *s, const uint8_t *p, uint32_t n);
void exec_signal(struct session *s, const uint8_t *p, uint32_t n);
void exec_resize(struct session *s, const uint8_t *p, uint32_t n);
void exec_pump_stdin(struct session *s);
void exec_read_output(struct session *s, int which);
void exec_reaped(pid_t pid, int status);

/* fs.c */
void fs_request(struct conn *c, uint32_t sid, uint16_t type, const uint8_t *p, uint32_t n);
void fs_write_data(struct session *s, const uint8_t *p, uint32_t n);
int fs_produce(struct session *s); /* 1 if it produced something and may produce more */

/* loop.c */
struct conn *conn_list(void);
/* single_fd: the one connection, whose end ends the loop; dialed_fd: a connection the
 * agent opened to the host, served like an accepted one (-1: none) */
void loop_run(int listen_fd, int single_fd, int dialed_fd);
uint64_t boottime_ns(void);

/* pid1.c */
void pid1_setup(void);
void pid1_poweroff(void);
int pid1_vsock_port(void);
int pid1_dial_port(void);
const char *pid1_transport(void);
/* CONFIG READONLY_ROOT: the root mount becomes read-only; 0 or an errno (EPERM when the
 * agent is not PID 1: a host process must never remount the host's root) */
int pid1_root_readonly(void);
void log_msg(const char *fmt, ...);

/* steps.c: start-up marks on the guest clock, printed with vmm.debug=1 */
void step_mark(const char *name);
void steps_log(void);

/* volumes.c: the vmm.vol= disks and vmm.fs= shared dirs (either spec may be NULL),
 * mounted in the new root before READY, parents first (0, or -1 after logging
 * `agent: FATAL: volume ...` or `agent: FATAL: shared dir ...`); unmounted at power-off */
int volumes_mount(const char *vol_spec, const char *fs_spec);
void volumes_unmount(void);

/* net.c: eth0, resolv.conf and hosts from vmm.net= (PID 1, after the root switch) */
void net_setup(const char *spec, const char *hostname, int files_written);
/* resolv.conf and hosts straight into the overlay's upper directory before the overlay is
 * mounted (0: written; -1: leave them to net_setup) */
int net_write_files(const char *spec, const char *hostname, const char *upper);

#endif
