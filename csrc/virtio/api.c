/* The Python-facing virtio device API (see the virtio section of core_api.h): device
 * construction, counters, config reads and reset. Transports have their own files
 * (mmio.c, vhost_user.c, test_transport.c). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core_api.h"
#include "devices.h"

#define DEV(p) ((struct vdev *)(p))

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

int vmm_net_set_policy(struct vmm_vdev *dev, struct vmm_net_policy *policy, char *err, size_t errlen)
{
    if (DEV(dev)->device_id != VIRTIO_ID_NET) {
        copy_err(err, errlen, "an egress policy applies to a virtio-net device only");
        return -1;
    }
    net_set_policy(DEV(dev), policy);
    return 0;
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

void vmm_vdev_reset(struct vmm_vdev *dev)
{
    struct vdev *d = DEV(dev);
    pthread_mutex_lock(&d->lock);
    vdev_reset(d);
    pthread_mutex_unlock(&d->lock);
}
