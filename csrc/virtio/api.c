/* The Python-facing virtio API (see the virtio section of core_api.h): device
 * construction, counters, and a test transport that runs a device against a buffer of
 * synthetic guest memory supplied by the caller. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core_api.h"
#include "devices.h"

#define DEV(p) ((struct vdev *)(p))

/* The test transport: guest memory is one caller-owned buffer; interrupts are counted. */
struct test_transport {
    struct vm_mem mem;
    uint64_t irqs[VDEV_MAX_QUEUES];
};

static void test_irq(void *opaque, int qi)
{
    struct test_transport *t = opaque;
    if (qi >= 0 && qi < VDEV_MAX_QUEUES)
        __atomic_fetch_add(&t->irqs[qi], 1, __ATOMIC_RELAXED);
}

static char *copy_err(char *err, size_t errlen, const char *msg)
{
    if (err && errlen)
        snprintf(err, errlen, "%s", msg);
    return NULL;
}

struct vmm_vdev *vmm_blk_new(const char *path, int read_only, const char *serial, char *err, size_t errlen)
{
    return (struct vmm_vdev *)blk_new(path, read_only != 0, serial, err, errlen);
}

struct vmm_vdev *vmm_vsock_new(uint64_t guest_cid, const char *uds_path, char *err, size_t errlen)
{
    return (struct vmm_vdev *)vsock_new(guest_cid, uds_path, err, errlen);
}

struct vmm_vdev *vmm_net_new(int backend_fd, int kind, const uint8_t *mac, char *err, size_t errlen)
{
    if (kind != NET_BACKEND_STREAM && kind != NET_BACKEND_TAP) {
        copy_err(err, errlen, "unknown net backend kind");
        return NULL;
    }
    return (struct vmm_vdev *)net_new(backend_fd, kind, mac, err, errlen);
}

void vdev_free(struct vdev *d)
{
    if (!d)
        return;
    if (d->ops->destroy)
        d->ops->destroy(d);
    for (int i = 0; i < d->nqueues; i++)
        vq_teardown(&d->vq[i]);
    if (d->irq == test_irq)
        free(d->irq_opaque);
    pthread_mutex_destroy(&d->lock);
    free(d);
}

void vmm_vdev_free(struct vmm_vdev *dev) { vdev_free(DEV(dev)); }

const char *vmm_vdev_name(struct vmm_vdev *dev) { return DEV(dev)->name; }

void vmm_vdev_counters(struct vmm_vdev *dev, struct vmm_vdev_counters *out)
{
    struct vdev *d = DEV(dev);
    pthread_mutex_lock(&d->lock);
    *out = d->c;
    for (int i = 0; i < d->nqueues; i++)
        out->rejected += d->vq[i].rejected;
    pthread_mutex_unlock(&d->lock);
}

const char *vmm_vdev_broken(struct vmm_vdev *dev)
{
    struct vdev *d = DEV(dev);
    return d->broken[0] ? d->broken : NULL;
}

uint64_t vmm_vdev_features(struct vmm_vdev *dev) { return DEV(dev)->features; }

uint32_t vmm_vdev_config_read(struct vmm_vdev *dev, uint32_t off, uint8_t *buf, uint32_t len)
{
    struct vdev *d = DEV(dev);
    memset(buf, 0, len);
    if (off >= d->config_len)
        return 0;
    uint32_t n = d->config_len - off < len ? d->config_len - off : len;
    pthread_mutex_lock(&d->lock);
    memcpy(buf, d->config + off, n);
    pthread_mutex_unlock(&d->lock);
    return n;
}

int vmm_vdev_test_attach(struct vmm_vdev *dev, uint8_t *mem, uint64_t gpa, uint64_t size,
                         uint64_t features, char *err, size_t errlen)
{
    struct vdev *d = DEV(dev);
    struct test_transport *t = calloc(1, sizeof(*t));
    if (!t) {
        copy_err(err, errlen, "out of memory");
        return -1;
    }
    vm_mem_init(&t->mem);
    if (vm_mem_add(&t->mem, gpa, size, mem) < 0) {
        free(t);
        snprintf(err, errlen, "bad test memory region gpa=0x%llx size=0x%llx",
                 (unsigned long long)gpa, (unsigned long long)size);
        return -1;
    }
    pthread_mutex_lock(&d->lock);
    vdev_reset(d);
    if (d->irq == test_irq)
        free(d->irq_opaque);
    d->mem = &t->mem;
    d->irq = test_irq;
    d->irq_opaque = t;
    d->acked = features & d->features;
    pthread_mutex_unlock(&d->lock);
    return 0;
}

int vmm_vdev_test_queue(struct vmm_vdev *dev, int qi, uint32_t size, uint64_t desc, uint64_t avail,
                        uint64_t used, char *err, size_t errlen)
{
    struct vdev *d = DEV(dev);
    if (d->irq != test_irq) {
        copy_err(err, errlen, "device has no test memory attached");
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
    int rc = d->vq[qi].broken ? -1 : 0;
    pthread_mutex_unlock(&d->lock);
    return rc;
}

uint64_t vmm_vdev_test_irqs(struct vmm_vdev *dev, int qi)
{
    struct vdev *d = DEV(dev);
    if (d->irq != test_irq || qi < 0 || qi >= VDEV_MAX_QUEUES)
        return 0;
    return __atomic_load_n(&((struct test_transport *)d->irq_opaque)->irqs[qi], __ATOMIC_RELAXED);
}

void vmm_vdev_reset(struct vmm_vdev *dev)
{
    struct vdev *d = DEV(dev);
    pthread_mutex_lock(&d->lock);
    vdev_reset(d);
    pthread_mutex_unlock(&d->lock);
}
