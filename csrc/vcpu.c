/* vCPU threads: one pthread per vCPU runs KVM_RUN and serves its exits.
 *
 * Host stop: vm_end() sets vm->stopping, sets each vCPU's kvm_run->immediate_exit and sends
 * the thread a kick signal. The signal has a no-op handler installed without SA_RESTART,
 * so a thread inside KVM_RUN (or inside a blocking write to the console) returns EINTR;
 * immediate_exit covers the window where the signal lands just before KVM_RUN. */
#define _GNU_SOURCE /* pthread_timedjoin_np */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "seccomp.h"
#include "util.h"
#include "vm.h"

static int kick_signal(void) { return SIGRTMIN + 3; }

static void kick_handler(int sig) { (void)sig; }

static pthread_once_t kick_once = PTHREAD_ONCE_INIT;

static void install_kick_handler(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = kick_handler;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = 0; /* no SA_RESTART: KVM_RUN must return EINTR */
    sigaction(kick_signal(), &sa, NULL);
}

int vcpu_create(struct vmm_vm *vm, int index, int mmap_size, char *err, size_t errlen)
{
    struct vcpu *c = &vm->vcpus[index];
    c->vm = vm;
    c->index = index;
    c->fd = ioctl(vm->vm_fd, KVM_CREATE_VCPU, (unsigned long)index);
    if (c->fd < 0)
        return errf(err, errlen, "KVM_CREATE_VCPU %d: %s", index, strerror(errno));
    void *run = mmap(NULL, mmap_size, PROT_READ | PROT_WRITE, MAP_SHARED, c->fd, 0);
    if (run == MAP_FAILED)
        return errf(err, errlen, "mmap of vCPU %d's kvm_run: %s", index, strerror(errno));
    c->run = run;
    c->run_size = mmap_size;
    return 0;
}

void vcpu_close(struct vcpu *c)
{
    if (c->run)
        munmap(c->run, c->run_size);
    if (c->fd >= 0)
        close(c->fd);
    c->run = NULL;
    c->fd = -1;
}

/* ---- exits ------------------------------------------------------------------------ */

static void end_with_error(struct vcpu *c, const char *what)
{
    char regs[512];
    x86_describe_vcpu(c, regs, sizeof(regs));
    vm_end(c->vm, VMM_EXIT_ERROR, c->run->exit_reason, "%s on vCPU %d: %s", what, c->index, regs);
}

static void handle_io(struct vcpu *c)
{
    struct kvm_run *run = c->run;
    uint32_t size = run->io.size, count = run->io.count;
    uint64_t off = run->io.data_offset;
    if (size == 0 || size > 8 || off > c->run_size || (uint64_t)size * count > c->run_size - off)
        return; /* KVM never does this; don't trust it blindly either */
    uint8_t *data = (uint8_t *)run + off;
    bool is_write = run->io.direction == KVM_EXIT_IO_OUT;
    for (uint32_t i = 0; i < count; i++, data += size) {
        if (bus_access(&c->vm->pio, run->io.port, data, size, is_write))
            continue;
        stat_inc(c->vm, ST_UNCLAIMED_IO);
        if (!is_write)
            memset(data, 0xff, size);
    }
}

static void handle_mmio(struct vcpu *c)
{
    struct kvm_run *run = c->run;
    uint32_t len = run->mmio.len;
    if (len == 0 || len > 8)
        return;
    if (bus_access(&c->vm->mmio, run->mmio.phys_addr, run->mmio.data, len, run->mmio.is_write))
        return;
    stat_inc(c->vm, ST_UNCLAIMED_MMIO);
    if (!run->mmio.is_write)
        memset(run->mmio.data, 0xff, len);
}

static void handle_system_event(struct vcpu *c)
{
    switch (c->run->system_event.type) {
    case KVM_SYSTEM_EVENT_SHUTDOWN:
        vm_end(c->vm, VMM_EXIT_SHUTDOWN, 0, "guest powered off");
        break;
    case KVM_SYSTEM_EVENT_RESET:
        vm_end(c->vm, VMM_EXIT_SHUTDOWN, 0, "guest reset");
        break;
    default: {
        char what[64];
        snprintf(what, sizeof(what), "guest system event %u (crash)", c->run->system_event.type);
        end_with_error(c, what);
    }
    }
}

