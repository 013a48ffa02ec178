/* The VM: /dev/kvm checks, the KVM VM object with its irqchip, PIT and memory, its
 * devices, and how it ends. The vCPU threads and their run loop are in vcpu.c. */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

#include "layout.h"
#include "seccomp.h"
#include "util.h"
#include "vm.h"

static const struct {
    const char *name;
    int cap;
    int required;
} caps[] = {
    { "IRQCHIP", KVM_CAP_IRQCHIP, 1 },
    { "USER_MEMORY", KVM_CAP_USER_MEMORY, 1 },
    { "SET_TSS_ADDR", KVM_CAP_SET_TSS_ADDR, 1 },
    { "PIT2", KVM_CAP_PIT2, 1 },
    { "EXT_CPUID", KVM_CAP_EXT_CPUID, 1 },
    { "IMMEDIATE_EXIT", KVM_CAP_IMMEDIATE_EXIT, 1 },
    { "IOEVENTFD", KVM_CAP_IOEVENTFD, 1 },
    { "IRQFD", KVM_CAP_IRQFD, 1 },
    { "MP_STATE", KVM_CAP_MP_STATE, 0 },
    { "TSC_DEADLINE_TIMER", KVM_CAP_TSC_DEADLINE_TIMER, 0 },
    { "SPLIT_IRQCHIP", KVM_CAP_SPLIT_IRQCHIP, 0 },
    { "X86_USER_SPACE_MSR", KVM_CAP_X86_USER_SPACE_MSR, 0 },
    { "NR_MEMSLOTS", KVM_CAP_NR_MEMSLOTS, 0 },
    { "MAX_VCPUS", KVM_CAP_MAX_VCPUS, 0 },
    { "TSC_CONTROL", KVM_CAP_TSC_CONTROL, 0 },
    { "NESTED_STATE", KVM_CAP_NESTED_STATE, 0 },
};
#define NCAPS ((int)(sizeof(caps) / sizeof(caps[0])))
_Static_assert(sizeof(caps) / sizeof(caps[0]) <= sizeof(((struct vmm_kvm_info *)0)->caps) /
               sizeof(struct vmm_kvm_cap), "struct vmm_kvm_info has no room for every capability");

/* Open /dev/kvm and check it; on success the fd, else -1 with err set. */
static int kvm_open_checked(struct vmm_kvm_info *info, char *err, size_t errlen)
{
    memset(info, 0, sizeof(*info));
    int fd = open("/dev/kvm", O_RDWR | O_CLOEXEC);
    if (fd < 0)
        return errf(err, errlen, "cannot open /dev/kvm: %s", strerror(errno));
    info->api_version = ioctl(fd, KVM_GET_API_VERSION, 0);
    info->vcpu_mmap_size = ioctl(fd, KVM_GET_VCPU_MMAP_SIZE, 0);
    info->ncaps = NCAPS;
    const char *missing = NULL;
    for (int i = 0; i < NCAPS; i++) {
        snprintf(info->caps[i].name, sizeof(info->caps[i].name), "%s", caps[i].name);
        info->caps[i].required = caps[i].required;
        int v = ioctl(fd, KVM_CHECK_EXTENSION, caps[i].cap);
        info->caps[i].value = v < 0 ? 0 : v;
        if (caps[i].required && info->caps[i].value <= 0 && !missing)
            missing = caps[i].name;
    }
    if (info->api_version != KVM_API_VERSION) {
        close(fd);
        return errf(err, errlen, "/dev/kvm has API version %d; vmm needs %d", info->api_version, KVM_API_VERSION);
    }
    if (missing) {
        close(fd);
        return errf(err, errlen, "/dev/kvm lacks the required capability KVM_CAP_%s", missing);
    }
    if (info->vcpu_mmap_size < (int)sizeof(struct kvm_run)) {
        close(fd);
        return errf(err, errlen, "/dev/kvm reports a vCPU mmap size of %d", info->vcpu_mmap_size);
    }
    return fd;
}

int vmm_kvm_probe(struct vmm_kvm_info *info, char *err, size_t errlen)
{
    int fd = kvm_open_checked(info, err, errlen);
    if (fd < 0)
        return -1;
    close(fd);
    return 0;
}

static bool kvm_has(const struct vmm_kvm_info *info, const char *name)
{
    for (int i = 0; i < info->ncaps; i++)
        if (strcmp(info->caps[i].name, name) == 0)
            return info->caps[i].value > 0;
    return false;
}

/* ---- create ------------------------------------------------------------------------ */

