/* Installing the filters, and what happens when a confined thread breaks one.
 *
 * A forbidden call traps (SECCOMP_RET_TRAP): the kernel sends the thread SIGSYS, even if it
 * blocks signals, and our handler writes one line naming the system call and the thread
 * kind to stderr, then ends the whole process with exit status 159 (128 + SIGSYS, what a
 * shell shows for a death by SIGSYS). Why TRAP and a handler rather than
 * SECCOMP_RET_KILL_PROCESS: a killed process says nothing about which call or which
 * thread did it (only the audit log would), and the parent of a Python process that runs
 * VMs is whoever started it; the handler names the call in the process's own stderr,
 * which the sandbox supervisor's log keeps. Why end the process and not just the VM: a
 * thread that made a call it never makes is running code we did not write; nothing it
 * touched (locks, device state, guest memory maps) can be trusted to tear down cleanly,
 * so the one safe end is the process's (for a sandbox, that is its own supervisor).
 * The handler runs on the offending thread with its filter still on, using only write and
 * exit_group, both on every allowlist; it cannot be replaced from a confined thread
 * (rt_sigaction is on no allowlist). */
#define _GNU_SOURCE
#include <errno.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "seccomp.h"
#include "util.h"
#include "vm.h"

#define SECCOMP_EXIT_STATUS 159
#ifndef SYS_SECCOMP
#define SYS_SECCOMP 1 /* si_code of a seccomp SIGSYS (glibc names it only in an enum) */
#endif

static __thread int confined_kind = -1; /* set before the filter, read by the handler */
static struct sigaction previous;       /* SIGSYS's handler before ours (for other SIGSYS) */

const char *seccomp_kind_name(enum seccomp_kind kind)
{
    switch (kind) {
    case SECCOMP_VCPU: return "vCPU";
    case SECCOMP_IO: return "device I/O";
    default: return "confined";
    }
}

/* Async-signal-safe string building: no stdio in a signal handler. */
static size_t put(char *buf, size_t at, size_t cap, const char *s)
{
    while (*s && at + 1 < cap)
        buf[at++] = *s++;
    return at;
}

static size_t put_num(char *buf, size_t at, size_t cap, unsigned long long v, int base)
{
    char digits[24];
    int n = 0;
    do {
        digits[n++] = "0123456789abcdef"[v % base];
        v /= base;
    } while (v && n < (int)sizeof(digits));
    while (n && at + 1 < cap)
        buf[at++] = digits[--n];
    return at;
}

static void on_sigsys(int sig, siginfo_t *si, void *ctx)
{
    if (si->si_code != SYS_SECCOMP) { /* not ours: what would have happened without us */
        if (previous.sa_flags & SA_SIGINFO && previous.sa_sigaction)
            previous.sa_sigaction(sig, si, ctx);
        else if (previous.sa_handler != SIG_IGN && previous.sa_handler != SIG_DFL)
            previous.sa_handler(sig);
        else if (previous.sa_handler == SIG_DFL) {
            signal(SIGSYS, SIG_DFL);
            raise(SIGSYS);
        }
        return;
    }
    char line[256];
    size_t n = put(line, 0, sizeof(line), "vmm: seccomp: the ");
    n = put(line, n, sizeof(line), seccomp_kind_name((enum seccomp_kind)confined_kind));
    n = put(line, n, sizeof(line), " thread made a forbidden system call: ");
    const char *name = si->si_arch == AUDIT_ARCH_X86_64 ? seccomp_syscall_name(si->si_syscall) : NULL;
    n = put(line, n, sizeof(line), name ? name : "number");
    n = put(line, n, sizeof(line), " (");
    n = put_num(line, n, sizeof(line), (unsigned)si->si_syscall, 10);
    if (si->si_arch != AUDIT_ARCH_X86_64) {
        n = put(line, n, sizeof(line), ", audit arch 0x");
        n = put_num(line, n, sizeof(line), (unsigned)si->si_arch, 16);
    }
    n = put(line, n, sizeof(line), "); ending the process\n");
    ssize_t w = write(2, line, n);
    (void)w;
    syscall(SYS_exit_group, SECCOMP_EXIT_STATUS);
}

