/* A port or MMIO range served by Python (tests, prototypes): each access becomes a call of
 * vmm_python_device_access(), implemented in Python through cffi, on the vCPU thread.
 * cffi takes the GIL for the call; nothing else in the core ever touches Python. */
#include <string.h>

#include "util.h"
#include "vm.h"

static void python_io(void *handle, uint64_t offset, uint8_t *data, uint32_t len, bool is_write)
{
    uint64_t value = 0;
    if (is_write) {
        memcpy(&value, data, len); /* x86 is little-endian: bytes are the value */
        vmm_python_device_access(handle, offset, len, 1, value);
        return;
    }
    value = vmm_python_device_access(handle, offset, len, 0, 0);
    memcpy(data, &value, len);
}

int python_device_add(struct vmm_vm *vm, int is_mmio, uint64_t base, uint64_t len, void *handle,
                      char *err, size_t errlen)
{
    if (!is_mmio && (base > 0xffff || len > 0x10000 - base))
        return errf(err, errlen, "port range [0x%llx, 0x%llx) is outside the 64 KiB I/O space",
                    (unsigned long long)base, (unsigned long long)(base + len));
    return bus_register(is_mmio ? &vm->mmio : &vm->pio, "python-device", base, len, python_io, handle,
                        err, errlen);
}