static int query_supported_cpuid(int kvm_fd, struct kvm_cpuid2 **out, char *err, size_t errlen)
{
    for (int n = 64; n <= 4096; n *= 2) {
        struct kvm_cpuid2 *c = calloc(1, sizeof(*c) + n * sizeof(struct kvm_cpuid_entry2));
        if (!c)
            return errf(err, errlen, "out of memory");
        c->nent = n;
        if (ioctl(kvm_fd, KVM_GET_SUPPORTED_CPUID, c) == 0) {
            *out = c;
            return 0;
        }
        int e = errno;
        free(c);
        if (e != E2BIG)
            return errf(err, errlen, "KVM_GET_SUPPORTED_CPUID: %s", strerror(e));
    }
    return errf(err, errlen, "KVM_GET_SUPPORTED_CPUID: too many entries");
}

/* What KVM supports does not change while we run, and asking costs ~0.3 ms a call here
 * (the kernel builds the whole list even to answer E2BIG): a third of Machine() to the
 * first vCPU entry (issue 13). The first VM of the process asks; later ones copy. */
static pthread_mutex_t supported_cpuid_lock = PTHREAD_MUTEX_INITIALIZER;
static struct kvm_cpuid2 *supported_cpuid;

static int get_supported_cpuid(struct vmm_vm *vm, char *err, size_t errlen)
{
    pthread_mutex_lock(&supported_cpuid_lock);
    int rc = supported_cpuid ? 0 : query_supported_cpuid(vm->kvm_fd, &supported_cpuid, err, errlen);
    if (rc == 0) {
        size_t size = sizeof(*supported_cpuid) + supported_cpuid->nent * sizeof(struct kvm_cpuid_entry2);
        vm->cpuid = malloc(size);
        if (vm->cpuid)
            memcpy(vm->cpuid, supported_cpuid, size);
        else
            rc = errf(err, errlen, "out of memory");
    }
    pthread_mutex_unlock(&supported_cpuid_lock);
    return rc;
}

static int get_msr_list(struct vmm_vm *vm, char *err, size_t errlen)
{
    struct kvm_msr_list probe = { .nmsrs = 0 };
    ioctl(vm->kvm_fd, KVM_GET_MSR_INDEX_LIST, &probe); /* E2BIG, and tells the count */
    uint32_t n = probe.nmsrs;
    vm->msrs = calloc(1, sizeof(*vm->msrs) + n * sizeof(uint32_t));
    if (!vm->msrs)
        return errf(err, errlen, "out of memory");
    vm->msrs->nmsrs = n;
    if (ioctl(vm->kvm_fd, KVM_GET_MSR_INDEX_LIST, vm->msrs) < 0)
        return errf(err, errlen, "KVM_GET_MSR_INDEX_LIST: %s", strerror(errno));
    return 0;
}

/* One KVM memory slot per guest-memory region (one below the MMIO hole, one above 4 GiB). */
static int set_memory(struct vmm_vm *vm, char *err, size_t errlen)
{
    for (int i = 0; i < vm->mem.nregions; i++) {
        const struct guest_mem_region *r = &vm->mem.r[i];
        struct kvm_userspace_memory_region slot = {
            .slot = (uint32_t)i, .guest_phys_addr = r->gpa, .memory_size = r->size,
            .userspace_addr = (uintptr_t)r->host,
        };
        if (ioctl(vm->vm_fd, KVM_SET_USER_MEMORY_REGION, &slot) < 0)
            return errf(err, errlen, "KVM_SET_USER_MEMORY_REGION (RAM at 0x%llx): %s",
                        (unsigned long long)r->gpa, strerror(errno));
    }
    return 0;
}

