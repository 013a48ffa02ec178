/* A vhost-user back-end ("slave") serving one struct vdev on a Unix socket.
 *
 * Protocol: QEMU docs/interop/vhost-user.rst. The front-end (QEMU) owns the virtio
 * transport; we receive its guest memory as fds (mapped here), the rings' addresses in
 * its address space, an eventfd per queue to wait on (kick) and one to signal (call).
 * One thread serves everything: the control connection and the kick eventfds, so a
 * memory-table change never races queue processing on this thread; device threads of
 * their own (vsock, net) are kept out by d->lock, which we hold while changing memory or
 * rings. Every message is length-checked; a malformed one closes the connection (the
 * device is reset and the server waits for the next front-end), never the process. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <time.h>
#include <sys/un.h>
#include <unistd.h>

#include "core_api.h"
#include "device.h"

enum {
    VU_GET_FEATURES = 1,
    VU_SET_FEATURES = 2,
    VU_SET_OWNER = 3,
    VU_RESET_OWNER = 4,
    VU_SET_MEM_TABLE = 5,
    VU_SET_LOG_BASE = 6,
    VU_SET_LOG_FD = 7,
    VU_SET_VRING_NUM = 8,
    VU_SET_VRING_ADDR = 9,
    VU_SET_VRING_BASE = 10,
    VU_GET_VRING_BASE = 11,
    VU_SET_VRING_KICK = 12,
    VU_SET_VRING_CALL = 13,
    VU_SET_VRING_ERR = 14,
    VU_GET_PROTOCOL_FEATURES = 15,
    VU_SET_PROTOCOL_FEATURES = 16,
    VU_GET_QUEUE_NUM = 17,
    VU_SET_VRING_ENABLE = 18,
    VU_SET_SLAVE_REQ_FD = 21,
    VU_GET_CONFIG = 24,
    VU_SET_CONFIG = 25,
    VU_RESET_DEVICE = 34,
};

#define VU_F_PROTOCOL_FEATURES 30
#define VU_PROTO_F_REPLY_ACK 3
#define VU_PROTO_F_CONFIG 9
#define VU_PROTO_F_RESET_DEVICE 13

#define VU_VERSION 0x1
#define VU_FLAG_REPLY (1u << 2)
#define VU_FLAG_NEED_REPLY (1u << 3)
#define VU_VRING_NOFD (1ull << 8)
#define VU_MAX_FDS 8
#define VU_MAX_PAYLOAD 4096
#define VU_CONFIG_HDR 12
#define VU_MSG_TIMEOUT_S 10
/* While rings run, look at them this often even without a kick: see rings_tick(). */
#define VU_TICK_MS 10

struct vu_hdr {
    uint32_t request;
    uint32_t flags;
    uint32_t size;
} __attribute__((packed));

struct vu_region {
    uint64_t gpa, size, uva, mmap_offset;
};

struct vu_msg {
    struct vu_hdr h;
    uint8_t payload[VU_MAX_PAYLOAD];
    int fds[VU_MAX_FDS];
    int nfds;
};

struct vu_ring {
    uint16_t num;
    uint64_t desc_uva, avail_uva, used_uva;
    bool addr_set;
    int kick, call, err;
    bool enabled;
    bool started;
};

struct vu_map {
    uint64_t uva, gpa, size;
    void *base;     /* mmap'd from offset 0 of the fd ... */
    size_t maplen;  /* ... to mmap_offset + size */
};

struct vmm_vhost_user {
    struct vdev *d;
    char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
    int listen_fd, conn, epfd, stop_efd;
    pthread_t thread;
    bool thread_started;
    struct guest_mem mem;
    struct vu_map maps[GUEST_MEM_MAX_REGIONS];
    int nmaps;
    struct vu_ring ring[VDEV_MAX_QUEUES];
    uint64_t protocol_features;
    bool proto_acked;
    char error[200];
    /* Guards s->conn between the server thread (which closes it) and stop (which shuts
     * it down to wake a thread blocked in the middle of a message). */
    pthread_mutex_t conn_lock;
};

/* epoll tags */
#define TAG_STOP 1
#define TAG_LISTEN 2
#define TAG_CONN 3
#define TAG_KICK0 16

