/* The device side of virtio, as every device implements it and every transport drives it.
 *
 * A device is a struct vdev (embedded first in the device's own struct) plus its ops.
 * It knows guest memory only through d->mem and its queues, and raises interrupts only
 * through d->irq, which the transport supplies: virtio-mmio (in-process, KVM engine) or
 * vhost-user (QEMU engine). Transports call the ops with d->lock held; a device thread
 * that touches queues (vsock's socket thread, net's backend thread) takes d->lock too, so
 * a transport replacing guest memory or a queue never races a device using it. */
#ifndef VIRTIO_DEVICE_H
#define VIRTIO_DEVICE_H
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "core_api.h"
#include "mem.h"
#include "queue.h"

#define VDEV_MAX_QUEUES 4
#define VDEV_CONFIG_MAX 256

#define VIRTIO_ID_NET 1
#define VIRTIO_ID_BLOCK 2
#define VIRTIO_ID_VSOCK 19

struct vdev;

struct vdev_ops {
    /* Queue qi may have new buffers. */
    void (*notify)(struct vdev *d, int qi);
    /* The driver reset the device: drop every connection and in-flight state. Queues are
     * torn down by the transport before this is called. */
    void (*reset)(struct vdev *d);
    /* Optional: the driver wrote config space (already stored in d->config). */
    void (*config_write)(struct vdev *d, uint32_t off, uint32_t len);
    /* Stop threads and free everything the device owns (not the struct vdev itself). */
    void (*destroy)(struct vdev *d);
};

struct vdev {
    const char *name;
    uint32_t device_id;
    const struct vdev_ops *ops;
    uint64_t features;  /* offered */
    uint64_t acked;     /* accepted by the driver */
    uint8_t config[VDEV_CONFIG_MAX];
    uint32_t config_len;
    int nqueues;
    uint16_t queue_max;
    struct vq vq[VDEV_MAX_QUEUES];
    const struct vm_mem *mem;
    pthread_mutex_t lock;
    /* Supplied by the transport; called with d->lock held. */
    void (*irq)(void *opaque, int qi);
    void *irq_opaque;
    struct vmm_vdev_counters c;
    char broken[200]; /* first reason a queue broke, for the user */
};

void vdev_init(struct vdev *d, const char *name, uint32_t device_id, const struct vdev_ops *ops,
               uint64_t features, int nqueues, uint16_t queue_max);
/* Interrupts the guest for queue qi if the driver wants one for what was pushed. */
void vdev_signal(struct vdev *d, int qi);
/* Records (and logs once) why queue qi broke. */
void vdev_note_broken(struct vdev *d, int qi);
/* Tears down every queue and calls the device's reset; lock held. */
void vdev_reset(struct vdev *d);

#define counter_add(field, n) __atomic_fetch_add(&(field), (n), __ATOMIC_RELAXED)

#endif