static int create_vm(struct vmm_vm *vm, const struct vmm_vm_config *cfg, char *err, size_t errlen)
{
    struct vmm_kvm_info info;
    vm->kvm_fd = kvm_open_checked(&info, err, errlen);
    if (vm->kvm_fd < 0)
        return -1;
    vm->tsc_deadline = kvm_has(&info, "TSC_DEADLINE_TIMER");
    if (get_supported_cpuid(vm, err, errlen) < 0 || get_msr_list(vm, err, errlen) < 0)
        return -1;
    vm->vm_fd = ioctl(vm->kvm_fd, KVM_CREATE_VM, 0);
    if (vm->vm_fd < 0)
        return errf(err, errlen, "KVM_CREATE_VM: %s", strerror(errno));
    /* Guest RAM first: registered after KVM_CREATE_IRQCHIP, the first memslot costs 5-11 ms
     * here (measured on kvm_pvm: it waits out a grace period), registered before, 0.06 ms,
     * and the irqchip and PIT stay as cheap. (benchmarks/bench_kvm_boot.py) */
    if (guest_mem_map(&vm->mem, cfg->memory_bytes, cfg->hugepages, cfg->shared_memory != 0, err, errlen) < 0)
        return -1;
    if (set_memory(vm, err, errlen) < 0)
        return -1;
    if (ioctl(vm->vm_fd, KVM_SET_TSS_ADDR, (unsigned long)LAYOUT_TSS) < 0)
        return errf(err, errlen, "KVM_SET_TSS_ADDR: %s", strerror(errno));
    if (ioctl(vm->vm_fd, KVM_CREATE_IRQCHIP, 0) < 0)
        return errf(err, errlen, "KVM_CREATE_IRQCHIP: %s", strerror(errno));
    struct kvm_pit_config pit = { .flags = KVM_PIT_SPEAKER_DUMMY };
    if (ioctl(vm->vm_fd, KVM_CREATE_PIT2, &pit) < 0)
        return errf(err, errlen, "KVM_CREATE_PIT2: %s", strerror(errno));
    e820_build(&vm->e820, &vm->mem);
    for (uint32_t i = 0; i < vm->ncpus; i++)
        if (vcpu_create(vm, i, info.vcpu_mmap_size, err, errlen) < 0)
            return -1;
    return 0;
}

static int create_devices(struct vmm_vm *vm, char *err, size_t errlen)
{
    vm->serial = serial_create(vm, 0x3f8, 4, err, errlen);
    if (!vm->serial)
        return -1;
    if (i8042_init(vm, err, errlen) < 0 || boot_timer_init(vm, err, errlen) < 0)
        return -1;
    return 0;
}

struct vmm_vm *vmm_vm_create(const struct vmm_vm_config *cfg, char *err, size_t errlen)
{
    if (cfg->cpus < 1 || cfg->cpus > VMM_MAX_CPUS) {
        errf(err, errlen, "cpus must be between 1 and %d, got %u", VMM_MAX_CPUS, cfg->cpus);
        return NULL;
    }
    struct vmm_vm *vm = calloc(1, sizeof(*vm));
    if (!vm) {
        errf(err, errlen, "out of memory");
        return NULL;
    }
    vm->kvm_fd = vm->vm_fd = vm->console_fd = -1;
    for (int i = 0; i < VMM_MAX_CPUS; i++)
        vm->vcpus[i].fd = -1;
    vm->ncpus = cfg->cpus;
    vm->seccomp = cfg->seccomp & (VMM_SECCOMP_VCPU | VMM_SECCOMP_IO);
    vm->pio.what = "port";
    vm->mmio.what = "MMIO";
    pthread_mutex_init(&vm->lock, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&vm->ended_cond, &ca);
    pthread_cond_init(&vm->pause_cond, &ca);
    pthread_condattr_destroy(&ca);

    if (cfg->console_fd >= 0) {
        vm->console_fd = fcntl(cfg->console_fd, F_DUPFD_CLOEXEC, 3);
        if (vm->console_fd < 0) {
            errf(err, errlen, "cannot use console fd %d: %s", cfg->console_fd, strerror(errno));
            vmm_vm_destroy(vm);
            return NULL;
        }
    }
    if (create_vm(vm, cfg, err, errlen) < 0 || create_devices(vm, err, errlen) < 0) {
        vmm_vm_destroy(vm);
        return NULL;
    }
    timeline_mark(&vm->t_vm_created);
    return vm;
}

/* ---- load and start ------------------------------------------------------------------- */

int vmm_vm_load_kernel(struct vmm_vm *vm, const char *kernel, const char *initrd,
                       const char *cmdline, char *err, size_t errlen)
{
    if (vm->started)
        return errf(err, errlen, "cannot load a kernel into a running VM");
    if (x86_load(&vm->mem, &vm->e820, kernel, initrd, cmdline, &vm->boot, err, errlen) < 0)
        return -1;
    if (mptable_write(&vm->mem, vm->ncpus, err, errlen) < 0)
        return -1;
    for (uint32_t i = 0; i < vm->ncpus; i++)
        if (x86_setup_vcpu(vm, &vm->vcpus[i], err, errlen) < 0)
            return -1;
    vm->loaded = true;
    timeline_mark(&vm->t_kernel_loaded);
    return 0;
}