static int fail(struct vmm_vhost_user *s, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(s->error, sizeof(s->error), fmt, ap);
    va_end(ap);
    fprintf(stderr, "vmm: vhost-user %s: %s; closing the connection\n", s->path, s->error);
    return -1;
}

static void close_fd(int *fd)
{
    if (*fd >= 0)
        close(*fd);
    *fd = -1;
}

static void epoll_set(struct vmm_vhost_user *s, int fd, uint64_t tag, bool add)
{
    struct epoll_event ev = { .events = EPOLLIN, .data.u64 = tag };
    epoll_ctl(s->epfd, add ? EPOLL_CTL_ADD : EPOLL_CTL_DEL, fd, &ev);
}

/* CONFIG only where QEMU's front-end reads config space from the back-end (blk, vsock);
 * its virtio-net keeps config (MAC, status) itself and warns if CONFIG is offered. */
static uint64_t offered_protocol_features(const struct vdev *d)
{
    uint64_t f = (1ull << VU_PROTO_F_REPLY_ACK) | (1ull << VU_PROTO_F_RESET_DEVICE);
    if (d->config_len && d->device_id != VIRTIO_ID_NET)
        f |= 1ull << VU_PROTO_F_CONFIG;
    return f;
}

/* ---- the device's interrupt: signal the ring's call eventfd ---- */

static void vu_irq(void *opaque, int qi)
{
    struct vmm_vhost_user *s = opaque;
    if (qi >= 0 && qi < VDEV_MAX_QUEUES && s->ring[qi].call >= 0)
        eventfd_write(s->ring[qi].call, 1);
}

/* ---- memory ---- */

static void unmap_all(struct vmm_vhost_user *s)
{
    for (int i = 0; i < s->nmaps; i++)
        munmap(s->maps[i].base, s->maps[i].maplen);
    s->nmaps = 0;
    guest_mem_init(&s->mem);
}

/* Front-end virtual address -> guest physical, or UINT64_MAX. */
static uint64_t uva_to_gpa(const struct vmm_vhost_user *s, uint64_t uva)
{
    for (int i = 0; i < s->nmaps; i++) {
        const struct vu_map *m = &s->maps[i];
        if (uva >= m->uva && uva - m->uva < m->size)
            return m->gpa + (uva - m->uva);
    }
    return UINT64_MAX;
}

/* ---- rings ---- */

/* Translates and starts ring qi if it has everything it needs; lock held. */
static int ring_try_start(struct vmm_vhost_user *s, int qi)
{
    struct vu_ring *r = &s->ring[qi];
    if (!r->addr_set || r->kick < 0 || r->num == 0)
        return 0;
    uint64_t d = uva_to_gpa(s, r->desc_uva), a = uva_to_gpa(s, r->avail_uva), u = uva_to_gpa(s, r->used_uva);
    char err[160];
    if (d == UINT64_MAX || a == UINT64_MAX || u == UINT64_MAX ||
        vq_setup(&s->d->vq[qi], &s->mem, r->num, d, a, u, s->d->acked, err, sizeof(err)) < 0)
        return fail(s, "ring %d addresses are outside the memory table", qi);
    r->started = true;
    return 0;
}

static void ring_stop(struct vmm_vhost_user *s, int qi)
{
    struct vu_ring *r = &s->ring[qi];
    uint16_t base = s->d->vq[qi].last_avail;
    vq_teardown(&s->d->vq[qi]);
    s->d->vq[qi].last_avail = base;
    r->started = false;
}

static void ring_kick(struct vmm_vhost_user *s, int qi)
{
    struct vu_ring *r = &s->ring[qi];
    eventfd_t v;
    if (eventfd_read(r->kick, &v) < 0 && errno == EAGAIN)
        return;
    pthread_mutex_lock(&s->d->lock);
    if (r->started && r->enabled && s->d->vq[qi].ready)
        s->d->ops->notify(s->d, qi);
    pthread_mutex_unlock(&s->d->lock);
}

