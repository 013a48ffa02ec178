/* Boot-timer port: the guest writes the byte 123 to port 0x440 when init starts; the VMM
 * records when (timeline "boot_timer"). The project-wide convention, shared with the qemu
 * engine (which sees the same byte through isa-debugcon). */
#include "vm.h"

#define BOOT_TIMER_PORT  0x440
#define BOOT_TIMER_MAGIC 123

static void boot_timer_io(void *opaque, uint64_t offset, uint8_t *data, uint32_t len, bool is_write)
{
    struct vmm_vm *vm = opaque;
    if (!is_write) {
        data[0] = 0;
        return;
    }
    if (data[0] == BOOT_TIMER_MAGIC)
        timeline_mark(&vm->t_boot_timer);
}

int boot_timer_init(struct vmm_vm *vm, char *err, size_t errlen)
{
    return bus_register(&vm->pio, "boot-timer", BOOT_TIMER_PORT, 1, boot_timer_io, vm, err, errlen);
}