int vmm_vm_start(struct vmm_vm *vm, char *err, size_t errlen)
{
    if (!vm->loaded)
        return errf(err, errlen, "no kernel loaded");
    if (vm->started)
        return errf(err, errlen, "VM already started");
    vm->pio.sealed = vm->mmio.sealed = true;
    if (vm->seccomp && seccomp_check(err, errlen) < 0)
        return -1;
    if ((vm->seccomp & VMM_SECCOMP_IO) && vm->io && seccomp_expect_ioloop(vm->io, vm, err, errlen) < 0)
        return -1;
    if (vm_virtio_start(vm, err, errlen) < 0) {
        seccomp_forget_ioloop(vm->io);
        return -1;
    }
    return vcpus_start(vm, err, errlen);
}

/* ---- running and ending ------------------------------------------------------------- */

void timeline_mark(int64_t *slot)
{
    int64_t zero = 0;
    __atomic_compare_exchange_n(slot, &zero, now_ns(), false, __ATOMIC_RELAXED, __ATOMIC_RELAXED);
}

void vm_end(struct vmm_vm *vm, int kind, int code, const char *fmt, ...)
{
    pthread_mutex_lock(&vm->lock);
    if (vm->exit.kind == VMM_EXIT_RUNNING) {
        vm->exit.kind = kind;
        vm->exit.code = code;
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(vm->exit.message, sizeof(vm->exit.message), fmt, ap);
        va_end(ap);
        timeline_mark(&vm->t_exit);
    }
    __atomic_store_n(&vm->stopping, 1, __ATOMIC_SEQ_CST);
    pthread_cond_broadcast(&vm->pause_cond); /* a parked vCPU must see stopping too */
    pthread_mutex_unlock(&vm->lock);
    vcpus_kick(vm);
}

void vm_irq_line(struct vmm_vm *vm, int irq, int level)
{
    struct kvm_irq_level l = { .irq = irq, .level = level };
    ioctl(vm->vm_fd, KVM_IRQ_LINE, &l);
}

int vmm_vm_wait(struct vmm_vm *vm, int timeout_ms)
{
    struct timespec deadline;
    clock_gettime(CLOCK_MONOTONIC, &deadline);
    if (timeout_ms >= 0) {
        deadline.tv_sec += timeout_ms / 1000;
        deadline.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
        if (deadline.tv_nsec >= 1000000000L) {
            deadline.tv_sec++;
            deadline.tv_nsec -= 1000000000L;
        }
    }
    pthread_mutex_lock(&vm->lock);
    while (vm->started && vm->running_threads > 0) {
        if (timeout_ms < 0)
            pthread_cond_wait(&vm->ended_cond, &vm->lock);
        else if (pthread_cond_timedwait(&vm->ended_cond, &vm->lock, &deadline) == ETIMEDOUT)
            break;
    }
    int ended = !vm->started || vm->running_threads == 0;
    pthread_mutex_unlock(&vm->lock);
    return ended;
}

int vmm_vm_pause(struct vmm_vm *vm, int paused, char *err, size_t errlen)
{
    if (!vm->started)
        return errf(err, errlen, "the VM is not running");
    pthread_mutex_lock(&vm->lock);
    vm->paused = paused != 0;
    pthread_cond_broadcast(&vm->pause_cond);
    pthread_mutex_unlock(&vm->lock);
    if (!paused)
        return 0;
    vcpus_kick(vm);
    /* Return once every live vCPU is parked (or the VM ended): a paused guest runs no
     * instruction after this returns. A vCPU blocked on its console fd is kicked out of
     * that too; re-kick now and then, a kick can land just before a blocking call. */
    struct timespec deadline;
    clock_gettime(CLOCK_MONOTONIC, &deadline);
    deadline.tv_sec += 5;
    int rc = 0;
    pthread_mutex_lock(&vm->lock);
    while (vm->paused && vm->parked < vm->running_threads && !vm->stopping) {
        struct timespec slice;
        clock_gettime(CLOCK_MONOTONIC, &slice);
        if (slice.tv_sec > deadline.tv_sec ||
            (slice.tv_sec == deadline.tv_sec && slice.tv_nsec >= deadline.tv_nsec)) {
            rc = errf(err, errlen, "the vCPUs did not stop within 5 s");
            break;
        }
        slice.tv_nsec += 20 * 1000000L;
        if (slice.tv_nsec >= 1000000000L) {
            slice.tv_sec++;
            slice.tv_nsec -= 1000000000L;
        }
        pthread_cond_timedwait(&vm->pause_cond, &vm->lock, &slice);
        if (vm->parked < vm->running_threads) {
            pthread_mutex_unlock(&vm->lock);
            vcpus_kick(vm);
            pthread_mutex_lock(&vm->lock);
        }
    }
    pthread_mutex_unlock(&vm->lock);
    return rc;
}