/* Back to the state of a fresh connection: rings stopped, fds closed, memory unmapped. */
static void reset_all(struct vmm_vhost_user *s)
{
    pthread_mutex_lock(&s->d->lock);
    for (int i = 0; i < s->d->nqueues; i++) {
        struct vu_ring *r = &s->ring[i];
        if (r->kick >= 0)
            epoll_set(s, r->kick, TAG_KICK0 + i, false);
        close_fd(&r->kick);
        close_fd(&r->call);
        close_fd(&r->err);
        *r = (struct vu_ring){ .kick = -1, .call = -1, .err = -1 };
    }
    vdev_reset(s->d);
    unmap_all(s);
    s->proto_acked = false;
    s->protocol_features = 0;
    pthread_mutex_unlock(&s->d->lock);
}

/* ---- messages ---- */

/* Reads one message with its fds. 1 ok, 0 peer closed, -1 error (reason set). */
static int read_msg(struct vmm_vhost_user *s, struct vu_msg *m)
{
    char ctl[CMSG_SPACE(sizeof(int) * VU_MAX_FDS)];
    struct iovec iov = { .iov_base = &m->h, .iov_len = sizeof(m->h) };
    struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl, .msg_controllen = sizeof(ctl) };
    m->nfds = 0;
    ssize_t n;
    do
        n = recvmsg(s->conn, &mh, MSG_WAITALL | MSG_CMSG_CLOEXEC);
    while (n < 0 && errno == EINTR);
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c)) {
        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
            continue;
        int k = (int)((c->cmsg_len - CMSG_LEN(0)) / sizeof(int));
        for (int i = 0; i < k; i++) {
            int fd;
            memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
            if (m->nfds < VU_MAX_FDS)
                m->fds[m->nfds++] = fd;
            else
                close(fd);
        }
    }
    if (n == 0)
        return 0;
    if (n != (ssize_t)sizeof(m->h))
        return fail(s, "short message header (%zd bytes)", n);
    if (mh.msg_flags & MSG_CTRUNC)
        return fail(s, "request %u carried too many fds", m->h.request);
    if ((m->h.flags & 0x3) != VU_VERSION)
        return fail(s, "request %u has protocol version %u", m->h.request, m->h.flags & 3);
    if (m->h.size > VU_MAX_PAYLOAD)
        return fail(s, "request %u payload of %u bytes is too large", m->h.request, m->h.size);
    if (m->h.size && recv(s->conn, m->payload, m->h.size, MSG_WAITALL) != (ssize_t)m->h.size)
        return fail(s, "request %u payload truncated", m->h.request);
    return 1;
}

static int send_reply(struct vmm_vhost_user *s, const struct vu_msg *req, const void *payload, uint32_t len)
{
    struct vu_hdr h = { .request = req->h.request, .flags = VU_VERSION | VU_FLAG_REPLY, .size = len };
    struct iovec iov[2] = { { &h, sizeof(h) }, { (void *)payload, len } };
    struct msghdr mh = { .msg_iov = iov, .msg_iovlen = len ? 2 : 1 };
    ssize_t n = sendmsg(s->conn, &mh, MSG_NOSIGNAL);
    return n == (ssize_t)(sizeof(h) + len) ? 0 : fail(s, "cannot send a reply: %s", strerror(errno));
}

static int reply_u64(struct vmm_vhost_user *s, const struct vu_msg *m, uint64_t v)
{
    return send_reply(s, m, &v, sizeof(v));
}

static int payload_u64(struct vmm_vhost_user *s, const struct vu_msg *m, uint64_t *v)
{
    if (m->h.size != sizeof(*v))
        return fail(s, "request %u: payload of %u bytes, expected 8", m->h.request, m->h.size);
    memcpy(v, m->payload, sizeof(*v));
    return 0;
}

/* vring state {index, num}, with index checked. */
static int payload_state(struct vmm_vhost_user *s, const struct vu_msg *m, uint32_t *idx, uint32_t *num)
{
    if (m->h.size != 8)
        return fail(s, "request %u: vring state of %u bytes, expected 8", m->h.request, m->h.size);
    memcpy(idx, m->payload, 4);
    memcpy(num, m->payload + 4, 4);
    if (*idx >= (uint32_t)s->d->nqueues)
        return fail(s, "request %u names ring %u (device has %d)", m->h.request, *idx, s->d->nqueues);
    return 0;
}

