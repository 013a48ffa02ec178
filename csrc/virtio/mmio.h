/* The virtio-mmio transport, version 2 (virtio 1.x section 4.2), for the KVM engine.
 *
 * One struct virtio_mmio serves one device (struct vdev) in a 4 KiB window of the guest's
 * MMIO space and one interrupt line. It knows the device only through device.h: it keeps
 * the register file, hands the device guest memory and checked queues, forwards queue
 * notifies to the device's notify op on the VM's device I/O thread, and raises the
 * device's interrupts. Every value the guest writes is checked; a bad one puts the device
 * in DEVICE_NEEDS_RESET (the driver sees it in Status), never the VMM in trouble. */
#ifndef VIRTIO_MMIO_H
#define VIRTIO_MMIO_H
#include <stddef.h>
#include <stdint.h>

#include "core_api.h"

#define VIRTIO_MMIO_WINDOW 0x1000

struct vmm_vm;
struct vdev;
struct ioloop;
struct virtio_mmio;

/* Registers the window [base, base + 4 KiB) on vm's MMIO bus and wires notify and
 * interrupt: an ioeventfd on QueueNotify (one per queue, matched on the queue index)
 * and an irqfd on irq, unless flags (VMM_VDEV_NO_*) say otherwise or KVM refuses, in
 * which case notifies arrive as MMIO exits and interrupts go through KVM_IRQ_LINE.
 * Before the VM starts only. */
struct virtio_mmio *virtio_mmio_attach(struct vmm_vm *vm, struct ioloop *io, struct vdev *d,
                                       uint64_t base, int irq, int flags, char *err, size_t errlen);
/* After the vCPUs and the I/O thread have stopped: resets the device, gives it back
 * without memory or interrupt, releases the eventfds and frees t. */
void virtio_mmio_detach(struct virtio_mmio *t);
void virtio_mmio_info(struct virtio_mmio *t, struct vmm_virtio_mmio_info *out);

#endif
