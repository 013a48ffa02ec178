/* Boot-timer port: the guest writes the byte 123 to port 0x440 when init starts; the VMM
 * records when (timeline "boot_timer") and what the exit counters said at that instant,
 * so exits split exactly into before and after init. The project-wide convention, shared
 * with the qemu engine (which sees the same byte through isa-debugcon). */
#include <string.h>

#include "util.h"
#include "vm.h"

#define BOOT_TIMER_PORT  0x440
#define BOOT_TIMER_MAGIC 123

/* The first write wins the timestamp and copies the counters: on the vCPU thread, under
 * its seccomp filter, so nothing here but memory reads and the vDSO clock (as
 * timeline_mark). The counter of this very exit was bumped before the handler ran
 * (vcpu.c), so the copy includes it; other vCPUs may still be counting meanwhile, which
 * is as exact as "at that instant" can be with more than one. */
static void mark_boot_timer(struct vmm_vm *vm)
{
    int64_t zero = 0;
    if (!__atomic_compare_exchange_n(&vm->t_boot_timer, &zero, now_ns(), false,
                                     __ATOMIC_RELAXED, __ATOMIC_RELAXED))
        return;
    for (int i = 0; i < ST_COUNT; i++)
        vm->stats_at_boot_timer.v[i] = __atomic_load_n(&vm->stats[i], __ATOMIC_RELAXED);
    __atomic_store_n(&vm->stats_at_boot_timer.ready, 1, __ATOMIC_RELEASE);
}

static void boot_timer_io(void *opaque, uint64_t offset, uint8_t *data, uint32_t len, bool is_write)
{
    struct vmm_vm *vm = opaque;
    if (!is_write) {
        data[0] = 0;
        return;
    }
    if (data[0] == BOOT_TIMER_MAGIC)
        mark_boot_timer(vm);
}

int boot_timer_init(struct vmm_vm *vm, char *err, size_t errlen)
{
    return bus_register(&vm->pio, "boot-timer", BOOT_TIMER_PORT, 1, boot_timer_io, vm, err, errlen);
}

int vmm_vm_stats_at_boot_timer(struct vmm_vm *vm, struct vmm_exit_stats *out)
{
    _Static_assert(sizeof(vm->stats_at_boot_timer.v) == sizeof(*out),
                   "enum exit_stat and struct vmm_exit_stats disagree");
    if (!__atomic_load_n(&vm->stats_at_boot_timer.ready, __ATOMIC_ACQUIRE)) {
        memset(out, 0, sizeof(*out));
        return -1;
    }
    memcpy(out, vm->stats_at_boot_timer.v, sizeof(*out));
    return 0;
}