static int take_fd(struct vu_msg *m)
{
    if (m->nfds < 1)
        return -1;
    int fd = m->fds[0];
    memmove(m->fds, m->fds + 1, sizeof(int) * (size_t)(--m->nfds));
    return fd;
}

static int do_set_mem_table(struct vmm_vhost_user *s, struct vu_msg *m)
{
    uint32_t n;
    if (m->h.size < 8)
        return fail(s, "memory table of %u bytes", m->h.size);
    memcpy(&n, m->payload, 4);
    if (n == 0 || n > GUEST_MEM_MAX_REGIONS || m->h.size != 8 + n * sizeof(struct vu_region))
        return fail(s, "memory table with %u regions in %u bytes", n, m->h.size);
    if ((uint32_t)m->nfds != n)
        return fail(s, "memory table with %u regions but %d fds", n, m->nfds);
    struct vu_map maps[GUEST_MEM_MAX_REGIONS];
    struct guest_mem mem;
    guest_mem_init(&mem);
    uint32_t i;
    for (i = 0; i < n; i++) {
        struct vu_region r;
        memcpy(&r, m->payload + 8 + i * sizeof(r), sizeof(r));
        size_t len = (size_t)(r.mmap_offset + r.size);
        if (r.size == 0 || r.mmap_offset + r.size < r.size)
            break;
        /* Beyond the end of a file, a mapping faults (SIGBUS) on first touch: refuse it. */
        struct stat st;
        if (fstat(m->fds[i], &st) < 0 || (S_ISREG(st.st_mode) && (uint64_t)st.st_size < r.mmap_offset + r.size))
            break;
        void *base = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_NORESERVE, m->fds[i], 0);
        if (base == MAP_FAILED)
            break;
        maps[i] = (struct vu_map){ .uva = r.uva, .gpa = r.gpa, .size = r.size, .base = base, .maplen = len };
        if (guest_mem_add(&mem, r.gpa, r.size, (uint8_t *)base + r.mmap_offset) < 0) {
            munmap(base, len);
            break;
        }
    }
    if (i < n) {
        for (uint32_t j = 0; j < i; j++)
            munmap(maps[j].base, maps[j].maplen);
        return fail(s, "memory region %u cannot be mapped (bad size, offset or overlap)", i);
    }
    /* Swap under the lock; re-translate running rings into the new mapping. */
    pthread_mutex_lock(&s->d->lock);
    unmap_all(s);
    memcpy(s->maps, maps, sizeof(maps[0]) * n);
    s->nmaps = (int)n;
    s->mem = mem;
    s->d->mem = &s->mem;
    int rc = 0;
    for (int q = 0; q < s->d->nqueues && rc == 0; q++)
        if (s->ring[q].started)
            rc = ring_try_start(s, q);
    pthread_mutex_unlock(&s->d->lock);
    return rc;
}

static int do_vring_addr(struct vmm_vhost_user *s, const struct vu_msg *m)
{
    struct {
        uint32_t index, flags;
        uint64_t desc, used, avail, log;
    } a;
    if (m->h.size != sizeof(a))
        return fail(s, "vring address of %u bytes", m->h.size);
    memcpy(&a, m->payload, sizeof(a));
    if (a.index >= (uint32_t)s->d->nqueues)
        return fail(s, "vring address for ring %u", a.index);
    pthread_mutex_lock(&s->d->lock);
    struct vu_ring *r = &s->ring[a.index];
    r->desc_uva = a.desc, r->used_uva = a.used, r->avail_uva = a.avail;
    r->addr_set = true;
    int rc = r->started ? ring_try_start(s, (int)a.index) : 0;
    pthread_mutex_unlock(&s->d->lock);
    return rc;
}

