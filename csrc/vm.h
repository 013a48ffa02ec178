/* The VM object shared by the core's C files (not visible to Python). */
#ifndef VMM_VM_H
#define VMM_VM_H
#include <linux/kvm.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "bus.h"
#include "core_api.h"
#include "e820.h"
#include "guest_mem.h"
#include "x86_boot.h"

#define VMM_MAX_CPUS 64
#define VMM_MAX_VDEVS 8  /* one per free ISA IRQ: see vm_virtio.c */

/* Indexes into vm->stats, in the order of struct vmm_exit_stats's fields. */
enum exit_stat {
    ST_IO, ST_MMIO, ST_HLT, ST_SHUTDOWN, ST_INTERNAL_ERROR, ST_FAIL_ENTRY, ST_SYSTEM_EVENT,
    ST_INTR, ST_OTHER, ST_UNCLAIMED_IO, ST_UNCLAIMED_MMIO, ST_COUNT
};

struct vcpu {
    struct vmm_vm *vm;
    int index;               /* also its APIC id */
    int fd;
    struct kvm_run *run;
    size_t run_size;
    pthread_t thread;        /* as created; joined by vcpus_join() */
    bool thread_started;
    bool joined;
    pthread_t self;          /* set by the thread itself; valid while alive (under vm->lock) */
    bool alive;
};

struct serial;
struct ioloop;
struct virtio_mmio;

struct vmm_vm {
    int kvm_fd, vm_fd;
    uint32_t ncpus;
    struct guest_mem mem;
    struct e820_table e820;
    struct vcpu vcpus[VMM_MAX_CPUS];
    struct bus pio, mmio;
    struct serial *serial;
    /* virtio devices (vm_virtio.c): the device I/O thread and one virtio-mmio transport
     * per device (they see guest RAM through mem, like the loader). */
    struct ioloop *io;
    struct virtio_mmio *vdevs[VMM_MAX_VDEVS];
    int nvdevs;
    int console_fd;          /* our dup of the caller's fd; closed when the last vCPU ends */
    int seccomp;             /* enum vmm_seccomp_threads to confine (seccomp.h) */
    struct seccomp_probe *seccomp_probe; /* tests only (seccomp_probe.c) */

    struct kvm_cpuid2 *cpuid;   /* KVM_GET_SUPPORTED_CPUID, patched per vCPU */
    struct kvm_msr_list *msrs;  /* KVM_GET_MSR_INDEX_LIST: the only MSRs we may set */
    bool tsc_deadline;

    bool loaded, started;
    struct boot_info boot;

    /* End of the VM. stopping is read by vCPU threads without the lock. */
    volatile int stopping;
    pthread_mutex_t lock;
    pthread_cond_t ended_cond;
    /* Pause (vmm_vm_pause): vCPU threads park outside KVM_RUN while paused is set; parked
     * counts them, pause_cond wakes both sides. Under lock. */
    bool paused;
    int parked;
    pthread_cond_t pause_cond;
    int running_threads;
    struct vmm_exit_info exit;

    uint64_t stats[ST_COUNT];   /* updated with __atomic builtins */
    int64_t t_vm_created, t_kernel_loaded, t_first_vcpu_entry, t_boot_timer, t_exit;
    /* stats as they stood at the first boot-timer write (boot_timer.c): copied once by the
     * vCPU thread that wrote it, then ready is set (release), so a reader that sees ready
     * sees the whole copy. */
    struct { int ready; uint64_t v[ST_COUNT]; } stats_at_boot_timer;
};

static inline void stat_inc(struct vmm_vm *vm, enum exit_stat s)
{
    __atomic_fetch_add(&vm->stats[s], 1, __ATOMIC_RELAXED);
}

/* Record a timeline point once (the first caller wins). */
void timeline_mark(int64_t *slot);

/* End the VM: the first caller's kind and message stick; every vCPU is kicked out. */
void vm_end(struct vmm_vm *vm, int kind, int code, const char *fmt, ...) __attribute__((format(printf, 4, 5)));
/* Drive an interrupt line of the in-kernel irqchip (ISA IRQs 0-15). */
void vm_irq_line(struct vmm_vm *vm, int irq, int level);

/* vcpu.c */
int vcpu_create(struct vmm_vm *vm, int index, int mmap_size, char *err, size_t errlen);
void vcpu_close(struct vcpu *c);
int vcpus_start(struct vmm_vm *vm, char *err, size_t errlen);
void vcpus_kick(struct vmm_vm *vm);
void vcpus_join(struct vmm_vm *vm);

/* x86_cpu.c: registers, CPUID, MSRs, LAPIC for one vCPU at the boot entry. */
int x86_setup_vcpu(struct vmm_vm *vm, struct vcpu *c, char *err, size_t errlen);
/* "rip=0x... rsp=... cr0=..." for error messages. */
void x86_describe_vcpu(struct vcpu *c, char *buf, size_t len);

/* mptable.c */
int mptable_write(struct guest_mem *m, int ncpus, char *err, size_t errlen);

/* devices */
struct serial *serial_create(struct vmm_vm *vm, uint16_t base, int irq, char *err, size_t errlen);
void serial_destroy(struct serial *s);
int serial_input(struct serial *s, const uint8_t *data, size_t len);
int i8042_init(struct vmm_vm *vm, char *err, size_t errlen);
int boot_timer_init(struct vmm_vm *vm, char *err, size_t errlen);
/* vm_virtio.c: start the device I/O thread (vmm_vm_start); detach every device after the
 * vCPUs have stopped and before guest memory goes (vmm_vm_destroy). */
int vm_virtio_start(struct vmm_vm *vm, char *err, size_t errlen);
void vm_virtio_destroy(struct vmm_vm *vm);
int python_device_add(struct vmm_vm *vm, int is_mmio, uint64_t base, uint64_t len, void *handle,
                      char *err, size_t errlen);

#endif