void vmm_vm_stop(struct vmm_vm *vm)
{
    if (vm->started)
        vm_end(vm, VMM_EXIT_HOST_STOP, 0, "stopped by the host");
}

void vmm_vm_exit_info(struct vmm_vm *vm, struct vmm_exit_info *out)
{
    pthread_mutex_lock(&vm->lock);
    *out = vm->exit;
    pthread_mutex_unlock(&vm->lock);
}

void vmm_vm_stats(struct vmm_vm *vm, struct vmm_exit_stats *out)
{
    uint64_t v[ST_COUNT];
    for (int i = 0; i < ST_COUNT; i++)
        v[i] = __atomic_load_n(&vm->stats[i], __ATOMIC_RELAXED);
    _Static_assert(sizeof(v) == sizeof(*out), "enum stat and struct vmm_exit_stats disagree");
    memcpy(out, v, sizeof(v));
}

void vmm_vm_timeline(struct vmm_vm *vm, struct vmm_timeline *out)
{
    out->vm_created = __atomic_load_n(&vm->t_vm_created, __ATOMIC_RELAXED);
    out->kernel_loaded = __atomic_load_n(&vm->t_kernel_loaded, __ATOMIC_RELAXED);
    out->first_vcpu_entry = __atomic_load_n(&vm->t_first_vcpu_entry, __ATOMIC_RELAXED);
    out->boot_timer = __atomic_load_n(&vm->t_boot_timer, __ATOMIC_RELAXED);
    out->exit = __atomic_load_n(&vm->t_exit, __ATOMIC_RELAXED);
}

int vmm_vm_boot_info(struct vmm_vm *vm, struct vmm_boot_info *out)
{
    memset(out, 0, sizeof(*out));
    if (!vm->loaded)
        return -1;
    snprintf(out->kind, sizeof(out->kind), "%s", vm->boot.kind);
    out->entry = vm->boot.entry;
    out->boot_arg = vm->boot.boot_arg;
    out->kernel_end = vm->boot.kernel_end;
    out->initrd_addr = vm->boot.initrd_addr;
    out->initrd_size = vm->boot.initrd_size;
    return 0;
}

int vmm_vm_e820(struct vmm_vm *vm, struct vmm_e820_entry *out, int max)
{
    int n = vm->e820.n < max ? vm->e820.n : max;
    memcpy(out, vm->e820.e, n * sizeof(*out));
    return n;
}

int vmm_vm_serial_input(struct vmm_vm *vm, const uint8_t *data, size_t len)
{
    return serial_input(vm->serial, data, len);
}

int vmm_vm_add_python_device(struct vmm_vm *vm, int is_mmio, uint64_t base, uint64_t len,
                             void *handle, char *err, size_t errlen)
{
    return python_device_add(vm, is_mmio, base, len, handle, err, errlen);
}

void vmm_vm_destroy(struct vmm_vm *vm)
{
    if (!vm)
        return;
    if (vm->started) {
        vmm_vm_stop(vm);
        vcpus_join(vm);
    }
    if (vm->io)
        seccomp_forget_ioloop(vm->io); /* if its thread never started */
    vm_virtio_destroy(vm); /* devices let go of guest memory and their eventfds */
    seccomp_probe_free(vm);
    for (int i = 0; i < VMM_MAX_CPUS; i++)
        vcpu_close(&vm->vcpus[i]);
    if (vm->vm_fd >= 0)
        close(vm->vm_fd);
    if (vm->kvm_fd >= 0)
        close(vm->kvm_fd);
    guest_mem_unmap(&vm->mem);
    serial_destroy(vm->serial);
    if (vm->console_fd >= 0)
        close(vm->console_fd);
    free(vm->cpuid);
    free(vm->msrs);
    pthread_cond_destroy(&vm->ended_cond);
    pthread_cond_destroy(&vm->pause_cond);
    pthread_mutex_destroy(&vm->lock);
    free(vm);
}

/* ---- loader check without KVM --------------------------------------------------------- */

int vmm_kernel_load_check(const char *kernel, const char *initrd, const char *cmdline,
                          uint64_t memory_bytes, char *err, size_t errlen)
{
    struct guest_mem m;
    if (guest_mem_map(&m, memory_bytes, false, false, err, errlen) < 0)
        return -1;
    struct e820_table e820;
    e820_build(&e820, &m);
    struct boot_info bi;
    int rc = x86_load(&m, &e820, kernel, initrd, cmdline, &bi, err, errlen);
    if (rc == 0)
        rc = mptable_write(&m, 1, err, errlen);
    guest_mem_unmap(&m);
    return rc;
}