/* SET_VRING_KICK / CALL / ERR: u64 with the ring index and a "no fd" flag. */
static int do_vring_fd(struct vmm_vhost_user *s, struct vu_msg *m)
{
    uint64_t v = 0;
    if (payload_u64(s, m, &v) < 0)
        return -1;
    uint32_t qi = v & 0xff;
    if (qi >= (uint32_t)s->d->nqueues)
        return fail(s, "request %u names ring %u", m->h.request, qi);
    int fd = -1;
    if (!(v & VU_VRING_NOFD) && (fd = take_fd(m)) < 0)
        return fail(s, "request %u for ring %u without an fd", m->h.request, qi);
    struct vu_ring *r = &s->ring[qi];
    int rc = 0;
    pthread_mutex_lock(&s->d->lock);
    if (m->h.request == VU_SET_VRING_CALL) {
        close_fd(&r->call);
        r->call = fd;
    } else if (m->h.request == VU_SET_VRING_ERR) {
        close_fd(&r->err);
        r->err = fd;
    } else {
        if (r->kick >= 0)
            epoll_set(s, r->kick, TAG_KICK0 + qi, false);
        close_fd(&r->kick);
        r->kick = fd;
        if (fd < 0) {
            rc = fail(s, "ring %u: polling mode (no kick fd) is not supported", qi);
        } else {
            fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
            epoll_set(s, fd, TAG_KICK0 + qi, true);
            /* Without protocol features a ring is enabled as soon as it is kicked-up. */
            if (!s->proto_acked)
                r->enabled = true;
            rc = ring_try_start(s, (int)qi);
            if (rc == 0 && r->started && r->enabled)
                s->d->ops->notify(s->d, (int)qi); /* buffers queued before we listened */
        }
    }
    pthread_mutex_unlock(&s->d->lock);
    return rc;
}

static int do_get_vring_base(struct vmm_vhost_user *s, const struct vu_msg *m)
{
    uint32_t qi, num;
    if (payload_state(s, m, &qi, &num) < 0)
        return -1;
    pthread_mutex_lock(&s->d->lock);
    struct vu_ring *r = &s->ring[qi];
    if (r->kick >= 0)
        epoll_set(s, r->kick, TAG_KICK0 + qi, false);
    close_fd(&r->kick);
    ring_stop(s, (int)qi);
    uint32_t state[2] = { qi, s->d->vq[qi].last_avail };
    pthread_mutex_unlock(&s->d->lock);
    return send_reply(s, m, state, sizeof(state));
}

static int do_get_config(struct vmm_vhost_user *s, const struct vu_msg *m)
{
    uint32_t off, size;
    if (m->h.size < VU_CONFIG_HDR)
        return fail(s, "config request of %u bytes", m->h.size);
    memcpy(&off, m->payload, 4);
    memcpy(&size, m->payload + 4, 4);
    if (size > VDEV_CONFIG_MAX || m->h.size != VU_CONFIG_HDR + size)
        return fail(s, "config request for %u bytes in a %u-byte message", size, m->h.size);
    uint8_t out[VU_CONFIG_HDR + VDEV_CONFIG_MAX];
    memcpy(out, m->payload, VU_CONFIG_HDR);
    memset(out + VU_CONFIG_HDR, 0, size);
    pthread_mutex_lock(&s->d->lock);
    if (off < s->d->config_len) {
        uint32_t n = s->d->config_len - off < size ? s->d->config_len - off : size;
        memcpy(out + VU_CONFIG_HDR, s->d->config + off, n);
    }
    pthread_mutex_unlock(&s->d->lock);
    return send_reply(s, m, out, VU_CONFIG_HDR + size);
}

static int do_set_config(struct vmm_vhost_user *s, const struct vu_msg *m)
{
    uint32_t off, size;
    if (m->h.size < VU_CONFIG_HDR)
        return fail(s, "config write of %u bytes", m->h.size);
    memcpy(&off, m->payload, 4);
    memcpy(&size, m->payload + 4, 4);
    if (size > VDEV_CONFIG_MAX || m->h.size != VU_CONFIG_HDR + size)
        return fail(s, "config write of %u bytes in a %u-byte message", size, m->h.size);
    pthread_mutex_lock(&s->d->lock);
    /* Only devices with writable config fields get the write; others ignore it (the
     * front-end may write e.g. blk's writeback flag, which we do not offer). */
    if (s->d->ops->config_write && off < s->d->config_len && size <= s->d->config_len - off) {
        memcpy(s->d->config + off, m->payload + VU_CONFIG_HDR, size);
        s->d->ops->config_write(s->d, off, size);
    }
    pthread_mutex_unlock(&s->d->lock);
    return 0;
}

