/* A KVM VM's virtio devices: where each one sits (MMIO window, IRQ) and the device I/O
 * thread that serves their queue notifies.
 *
 * IRQs: ISA IRQs, because KVM's default routing sends GSI 0-15 to both the PIC and the
 * IOAPIC (a guest with `noapic` still gets them) and our MP table declares an ISA
 * interrupt source for each, which Linux programs edge-triggered (see mmio.c). Taken:
 * 0 (PIT), 1 and 12 (i8042 keyboard and mouse: Linux's i8042 driver may claim 12),
 * 2 (PIC cascade), 3 and 4 (COM2, COM1), 8 (RTC: Linux may probe a CMOS clock and
 * claim it). That leaves eight, one device each (no sharing: edges do not share well). */
#include <string.h>

#include "ioloop.h"
#include "layout.h"
#include "util.h"
#include "virtio/device.h"
#include "virtio/mmio.h"
#include "vm.h"

static const int free_irqs[VMM_MAX_VDEVS] = { 5, 6, 7, 9, 10, 11, 14, 15 };

/* The one place that decides where the index-th device sits: Python builds the guest's
 * command line from it before any VM exists, and vmm_vm_add_device uses the same. */
int vmm_virtio_mmio_slot(int index, struct vmm_virtio_mmio_info *out)
{
    if (index < 0 || index >= VMM_MAX_VDEVS)
        return -1;
    memset(out, 0, sizeof(*out));
    out->base = LAYOUT_VIRTIO_MMIO + (uint64_t)index * VIRTIO_MMIO_WINDOW;
    out->size = VIRTIO_MMIO_WINDOW;
    out->irq = free_irqs[index];
    return 0;
}

int vmm_vm_add_device(struct vmm_vm *vm, struct vmm_vdev *dev, int flags,
                      struct vmm_virtio_mmio_info *out, char *err, size_t errlen)
{
    if (vm->started)
        return errf(err, errlen, "cannot add a device to a running VM");
    if (vm->nvdevs >= VMM_MAX_VDEVS)
        return errf(err, errlen, "too many virtio devices (limit %d, one per free IRQ)", VMM_MAX_VDEVS);
    if (!vm->io) {
        vm->io = ioloop_new(err, errlen);
        if (!vm->io)
            return -1;
    }
    int i = vm->nvdevs;
    struct vmm_virtio_mmio_info slot;
    vmm_virtio_mmio_slot(i, &slot);
    struct virtio_mmio *t = virtio_mmio_attach(vm, vm->io, (struct vdev *)dev, slot.base, slot.irq,
                                               flags, err, errlen);
    if (!t)
        return -1;
    vm->vdevs[vm->nvdevs++] = t;
    if (out)
        virtio_mmio_info(t, out);
    return 0;
}

int vmm_vm_device_info(struct vmm_vm *vm, int index, struct vmm_virtio_mmio_info *out)
{
    if (index < 0 || index >= vm->nvdevs)
        return -1;
    virtio_mmio_info(vm->vdevs[index], out);
    return 0;
}

int vm_virtio_start(struct vmm_vm *vm, char *err, size_t errlen)
{
    return vm->io ? ioloop_start(vm->io, err, errlen) : 0;
}

void vm_virtio_destroy(struct vmm_vm *vm)
{
    ioloop_free(vm->io); /* no notify runs after this */
    vm->io = NULL;
    for (int i = 0; i < vm->nvdevs; i++)
        virtio_mmio_detach(vm->vdevs[i]);
    vm->nvdevs = 0;
}
