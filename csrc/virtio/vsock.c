/* The virtio-vsock device: construction, reset and teardown. The packets, the connection
 * table and the host side are their own files; vsock.h says how they fit together. */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <unistd.h>

#include "devices.h"
#include "vsock.h"

static void vsock_reset(struct vdev *d) { close_all((struct vsock *)d); }

static void vsock_destroy(struct vdev *d)
{
    struct vsock *v = (struct vsock *)d;
    host_stop(v);
    free(v->scratch);
}

static const struct vdev_ops vsock_ops = {
    .notify = vsock_notify,
    .reset = vsock_reset,
    .poll = vsock_poll,
    .destroy = vsock_destroy,
};

struct vdev *vsock_new(uint64_t guest_cid, const char *uds_path, char *err, size_t errlen)
{
    if (guest_cid < 3 || guest_cid >= 0xffffffffull) {
        snprintf(err, errlen, "vsock guest CID %llu is reserved or out of range", (unsigned long long)guest_cid);
        return NULL;
    }
    /* Leave room for "_<port>" on the guest-initiated side. */
    if (strlen(uds_path) + 11 >= sizeof(((struct sockaddr_un *)0)->sun_path)) {
        snprintf(err, errlen, "vsock socket path %s is too long (max %zu bytes)", uds_path,
                 sizeof(((struct sockaddr_un *)0)->sun_path) - 12);
        return NULL;
    }
    struct vsock *v = calloc(1, sizeof(*v));
    if (!v || !(v->scratch = calloc(VQ_MAX_SEGS(VSOCK_QUEUE_MAX), sizeof(struct iovec)))) {
        free(v);
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    vdev_init(&v->d, "vsock", VIRTIO_ID_VSOCK, &vsock_ops,
              (1ull << VIRTIO_RING_F_INDIRECT_DESC) | (1ull << VIRTIO_RING_F_EVENT_IDX), 3, VSOCK_QUEUE_MAX);
    v->cid = guest_cid;
    memcpy(v->d.config, &guest_cid, 8);
    v->d.config_len = 8;
    v->next_host_port = FIRST_HOST_PORT;
    v->listen_fd = v->epfd = -1;
    snprintf(v->path, sizeof(v->path), "%s", uds_path);
    if (host_start(v, err, errlen) < 0)
        goto fail;
    return &v->d;
fail:
    vsock_destroy(&v->d);
    pthread_mutex_destroy(&v->d.lock);
    free(v);
    return NULL;
}
