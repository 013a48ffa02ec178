/* Pieces shared by every device: see device.h. */
#include "device.h"

#include <stdio.h>
#include <string.h>

void vdev_init(struct vdev *d, const char *name, uint32_t device_id, const struct vdev_ops *ops,
               uint64_t features, int nqueues, uint16_t queue_max)
{
    memset(d, 0, sizeof(*d));
    d->name = name;
    d->device_id = device_id;
    d->ops = ops;
    d->features = features | (1ull << VIRTIO_F_VERSION_1);
    d->nqueues = nqueues;
    d->queue_max = queue_max;
    pthread_mutex_init(&d->lock, NULL);
}

void vdev_signal(struct vdev *d, int qi)
{
    if (!vq_need_notify(&d->vq[qi]))
        return;
    counter_add(d->c.interrupts, 1);
    if (d->irq)
        d->irq(d->irq_opaque, qi);
}

void vdev_note_broken(struct vdev *d, int qi)
{
    struct vq *q = &d->vq[qi];
    if (!q->broken || d->broken[0])
        return;
    snprintf(d->broken, sizeof(d->broken), "queue %d: %s", qi, q->reason);
    fprintf(stderr, "vmm: virtio-%s: %s; the queue stops until the driver resets the device\n",
            d->name, d->broken);
}

void vdev_reset(struct vdev *d)
{
    for (int i = 0; i < d->nqueues; i++) {
        d->c.rejected += d->vq[i].rejected;
        vq_teardown(&d->vq[i]);
        d->vq[i].last_avail = 0;
    }
    d->acked = 0;
    d->broken[0] = 0;
    if (d->ops->reset)
        d->ops->reset(d);
}
