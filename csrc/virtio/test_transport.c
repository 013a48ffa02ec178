/* The test transport: runs a device against a buffer of synthetic guest memory supplied
 * by the caller (Python tests and fuzzers), with no VM and no front-end process.
 *
 * It is a transport like virtio-mmio and vhost-user, bound through vdev_bind(): guest
 * memory is one caller-owned buffer (more regions can be added, so that fuzzers can put
 * unmapped guard pages between them), the "driver" is the caller (features, queue
 * addresses), notifies run the device on the caller's thread and interrupts are only
 * counted, per queue. Attaching again to a device this transport already holds starts
 * over with the new memory (fuzzers do that between rounds); a device bound to another
 * transport is refused. A device with a backend of its own (vsock's sockets, net's
 * socket) gets a small event loop of its own here, as it would get the VM's or the
 * server's: the tests drive the queues, the loop the host side. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core_api.h"
#include "device.h"
#include "ioloop.h"

#define DEV(p) ((struct vdev *)(p))

struct test_transport {
    struct guest_mem mem;
    struct ioloop *loop;     /* serves the device's backend (d->poll_fd), if it has one */
    uint64_t irqs[VDEV_MAX_QUEUES];
};

/* The binding ended: stop the loop (no poll runs after this), then forget the memory. */
static void test_release(void *opaque)
{
    struct test_transport *t = opaque;
    ioloop_free(t->loop);
    free(t);
}

/* Runs the device's notify for every queue in more, again and again while the device
 * stops at its work budget (vdev_budget_spent), so one call serves a kick in full, as
 * callers expect; the budget's splits still happen (and are counted: budget_yields). On
 * the caller's thread for notifies, on the loop's after a poll. */
static void serve(struct vdev *d, uint32_t more)
{
    while (more) {
        pthread_mutex_lock(&d->lock);
        for (int qi = 0; qi < d->nqueues; qi++)
            if ((more & (1u << qi)) && d->vq[qi].ready)
                d->ops->notify(d, qi);
        pthread_mutex_unlock(&d->lock);
        more = vdev_take_more(d);
    }
}

/* The device's backend fd is ready (the test loop's thread). */
static void test_poll_ready(void *opaque, int fd)
{
    struct vdev *d = opaque;
    d->ops->poll(d);
    serve(d, vdev_take_more(d));
}

static void test_irq(void *opaque, int qi)
{
    struct test_transport *t = opaque;
    if (qi >= 0 && qi < VDEV_MAX_QUEUES)
        __atomic_fetch_add(&t->irqs[qi], 1, __ATOMIC_RELAXED);
}

int vmm_vdev_test_attach(struct vmm_vdev *dev, uint8_t *mem, uint64_t gpa, uint64_t size,
                         uint64_t features, char *err, size_t errlen)
{
    struct vdev *d = DEV(dev);
    struct test_transport *t = calloc(1, sizeof(*t));
    if (!t) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    guest_mem_init(&t->mem);
    if (guest_mem_add(&t->mem, gpa, size, mem) < 0) {
        free(t);
        snprintf(err, errlen, "bad test memory region gpa=0x%llx size=0x%llx",
                 (unsigned long long)gpa, (unsigned long long)size);
        return -1;
    }
    if (vdev_bound_to(d, test_irq))
        vdev_unbind(d); /* start over: frees the previous memory description */
    if (vdev_bind(d, &t->mem, test_irq, t, "the test transport", test_release, err, errlen) < 0) {
        free(t);
        return -1;
    }
    if (d->poll_fd >= 0 && ((t->loop = ioloop_new(err, errlen)) == NULL ||
                            ioloop_add(t->loop, d->poll_fd, test_poll_ready, d, err, errlen) < 0 ||
                            ioloop_start(t->loop, err, errlen) < 0)) {
        vdev_unbind(d); /* releases t and its loop */
        return -1;
    }
    pthread_mutex_lock(&d->lock);
    d->acked = features & d->features;
    pthread_mutex_unlock(&d->lock);
    return 0;
}

int vmm_vdev_test_add_memory(struct vmm_vdev *dev, uint8_t *mem, uint64_t gpa, uint64_t size,
                             char *err, size_t errlen)
{
    struct vdev *d = DEV(dev);
    int rc = -1;
    pthread_mutex_lock(&d->lock);  /* the device reads the regions under its lock */
    if (!d->transport || d->irq != test_irq)
        snprintf(err, errlen, "device has no test memory attached");
    else if (guest_mem_add(&((struct test_transport *)d->irq_opaque)->mem, gpa, size, mem) < 0)
        snprintf(err, errlen, "bad test memory region gpa=0x%llx size=0x%llx (overlap, wrap or "
                 "more than %d regions)", (unsigned long long)gpa, (unsigned long long)size,
                 GUEST_MEM_MAX_REGIONS);
    else
        rc = 0;
    pthread_mutex_unlock(&d->lock);
    return rc;
}

int vmm_vdev_test_queue(struct vmm_vdev *dev, int qi, uint32_t size, uint64_t desc, uint64_t avail,
                        uint64_t used, char *err, size_t errlen)
{
    struct vdev *d = DEV(dev);
    if (!vdev_bound_to(d, test_irq)) {
        snprintf(err, errlen, "device has no test memory attached");
        return -1;
    }
    if (qi < 0 || qi >= d->nqueues) {
        snprintf(err, errlen, "queue %d out of range (%d queues)", qi, d->nqueues);
        return -1;
    }
    if (size > d->queue_max) {
        snprintf(err, errlen, "queue size %u above the maximum %u", size, d->queue_max);
        return -1;
    }
    pthread_mutex_lock(&d->lock);
    d->vq[qi].last_avail = 0;
    int rc = vq_setup(&d->vq[qi], d->mem, (uint16_t)size, desc, avail, used, d->acked, err, errlen);
    pthread_mutex_unlock(&d->lock);
    return rc;
}

int vmm_vdev_test_notify(struct vmm_vdev *dev, int qi)
{
    struct vdev *d = DEV(dev);
    if (qi < 0 || qi >= d->nqueues)
        return -1;
    pthread_mutex_lock(&d->lock);
    d->ops->notify(d, qi);
    pthread_mutex_unlock(&d->lock);
    serve(d, vdev_take_more(d));
    pthread_mutex_lock(&d->lock);
    int rc = d->vq[qi].broken ? -1 : 0;
    pthread_mutex_unlock(&d->lock);
    return rc;
}

uint64_t vmm_vdev_test_irqs(struct vmm_vdev *dev, int qi)
{
    struct vdev *d = DEV(dev);
    if (qi < 0 || qi >= VDEV_MAX_QUEUES)
        return 0;
    uint64_t n = 0;
    pthread_mutex_lock(&d->lock);
    if (d->transport && d->irq == test_irq)
        n = __atomic_load_n(&((struct test_transport *)d->irq_opaque)->irqs[qi], __ATOMIC_RELAXED);
    pthread_mutex_unlock(&d->lock);
    return n;
}