/* "KVM internal error, suberror 1 (emulation failure), instruction f0 48 0f c7 ..." */
static void describe_internal_error(const struct kvm_run *run, char *buf, size_t len)
{
    int n = snprintf(buf, len, "KVM internal error, suberror %u", run->internal.suberror);
    if (run->internal.suberror != KVM_INTERNAL_ERROR_EMULATION)
        return;
    n += snprintf(buf + n, len - n, " (emulation failure)");
    const typeof(run->emulation_failure) *ef = &run->emulation_failure;
    if (run->internal.ndata < 2 || !(ef->flags & KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES))
        return;
    n += snprintf(buf + n, len - n, ", instruction");
    for (unsigned i = 0; i < ef->insn_size && i < sizeof(ef->insn_bytes) && (size_t)n < len; i++)
        n += snprintf(buf + n, len - n, " %02x", ef->insn_bytes[i]);
}

/* Serve one exit; false when this vCPU must stop running. */
static bool handle_exit(struct vcpu *c)
{
    struct vmm_vm *vm = c->vm;
    struct kvm_run *run = c->run;
    char what[160];
    switch (run->exit_reason) {
    case KVM_EXIT_IO:
        stat_inc(vm, ST_IO);
        handle_io(c);
        return true;
    case KVM_EXIT_MMIO:
        stat_inc(vm, ST_MMIO);
        handle_mmio(c);
        return true;
    case KVM_EXIT_HLT:
        /* With the in-kernel LAPIC, HLT waits inside KVM; an exit here just re-enters. */
        stat_inc(vm, ST_HLT);
        return true;
    case KVM_EXIT_INTR:
        stat_inc(vm, ST_INTR);
        return true;
    case KVM_EXIT_SHUTDOWN:
        stat_inc(vm, ST_SHUTDOWN);
        end_with_error(c, "triple fault (KVM_EXIT_SHUTDOWN)");
        return false;
    case KVM_EXIT_FAIL_ENTRY:
        stat_inc(vm, ST_FAIL_ENTRY);
        snprintf(what, sizeof(what), "VM entry failed (hardware reason 0x%llx)",
                 (unsigned long long)run->fail_entry.hardware_entry_failure_reason);
        end_with_error(c, what);
        return false;
    case KVM_EXIT_INTERNAL_ERROR:
        stat_inc(vm, ST_INTERNAL_ERROR);
        describe_internal_error(run, what, sizeof(what));
        end_with_error(c, what);
        return false;
    case KVM_EXIT_SYSTEM_EVENT:
        stat_inc(vm, ST_SYSTEM_EVENT);
        handle_system_event(c);
        return false;
    default:
        stat_inc(vm, ST_OTHER);
        snprintf(what, sizeof(what), "unhandled KVM exit reason %u", run->exit_reason);
        end_with_error(c, what);
        return false;
    }
}

/* ---- the thread ------------------------------------------------------------------- */

static void thread_ended(struct vcpu *c)
{
    struct vmm_vm *vm = c->vm;
    pthread_mutex_lock(&vm->lock);
    c->alive = false;
    if (--vm->running_threads == 0) {
        /* The last writer of the console is gone: closing our copy gives the reader EOF
         * after the last byte, so the host sees the whole console once wait() returns. */
        if (vm->console_fd >= 0)
            close(vm->console_fd);
        vm->console_fd = -1;
        pthread_cond_broadcast(&vm->ended_cond);
    }
    pthread_mutex_unlock(&vm->lock);
}

/* While the VM is paused, wait outside KVM_RUN; on resume, clear the kick that got us
 * out, so the next KVM_RUN enters the guest. A pause() after the clear sets immediate_exit
 * again (it takes the lock first), so no pause is lost. */
static void park_while_paused(struct vcpu *c)
{
    struct vmm_vm *vm = c->vm;
    pthread_mutex_lock(&vm->lock);
    if (vm->paused && !vm->stopping) {
        vm->parked++;
        pthread_cond_broadcast(&vm->pause_cond);
        while (vm->paused && !vm->stopping)
            pthread_cond_wait(&vm->pause_cond, &vm->lock);
        vm->parked--;
    }
    if (!vm->stopping && c->run)
        __atomic_store_n(&c->run->immediate_exit, 0, __ATOMIC_SEQ_CST);
    pthread_mutex_unlock(&vm->lock);
}

