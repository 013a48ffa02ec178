/* The bit of the i8042 keyboard controller Linux needs: `reboot=k` writes the command 0xFE
 * ("pulse the reset line") to port 0x64, which ends the VM as a clean guest reset. Status
 * reads say "nothing to read, ready for input", so probes end quickly instead of hanging. */
#include <string.h>

#include "vm.h"

#define I8042_DATA    0x60
#define I8042_COMMAND 0x64
#define CMD_RESET     0xfe

static void i8042_io(void *opaque, uint64_t offset, uint8_t *data, uint32_t len, bool is_write)
{
    struct vmm_vm *vm = opaque;
    if (!is_write) {
        memset(data, 0, len); /* status: output buffer empty, input buffer empty */
        return;
    }
    if (offset == I8042_COMMAND - I8042_DATA && data[0] == CMD_RESET)
        vm_end(vm, VMM_EXIT_SHUTDOWN, 0, "guest reset (i8042 0xFE)");
}

int i8042_init(struct vmm_vm *vm, char *err, size_t errlen)
{
    return bus_register(&vm->pio, "i8042", I8042_DATA, I8042_COMMAND - I8042_DATA + 1, i8042_io, vm,
                        err, errlen);
}
