/* The allowlists and the BPF programs built from them (see seccomp.h).
 *
 * Each list is what that thread kind does after set-up, read from the code that runs on
 * it (vcpu.c and the exits it serves, the devices' notify/poll/reset paths) and checked
 * by running every kvm-engine test and a real Linux guest with virtio blk, net and vsock
 * under the filter. glibc's own needs are included: futex (locks), rt_sigprocmask/getpid/
 * tgkill (pthread_kill), madvise/munmap (thread exit, free), mmap/mprotect/brk (malloc).
 *
 * The program: check the architecture, load the syscall number, then one test per rule;
 * a rule either allows outright or checks one argument's low 32 bits (the kernel reads
 * ioctl requests, socket families, fcntl commands, signal numbers and PROT_* bits as
 * 32-bit ints, so the high half does not matter). Anything else traps (seccomp.c). The
 * most frequent calls come first: KVM_RUN is the second test on a vCPU thread. */
#include <asm/unistd.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/kvm.h>
#include <linux/seccomp.h>
#include <pthread.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>

#include "seccomp.h"

enum check { ANY, ONE_OF, NO_BITS };

struct rule {
    int nr;
    enum check check;
    int arg;               /* which argument ONE_OF / NO_BITS look at */
    uint32_t values[6];    /* ONE_OF: allowed values; NO_BITS: values[0] is the mask */
    int nvalues;
};

#define ALLOW(name) { __NR_##name, ANY, 0, { 0 }, 0 }
#define ONE_OF(name, a, ...) { __NR_##name, ONE_OF, a, { __VA_ARGS__ }, \
                               sizeof((uint32_t[]){ __VA_ARGS__ }) / sizeof(uint32_t) }
#define NO_BITS(name, a, mask) { __NR_##name, NO_BITS, a, { mask }, 1 }
#define KICK 0 /* placeholder: the kick signal is SIGRTMIN + 3, known only at run time */

/* Calls both kinds make: locks, the console/eventfd writes, memory for malloc, signals
 * for vcpus_kick() (vm_end() runs on either), thread exit. */
#define COMMON_RULES \
    ALLOW(futex), ALLOW(write), ALLOW(read), ALLOW(writev), ALLOW(readv), ALLOW(close), \
    ALLOW(epoll_ctl), ALLOW(shutdown), ALLOW(clock_gettime), ALLOW(clock_nanosleep), \
    ALLOW(nanosleep), ALLOW(sched_yield), ALLOW(getpid), ALLOW(gettid), \
    ONE_OF(tgkill, 2, KICK), ALLOW(rt_sigprocmask), ALLOW(rt_sigreturn), \
    ALLOW(restart_syscall), NO_BITS(mmap, 2, PROT_EXEC), NO_BITS(mprotect, 2, PROT_EXEC), \
    ALLOW(munmap), ALLOW(mremap), ALLOW(brk), ALLOW(madvise), ALLOW(exit), ALLOW(exit_group)

/* vCPU threads: KVM_RUN and the exits they serve (port/MMIO devices, the serial's
 * interrupt line, register dumps for an error message, virtio-mmio register writes that
 * reset a device and close its connections). */
static const struct rule vcpu_rules[] = {
    ONE_OF(ioctl, 1, KVM_RUN, KVM_IRQ_LINE, KVM_GET_REGS, KVM_GET_SREGS),
    COMMON_RULES,
};

/* The device I/O thread: epoll, virtio queue work (disk reads and writes, the net
 * back end's socket or tap, vsock's Unix sockets to the host, opened and accepted here),
 * interrupts by irqfd (a write) or KVM_IRQ_LINE. */
static const struct rule io_rules[] = {
    ALLOW(epoll_wait), ALLOW(epoll_pwait),
    COMMON_RULES,
    ONE_OF(ioctl, 1, KVM_IRQ_LINE, FIONREAD), /* FIONREAD: vsock asks a hung-up host socket */
    ALLOW(pread64), ALLOW(pwrite64), ALLOW(preadv), ALLOW(pwritev), ALLOW(preadv2),
    ALLOW(pwritev2), ALLOW(fdatasync), ALLOW(fsync), ALLOW(lseek),
    ONE_OF(socket, 0, AF_UNIX), ALLOW(connect), ALLOW(accept4), ALLOW(accept),
    ALLOW(sendmsg), ALLOW(recvmsg), ALLOW(sendto), ALLOW(recvfrom), ALLOW(getsockopt),
    ALLOW(setsockopt), ALLOW(getsockname), ALLOW(getpeername),
    ONE_OF(fcntl, 1, F_GETFL, F_SETFL, F_GETFD, F_SETFD),
    ALLOW(fstat), ALLOW(newfstatat), ALLOW(getrandom), ALLOW(poll), ALLOW(ppoll),
};