/* Handles one message. 1 = replied already, 0 = ok (ack if asked), -1 = close. */
static int dispatch(struct vmm_vhost_user *s, struct vu_msg *m)
{
    uint64_t v = 0;
    uint32_t qi, num;
    struct vdev *d = s->d;
    switch (m->h.request) {
    case VU_GET_FEATURES:
        return reply_u64(s, m, d->features | (1ull << VU_F_PROTOCOL_FEATURES)) < 0 ? -1 : 1;
    case VU_SET_FEATURES:
        if (payload_u64(s, m, &v) < 0)
            return -1;
        if (v & ~(d->features | (1ull << VU_F_PROTOCOL_FEATURES)))
            return fail(s, "front-end set features 0x%llx we did not offer", (unsigned long long)v);
        pthread_mutex_lock(&d->lock);
        d->acked = v & d->features;
        s->proto_acked = v & (1ull << VU_F_PROTOCOL_FEATURES);
        pthread_mutex_unlock(&d->lock);
        return 0;
    case VU_GET_PROTOCOL_FEATURES:
        return reply_u64(s, m, s->protocol_features) < 0 ? -1 : 1;
    case VU_SET_PROTOCOL_FEATURES:
        if (payload_u64(s, m, &v) < 0)
            return -1;
        s->protocol_features &= v;
        return 0;
    case VU_SET_OWNER:
        return 0;
    case VU_RESET_OWNER:
    case VU_RESET_DEVICE:
        pthread_mutex_lock(&d->lock);
        for (int i = 0; i < d->nqueues; i++)
            ring_stop(s, i);
        vdev_reset(d);
        pthread_mutex_unlock(&d->lock);
        return 0;
    case VU_SET_MEM_TABLE:
        return do_set_mem_table(s, m);
    case VU_SET_VRING_NUM:
        if (payload_state(s, m, &qi, &num) < 0)
            return -1;
        if (num == 0 || num > d->queue_max || (num & (num - 1)))
            return fail(s, "ring %u size %u (must be a power of 2 up to %u)", qi, num, d->queue_max);
        s->ring[qi].num = (uint16_t)num;
        return 0;
    case VU_SET_VRING_ADDR:
        return do_vring_addr(s, m);
    case VU_SET_VRING_BASE:
        if (payload_state(s, m, &qi, &num) < 0)
            return -1;
        if (num > 0xffff || s->ring[qi].started)
            return fail(s, "ring %u base %u set while %s", qi, num, num > 0xffff ? "out of range" : "running");
        d->vq[qi].last_avail = (uint16_t)num;
        return 0;
    case VU_GET_VRING_BASE:
        return do_get_vring_base(s, m) < 0 ? -1 : 1;
    case VU_SET_VRING_KICK:
    case VU_SET_VRING_CALL:
    case VU_SET_VRING_ERR:
        return do_vring_fd(s, m);
    case VU_GET_QUEUE_NUM:
        return reply_u64(s, m, (uint64_t)d->nqueues) < 0 ? -1 : 1;
    case VU_SET_VRING_ENABLE:
        if (payload_state(s, m, &qi, &num) < 0)
            return -1;
        pthread_mutex_lock(&d->lock);
        s->ring[qi].enabled = num != 0;
        if (s->ring[qi].enabled && s->ring[qi].started)
            d->ops->notify(d, (int)qi);
        pthread_mutex_unlock(&d->lock);
        return 0;
    case VU_SET_SLAVE_REQ_FD:
        return 0; /* we never send back-end requests; the fd is closed below */
    case VU_GET_CONFIG:
        return do_get_config(s, m) < 0 ? -1 : 1;
    case VU_SET_CONFIG:
        return do_set_config(s, m);
    default:
        /* Includes the log messages: we offer neither LOG_ALL nor LOG_SHMFD. */
        if (m->h.flags & VU_FLAG_NEED_REPLY)
            return reply_u64(s, m, 1) < 0 ? -1 : 1;
        return fail(s, "unsupported request %u", m->h.request);
    }
}

