/* Confinement of the threads that serve the guest (seccomp-BPF, Firecracker's model).
 *
 * After set-up, each vCPU thread and the VM's device I/O thread install a filter that
 * allows only the system calls that thread kind makes (seccomp_filter.c), with argument
 * checks where they are cheap (ioctl requests, socket families, no executable mappings,
 * signals only to our own kick). Any other call ends the process (seccomp.c says why).
 * The filter is per thread: the rest of the process (Python, other VMs' threads) is not
 * affected. */
#ifndef VMM_SECCOMP_H
#define VMM_SECCOMP_H
#include <stddef.h>

struct ioloop;
struct vmm_vm;

enum seccomp_kind { SECCOMP_VCPU = 0, SECCOMP_IO = 1, SECCOMP_KINDS };

/* What the kind is called in the report: "vCPU", "device I/O". */
const char *seccomp_kind_name(enum seccomp_kind kind);

/* 0 if this kernel takes seccomp filters, else -1 and err says why (checked before a VM
 * with the filter starts, so a missing feature is an error at start, not a dead thread). */
int seccomp_check(char *err, size_t errlen);

/* Install the kind's filter on the calling thread (and set no_new_privs on it). */
int seccomp_confine(enum seccomp_kind kind, char *err, size_t errlen);

/* The device I/O thread of vm is l's thread: seccomp_ioloop_thread(), which ioloop.c calls
 * first thing on every loop thread, confines it. Call before ioloop_start(l); forget()
 * drops an expectation whose thread never started. */
int seccomp_expect_ioloop(struct ioloop *l, struct vmm_vm *vm, char *err, size_t errlen);
void seccomp_forget_ioloop(struct ioloop *l);
void seccomp_ioloop_thread(struct ioloop *l);


/* The kind's BPF program (seccomp_filter.c), built once; -1 if it could not be. */
struct sock_fprog;
int seccomp_program_get(enum seccomp_kind kind, struct sock_fprog *out);

/* The x86_64 name of a system call number, NULL if unknown (seccomp_names.c). */
const char *seccomp_syscall_name(long nr);

/* The test probe (seccomp_probe.c) is freed with the VM. */
void seccomp_probe_free(struct vmm_vm *vm);

#endif