#define MAX_INSNS 512
struct program {
    struct sock_filter insns[MAX_INSNS];
    size_t n;
};
static struct program programs[SECCOMP_KINDS];
static pthread_once_t built = PTHREAD_ONCE_INIT;

static void emit(struct program *p, uint16_t code, uint8_t jt, uint8_t jf, uint32_t k)
{
    if (p->n < MAX_INSNS)
        p->insns[p->n++] = (struct sock_filter)BPF_JUMP(code, k, jt, jf);
}

#define ARG_LO(i) (offsetof(struct seccomp_data, args) + 8 * (i)) /* little-endian */

/* The instructions that decide a call whose number matched r (A = the number). */
static void emit_block(struct program *p, const struct rule *r, uint32_t kick)
{
    switch (r->check) {
    case ANY:
        emit(p, BPF_RET | BPF_K, 0, 0, SECCOMP_RET_ALLOW);
        return;
    case ONE_OF:
        emit(p, BPF_LD | BPF_W | BPF_ABS, 0, 0, ARG_LO(r->arg));
        for (int i = 0; i < r->nvalues; i++) {
            uint32_t v = r->nr == __NR_tgkill ? kick : r->values[i];
            /* equal: jump over the rest of the tests and the trap, to the allow */
            emit(p, BPF_JMP | BPF_JEQ | BPF_K, (uint8_t)(r->nvalues - i), 0, v);
        }
        break;
    case NO_BITS:
        emit(p, BPF_LD | BPF_W | BPF_ABS, 0, 0, ARG_LO(r->arg));
        emit(p, BPF_JMP | BPF_JSET | BPF_K, 0, 1, r->values[0]);
        break;
    }
    emit(p, BPF_RET | BPF_K, 0, 0, SECCOMP_RET_TRAP);
    emit(p, BPF_RET | BPF_K, 0, 0, SECCOMP_RET_ALLOW);
}

static size_t block_len(const struct rule *r)
{
    return r->check == ANY ? 1 : r->check == ONE_OF ? 1 + (size_t)r->nvalues + 2 : 4;
}

static void build(struct program *p, const struct rule *rules, size_t n, uint32_t kick)
{
    emit(p, BPF_LD | BPF_W | BPF_ABS, 0, 0, offsetof(struct seccomp_data, arch));
    emit(p, BPF_JMP | BPF_JEQ | BPF_K, 1, 0, AUDIT_ARCH_X86_64);
    emit(p, BPF_RET | BPF_K, 0, 0, SECCOMP_RET_TRAP); /* i386/x32 entry: the handler names it */
    emit(p, BPF_LD | BPF_W | BPF_ABS, 0, 0, offsetof(struct seccomp_data, nr));
    for (size_t i = 0; i < n; i++) {
        /* not this call: skip its block; every block ends in a return, so A stays nr */
        emit(p, BPF_JMP | BPF_JEQ | BPF_K, 0, (uint8_t)block_len(&rules[i]), (uint32_t)rules[i].nr);
        emit_block(p, &rules[i], kick);
    }
    emit(p, BPF_RET | BPF_K, 0, 0, SECCOMP_RET_TRAP);
}

static void build_all(void)
{
    uint32_t kick = (uint32_t)(SIGRTMIN + 3); /* vcpu.c's kick_signal() */
    build(&programs[SECCOMP_VCPU], vcpu_rules, sizeof(vcpu_rules) / sizeof(vcpu_rules[0]), kick);
    build(&programs[SECCOMP_IO], io_rules, sizeof(io_rules) / sizeof(io_rules[0]), kick);
}

int seccomp_program_get(enum seccomp_kind kind, struct sock_fprog *out)
{
    pthread_once(&built, build_all);
    const struct program *p = &programs[kind];
    if (p->n >= MAX_INSNS)
        return -1; /* a list outgrew MAX_INSNS: refuse rather than run a cut program */
    out->len = (unsigned short)p->n;
    out->filter = (struct sock_filter *)p->insns;
    return 0;
}