/* One message from the front-end; -1 means drop the connection. */
static int serve_one(struct vmm_vhost_user *s)
{
    struct vu_msg m;
    int rc = read_msg(s, &m);
    if (rc > 0) {
        rc = dispatch(s, &m);
        if (rc == 0 && (m.h.flags & VU_FLAG_NEED_REPLY))
            rc = reply_u64(s, &m, 0);
        else if (rc < 0 && (m.h.flags & VU_FLAG_NEED_REPLY))
            reply_u64(s, &m, 1);
        rc = rc < 0 ? -1 : 1;
    } else if (rc == 0) {
        rc = -1; /* peer closed: not an error */
    }
    for (int i = 0; i < m.nfds; i++)
        close(m.fds[i]);
    return rc;
}

static void drop_conn(struct vmm_vhost_user *s)
{
    epoll_set(s, s->conn, TAG_CONN, false);
    pthread_mutex_lock(&s->conn_lock);
    close_fd(&s->conn);
    pthread_mutex_unlock(&s->conn_lock);
    reset_all(s);
    s->protocol_features = offered_protocol_features(s->d);
    epoll_set(s, s->listen_fd, TAG_LISTEN, true);
}

static void accept_conn(struct vmm_vhost_user *s)
{
    int c = accept4(s->listen_fd, NULL, NULL, SOCK_CLOEXEC);
    if (c < 0)
        return;
    /* A front-end that stops in the middle of a message must not hold this thread (and
     * every kick of the device) forever. */
    struct timeval tv = { .tv_sec = VU_MSG_TIMEOUT_S };
    setsockopt(c, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    pthread_mutex_lock(&s->conn_lock);
    s->conn = c;
    pthread_mutex_unlock(&s->conn_lock);
    s->error[0] = 0;
    /* One front-end at a time: stop listening until it goes. */
    epoll_set(s, s->listen_fd, TAG_LISTEN, false);
    epoll_set(s, c, TAG_CONN, true);
}

/* A safety net for lost notifications. The kick and interrupt suppression handshakes
 * (avail_event / used_event) need a full barrier on both sides; QEMU's TCG emits none
 * for a guest with one vCPU, so now and then the guest misses our avail_event or we miss
 * its used_event, and each side waits for the other forever. Every VU_TICK_MS we serve
 * rings with unseen buffers and re-send an interrupt the guest asked for and did not
 * act on. With a correct guest and real barriers this finds nothing to do. */
static void rings_tick(struct vmm_vhost_user *s)
{
    struct vdev *d = s->d;
    pthread_mutex_lock(&d->lock);
    for (int i = 0; i < d->nqueues; i++) {
        struct vq *q = &d->vq[i];
        if (!s->ring[i].started || !s->ring[i].enabled || !q->ready)
            continue;
        if (vq_has_avail(q))
            d->ops->notify(d, i);
        if (vq_irq_overdue(q)) {
            counter_add(d->c.interrupts, 1);
            vu_irq(s, i);
        }
    }
    pthread_mutex_unlock(&d->lock);
}

static bool any_ring_started(const struct vmm_vhost_user *s)
{
    for (int i = 0; i < s->d->nqueues; i++)
        if (s->ring[i].started)
            return true;
    return false;
}

static uint64_t now_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000 + (uint64_t)t.tv_nsec / 1000000;
}

static void *server_thread(void *arg)
{
    struct vmm_vhost_user *s = arg;
    uint64_t next_tick = now_ms() + VU_TICK_MS;
    for (;;) {
        struct epoll_event evs[8];
        bool ticking = any_ring_started(s);
        uint64_t now = now_ms();
        if (ticking && now >= next_tick) {
            rings_tick(s);
            next_tick = now + VU_TICK_MS;
        }
        int n = epoll_wait(s->epfd, evs, 8, ticking ? (int)(next_tick - now > VU_TICK_MS ? VU_TICK_MS : next_tick - now) : -1);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            break;
        for (int i = 0; i < n; i++) {
            uint64_t tag = evs[i].data.u64;
            if (tag == TAG_STOP)
                return NULL;
            if (tag == TAG_LISTEN)
                accept_conn(s);
            else if (tag == TAG_CONN && s->conn >= 0 && serve_one(s) < 0)
                drop_conn(s);
            else if (tag >= TAG_KICK0 && tag < TAG_KICK0 + VDEV_MAX_QUEUES && s->ring[tag - TAG_KICK0].kick >= 0)
                ring_kick(s, (int)(tag - TAG_KICK0));
        }
    }
    return NULL;
}