static pthread_once_t handler_once = PTHREAD_ONCE_INIT;
static int handler_errno;

static void install_handler(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_sigaction = on_sigsys;
    sa.sa_flags = SA_SIGINFO;
    sigfillset(&sa.sa_mask);
    if (sigaction(SIGSYS, &sa, &previous) < 0)
        handler_errno = errno;
}

int seccomp_check(char *err, size_t errlen)
{
    /* PR_GET_SECCOMP fails with EINVAL on a kernel without CONFIG_SECCOMP. */
    if (prctl(PR_GET_SECCOMP, 0, 0, 0, 0) < 0)
        return errf(err, errlen, "this kernel has no seccomp (%s); start the VM without the "
                    "seccomp filter (KvmOptions(seccomp=False))", strerror(errno));
    struct sock_fprog prog;
    if (seccomp_program_get(SECCOMP_VCPU, &prog) < 0 || seccomp_program_get(SECCOMP_IO, &prog) < 0)
        return errf(err, errlen, "the seccomp allowlists do not fit their program size");
    pthread_once(&handler_once, install_handler);
    if (handler_errno)
        return errf(err, errlen, "cannot install the SIGSYS handler: %s", strerror(handler_errno));
    return 0;
}

int seccomp_confine(enum seccomp_kind kind, char *err, size_t errlen)
{
    struct sock_fprog prog;
    if (seccomp_program_get(kind, &prog) < 0)
        return errf(err, errlen, "no seccomp program for %s threads", seccomp_kind_name(kind));
    confined_kind = kind;
    /* The kernel delivers the trap's SIGSYS to a thread that blocks it only by resetting the
     * handler to the default first (a silent death by SIGSYS): our threads start with every
     * signal blocked, so let this one through. (A hijacked thread that blocks it again
     * still dies, just without the message.) */
    sigset_t sys;
    sigemptyset(&sys);
    sigaddset(&sys, SIGSYS);
    pthread_sigmask(SIG_UNBLOCK, &sys, NULL);
    /* no_new_privs: required for an unprivileged caller, and harmless for root. */
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0 ||
        prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog, 0, 0) < 0) {
        confined_kind = -1;
        return errf(err, errlen, "cannot install the seccomp filter of the %s thread: %s",
                    seccomp_kind_name(kind), strerror(errno));
    }
    return 0;
}

/* ---- which event loop threads to confine ------------------------------------------- */

struct expected {
    struct ioloop *loop;
    struct vmm_vm *vm;
    struct expected *next;
};
static pthread_mutex_t expected_lock = PTHREAD_MUTEX_INITIALIZER;
static struct expected *expected;

int seccomp_expect_ioloop(struct ioloop *l, struct vmm_vm *vm, char *err, size_t errlen)
{
    struct expected *e = malloc(sizeof(*e));
    if (!e)
        return errf(err, errlen, "out of memory");
    pthread_mutex_lock(&expected_lock);
    *e = (struct expected){ .loop = l, .vm = vm, .next = expected };
    expected = e;
    pthread_mutex_unlock(&expected_lock);
    return 0;
}

/* The expectation for l, taken out of the list (NULL if none). */
static struct expected *take(struct ioloop *l)
{
    pthread_mutex_lock(&expected_lock);
    struct expected **p = &expected, *e = NULL;
    while (*p && (*p)->loop != l)
        p = &(*p)->next;
    if (*p) {
        e = *p;
        *p = e->next;
    }
    pthread_mutex_unlock(&expected_lock);
    return e;
}

void seccomp_forget_ioloop(struct ioloop *l)
{
    free(take(l));
}

void seccomp_ioloop_thread(struct ioloop *l)
{
    /* Taken, not looked up: a later loop at the same address (another VM's, or the
     * vhost-user servers' loop) must not inherit an old expectation. */
    struct expected *e = take(l);
    if (!e)
        return; /* a loop nobody asked to confine (vhost-user servers, tests) */
    struct vmm_vm *vm = e->vm;
    free(e);
    char err[160];
    if (seccomp_confine(SECCOMP_IO, err, sizeof(err)) < 0)
        vm_end(vm, VMM_EXIT_ERROR, 0, "%s", err); /* the guest stops; it never runs unconfined devices */
}