static void *vcpu_thread(void *arg)
{
    struct vcpu *c = arg;
    struct vmm_vm *vm = c->vm;
    sigset_t kick;
    sigemptyset(&kick);
    sigaddset(&kick, kick_signal());
    pthread_sigmask(SIG_UNBLOCK, &kick, NULL);
    /* From here on vcpus_kick() can reach this thread; it checks stopping after this. */
    pthread_mutex_lock(&vm->lock);
    c->self = pthread_self();
    c->alive = true;
    pthread_mutex_unlock(&vm->lock);

    /* Set-up is over (registers, CPUID, MSRs were set before the thread started): from
     * here the thread only runs the guest and serves its exits. A filter that cannot be
     * installed ends the VM: it never runs unconfined. */
    char why[160];
    if ((vm->seccomp & VMM_SECCOMP_VCPU) && seccomp_confine(SECCOMP_VCPU, why, sizeof(why)) < 0) {
        vm_end(vm, VMM_EXIT_ERROR, 0, "%s", why);
        thread_ended(c);
        return NULL;
    }

    while (!__atomic_load_n(&vm->stopping, __ATOMIC_SEQ_CST)) {
        timeline_mark(&vm->t_first_vcpu_entry);
        if (ioctl(c->fd, KVM_RUN, 0) < 0) {
            if (errno == EINTR || errno == EAGAIN) {
                park_while_paused(c); /* kicked: by a pause, or the loop condition decides */
                continue;
            }
            char what[96];
            snprintf(what, sizeof(what), "KVM_RUN failed (%s)", strerror(errno));
            end_with_error(c, what);
            break;
        }
        if (!handle_exit(c))
            break;
    }
    thread_ended(c);
    return NULL;
}

int vcpus_start(struct vmm_vm *vm, char *err, size_t errlen)
{
    pthread_once(&kick_once, install_kick_handler);
    /* vCPU threads take no signals but the kick: Python's SIGINT etc. stay with Python. */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    int rc = 0;
    /* Count every thread up front: one that ends at once must not look like the last. */
    pthread_mutex_lock(&vm->lock);
    vm->started = true;
    vm->running_threads = vm->ncpus;
    pthread_mutex_unlock(&vm->lock);
    for (uint32_t i = 0; i < vm->ncpus; i++) {
        struct vcpu *c = &vm->vcpus[i];
        int e = pthread_create(&c->thread, NULL, vcpu_thread, c);
        if (e != 0) {
            pthread_mutex_lock(&vm->lock);
            vm->running_threads -= vm->ncpus - i; /* this one and the ones never created */
            pthread_mutex_unlock(&vm->lock);
            rc = errf(err, errlen, "cannot start the thread of vCPU %u: %s", i, strerror(e));
            break;
        }
        c->thread_started = true;
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc < 0) {
        vm_end(vm, VMM_EXIT_ERROR, 0, "%s", err ? err : "vCPU thread start failed");
        vcpus_join(vm);
        pthread_mutex_lock(&vm->lock);
        if (vm->running_threads == 0 && vm->console_fd >= 0) { /* no thread left to close it */
            close(vm->console_fd);
            vm->console_fd = -1;
        }
        pthread_cond_broadcast(&vm->ended_cond);
        pthread_mutex_unlock(&vm->lock);
    }
    return rc;
}

void vcpus_kick(struct vmm_vm *vm)
{
    pthread_mutex_lock(&vm->lock);
    for (uint32_t i = 0; i < vm->ncpus; i++) {
        struct vcpu *c = &vm->vcpus[i];
        if (c->run)
            __atomic_store_n(&c->run->immediate_exit, 1, __ATOMIC_SEQ_CST);
        if (c->alive && !pthread_equal(c->self, pthread_self()))
            pthread_kill(c->self, kick_signal());
    }
    pthread_mutex_unlock(&vm->lock);
}

/* Join every vCPU thread, re-kicking now and then: a kick can be lost if it lands while
 * the thread is between its stopping check and a blocking call other than KVM_RUN. */
void vcpus_join(struct vmm_vm *vm)
{
    for (uint32_t i = 0; i < vm->ncpus; i++) {
        struct vcpu *c = &vm->vcpus[i];
        if (!c->thread_started || c->joined)
            continue;
        for (;;) {
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            ts.tv_nsec += 50 * 1000000L;
            if (ts.tv_nsec >= 1000000000L) {
                ts.tv_sec++;
                ts.tv_nsec -= 1000000000L;
            }
            if (pthread_timedjoin_np(c->thread, NULL, &ts) == 0)
                break;
            vcpus_kick(vm);
        }
        c->joined = true;
    }
}