static int listen_on(const char *path, char *err, size_t errlen)
{
    struct sockaddr_un a = { .sun_family = AF_UNIX };
    if (strlen(path) >= sizeof(a.sun_path)) {
        snprintf(err, errlen, "socket path %s is longer than %zu bytes", path, sizeof(a.sun_path) - 1);
        return -1;
    }
    strcpy(a.sun_path, path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof(a)) < 0 || listen(fd, 4) < 0) {
        snprintf(err, errlen, "cannot listen on %s: %s", path, strerror(errno));
        if (fd >= 0)
            close(fd);
        return -1;
    }
    return fd;
}

struct vmm_vhost_user *vmm_vhost_user_start(struct vmm_vdev *dev, const char *path, char *err, size_t errlen)
{
    struct vdev *d = (struct vdev *)dev;
    struct vmm_vhost_user *s = calloc(1, sizeof(*s));
    if (!s) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    s->d = d;
    s->conn = -1;
    s->listen_fd = s->epfd = s->stop_efd = -1;
    /* Bind first: a device serving another transport gets no socket file. */
    if (vdev_bind(d, &s->mem, vu_irq, s, "a vhost-user server", NULL, err, errlen) < 0) {
        free(s);
        return NULL;
    }
    pthread_mutex_init(&s->conn_lock, NULL);
    snprintf(s->path, sizeof(s->path), "%s", path);
    for (int i = 0; i < VDEV_MAX_QUEUES; i++)
        s->ring[i] = (struct vu_ring){ .kick = -1, .call = -1, .err = -1 };
    s->listen_fd = listen_on(path, err, errlen);
    s->epfd = epoll_create1(EPOLL_CLOEXEC);
    s->stop_efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (s->listen_fd < 0 || s->epfd < 0 || s->stop_efd < 0) {
        if (s->listen_fd >= 0)
            snprintf(err, errlen, "cannot create epoll/eventfd: %s", strerror(errno));
        goto fail;
    }
    epoll_set(s, s->stop_efd, TAG_STOP, true);
    s->protocol_features = offered_protocol_features(d);
    epoll_set(s, s->listen_fd, TAG_LISTEN, true);
    if (pthread_create(&s->thread, NULL, server_thread, s) != 0) {
        snprintf(err, errlen, "cannot start the vhost-user thread");
        goto fail;
    }
    s->thread_started = true;
    return s;
fail:
    if (s->listen_fd >= 0) {
        close(s->listen_fd);
        unlink(path);
    }
    if (s->epfd >= 0)
        close(s->epfd);
    if (s->stop_efd >= 0)
        close(s->stop_efd);
    vdev_unbind(d);
    pthread_mutex_destroy(&s->conn_lock);
    free(s);
    return NULL;
}

int vmm_vhost_user_connected(struct vmm_vhost_user *s) { return s->conn >= 0; }

const char *vmm_vhost_user_error(struct vmm_vhost_user *s) { return s->error[0] ? s->error : NULL; }

void vmm_vhost_user_stop(struct vmm_vhost_user *s)
{
    if (!s)
        return;
    if (s->thread_started) {
        eventfd_write(s->stop_efd, 1);
        pthread_mutex_lock(&s->conn_lock);
        if (s->conn >= 0)
            shutdown(s->conn, SHUT_RDWR); /* wakes a thread blocked reading a message */
        pthread_mutex_unlock(&s->conn_lock);
        pthread_join(s->thread, NULL);
    }
    if (s->conn >= 0)
        close_fd(&s->conn);
    reset_all(s);
    vdev_unbind(s->d);
    close(s->listen_fd);
    unlink(s->path);
    close(s->epfd);
    close(s->stop_efd);
    pthread_mutex_destroy(&s->conn_lock);
    free(s);
}
