/* Pieces shared by every device, and the one binding contract between a device and its
 * transport: see device.h. */
#include "device.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

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
    d->poll_fd = -1;
    for (int i = 0; i < VDEV_MAX_QUEUES; i++)
        d->kick_fd[i] = -1;
    pthread_mutex_init(&d->lock, NULL);
    pthread_mutex_init(&d->log_lock, NULL);
}

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

void vdev_log(struct vdev *d, const char *fmt, ...)
{
    char msg[320];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    pthread_mutex_lock(&d->log_lock);
    uint64_t now = now_ns(), suppressed = 0;
    bool print = d->log_lines < VDEV_LOG_BURST ||
                 now - d->log_last_ns >= VDEV_LOG_INTERVAL_S * 1000000000ull;
    if (print) {
        suppressed = d->log_suppressed;
        d->log_suppressed = 0;
        d->log_lines++;
        if (d->log_lines >= VDEV_LOG_BURST)
            d->log_last_ns = now;
    } else {
        d->log_suppressed++;
    }
    pthread_mutex_unlock(&d->log_lock);
    if (!print)
        return;
    if (suppressed)
        fprintf(stderr, "vmm: virtio-%s: %s (%llu similar messages suppressed before this one)\n",
                d->name, msg, (unsigned long long)suppressed);
    else if (d->log_lines == VDEV_LOG_BURST)
        fprintf(stderr, "vmm: virtio-%s: %s (further messages: at most one per %u s)\n", d->name,
                msg, VDEV_LOG_INTERVAL_S);
    else
        fprintf(stderr, "vmm: virtio-%s: %s\n", d->name, msg);
}

bool vdev_budget_spent(struct vdev *d, int qi, unsigned chains, uint64_t bytes)
{
    if (chains < VDEV_BUDGET_CHAINS && bytes < VDEV_BUDGET_BYTES)
        return false;
    __atomic_fetch_or(&d->more, 1u << qi, __ATOMIC_RELAXED);
    counter_add(d->c.budget_yields, 1);
    return true;
}

uint32_t vdev_take_more(struct vdev *d)
{
    return __atomic_exchange_n(&d->more, 0, __ATOMIC_RELAXED);
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
    vdev_log(d, "%s; the queue stops until the driver resets the device", d->broken);
}

void vdev_fail(struct vdev *d, const char *fmt, ...)
{
    if (!d->broken[0]) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(d->broken, sizeof(d->broken), fmt, ap);
        va_end(ap);
        vdev_log(d, "%s; the device needs a reset", d->broken);
    }
    d->failed = true;
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
    d->failed = false;
    __atomic_store_n(&d->more, 0, __ATOMIC_RELAXED); /* nothing left to serve */
    if (d->ops->reset)
        d->ops->reset(d);
}

int vdev_bind(struct vdev *d, const struct guest_mem *mem, vdev_irq_fn irq, void *opaque,
              const char *transport, void (*release)(void *opaque), char *err, size_t errlen)
{
    pthread_mutex_lock(&d->lock);
    if (d->transport) {
        const char *owner = d->transport;
        pthread_mutex_unlock(&d->lock);
        snprintf(err, errlen, "virtio-%s device is already attached (to %s); it cannot also serve %s",
                 d->name, owner, transport);
        return -1;
    }
    vdev_reset(d);
    d->mem = mem;
    d->irq = irq;
    d->irq_opaque = opaque;
    d->transport = transport;
    d->release = release;
    pthread_mutex_unlock(&d->lock);
    return 0;
}

/* Forgets the binding (lock held) and returns the transport's release call to make once
 * the lock is dropped. */
static void forget_binding(struct vdev *d, void (**release)(void *), void **opaque)
{
    *release = d->release;
    *opaque = d->irq_opaque;
    d->mem = NULL;
    d->irq = NULL;
    d->irq_opaque = NULL;
    d->transport = NULL;
    d->release = NULL;
}

void vdev_unbind(struct vdev *d)
{
    void (*release)(void *) = NULL;
    void *opaque = NULL;
    pthread_mutex_lock(&d->lock);
    if (d->transport) {
        vdev_reset(d); /* also folds the queues' rejected counts into d->c */
        forget_binding(d, &release, &opaque);
    }
    pthread_mutex_unlock(&d->lock);
    if (release)
        release(opaque);
}

bool vdev_bound_to(struct vdev *d, vdev_irq_fn irq)
{
    pthread_mutex_lock(&d->lock);
    bool yes = d->transport && d->irq == irq;
    pthread_mutex_unlock(&d->lock);
    return yes;
}

void vdev_free(struct vdev *d)
{
    if (!d)
        return;
    /* The binding ends first, so the transport's event loop no longer polls the device
     * (a transport still bound here is the test transport; the others unbind first). No
     * reset: the device's state is about to go anyway. */
    void (*release)(void *) = NULL;
    void *opaque = NULL;
    pthread_mutex_lock(&d->lock);
    forget_binding(d, &release, &opaque);
    pthread_mutex_unlock(&d->lock);
    if (release)
        release(opaque);
    if (d->ops->destroy)
        d->ops->destroy(d);
    for (int i = 0; i < d->nqueues; i++)
        vq_teardown(&d->vq[i]);
    pthread_mutex_destroy(&d->lock);
    pthread_mutex_destroy(&d->log_lock);
    free(d);
}
