/* The vhost-user front end as a device. See vhost_user_front.h.
 *
 * Open: connect, GET_FEATURES, GET/SET_PROTOCOL_FEATURES (REPLY_ACK only, when offered),
 * SET_OWNER. The driver is offered the back end's features that this transport can carry
 * (see PASS_FEATURES).
 * DRIVER_OK (the driver_ok op, then poll): SET_FEATURES with what the driver acked,
 * SET_MEM_TABLE once per connection (guest RAM's memfd regions), and for each ready queue
 * SET_VRING_NUM / BASE (0: the driver set the ring up afresh) / ADDR / CALL / KICK, then
 * ENABLE when protocol features are in use. Reset: GET_VRING_BASE for each started ring
 * (which stops it), the reply's ring index checked.
 * Kicks: each ring's kick eventfd is ours, made at open and handed to the transport as the
 * queue's notify eventfd (d->kick_fd: virtio-mmio registers it as the ioeventfd), so a
 * guest's notify reaches the back end without waking our event loop; a transport that
 * calls notify instead (the test transport) gets the same eventfd written.
 * Calls: the back end writes our call eventfds, which sit in d->poll_fd; poll raises the
 * guest interrupt through the transport (which sets InterruptStatus' used-buffer bit).
 *
 * Ring addresses: the transport set each queue up with vq_setup(), which already refuses
 * rings outside guest RAM; the addresses sent are translated again here over the whole
 * length of each ring, so nothing the guest wrote reaches the back end unchecked. */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>

#include "core_api.h"
#include "util.h"
#include "vhost_user_front.h"

#define F(d) ((struct vuf *)(d))

/* What we let through of the back end's features: the device's own (bits 0-23), indirect
 * descriptors and event idx (split rings, which the transport and vq_setup know), and
 * VERSION_1. Not packed rings, ACCESS_PLATFORM (no IOMMU here), NOTIFICATION_DATA (our
 * notify carries no data), IN_ORDER and the rest: a driver must not use what the
 * transport cannot honour. */
#define PASS_FEATURES (0xffffffull | (1ull << VIRTIO_RING_F_INDIRECT_DESC) | \
                       (1ull << VIRTIO_RING_F_EVENT_IDX) | (1ull << VIRTIO_F_VERSION_1))
/* Protocol features we implement. */
#define OUR_PROTOCOL (1ull << VU_PROTO_F_REPLY_ACK)

enum { TAG_WORK = 1, TAG_SOCK = 2, TAG_CALL0 = 16 };

/* ---- the rings ---- */

struct ring_snap {
    bool ready;
    uint16_t size;
    uint64_t desc, avail, used; /* host addresses (the back end's "user addresses") */
};

/* The driver's queues as they are now (d->lock held), each ring translated over its whole
 * length; a ring that does not translate is a guest error the transport should have
 * refused (not ready then). */
static void snapshot(struct vdev *d, struct ring_snap *rs)
{
    for (int qi = 0; qi < d->nqueues; qi++) {
        const struct vq *q = &d->vq[qi];
        rs[qi] = (struct ring_snap){ 0 };
        if (!q->ready || !d->mem)
            continue;
        uint64_t n = q->size;
        void *desc = guest_mem_ptr(d->mem, q->desc_gpa, 16 * n);
        void *avail = guest_mem_ptr(d->mem, q->avail_gpa, 6 + 2 * n);
        void *used = guest_mem_ptr(d->mem, q->used_gpa, 6 + 8 * n);
        if (!desc || !avail || !used)
            continue;
        rs[qi] = (struct ring_snap){ true, q->size, (uintptr_t)desc, (uintptr_t)avail, (uintptr_t)used };
    }
}

static int send_mem_table(struct vuf *f, const struct guest_mem *mem)
{
    if (!mem || mem->fd < 0 || !mem->map)
        return vuf_die(f, "guest memory is not shareable (the VM was made without shared_memory)");
    struct {
        uint32_t n, pad;
        struct vu_region r[GUEST_MEM_MAX_REGIONS];
    } t = { .n = (uint32_t)mem->nregions };
    int fds[GUEST_MEM_MAX_REGIONS];
    for (int i = 0; i < mem->nregions; i++) {
        const struct guest_mem_region *r = &mem->r[i];
        t.r[i] = (struct vu_region){ .gpa = r->gpa, .size = r->size, .uva = (uintptr_t)r->host,
                                     .mmap_offset = (uint64_t)(r->host - mem->map) };
        fds[i] = mem->fd;
    }
    return vuf_set(f, VU_SET_MEM_TABLE, &t, 8 + (uint32_t)mem->nregions * sizeof(struct vu_region),
                   fds, mem->nregions);
}

static int start_ring(struct vuf *f, int qi, const struct ring_snap *r)
{
    struct { uint32_t index, num; } st = { (uint32_t)qi, r->size };
    struct {
        uint32_t index, flags;
        uint64_t desc, used, avail, log;
    } addr = { (uint32_t)qi, 0, r->desc, r->used, r->avail, 0 };
    uint64_t idx = (uint64_t)qi;
    if (vuf_set(f, VU_SET_VRING_NUM, &st, sizeof(st), NULL, 0) < 0)
        return -1;
    st.num = 0;
    if (vuf_set(f, VU_SET_VRING_BASE, &st, sizeof(st), NULL, 0) < 0 ||
        vuf_set(f, VU_SET_VRING_ADDR, &addr, sizeof(addr), NULL, 0) < 0 ||
        vuf_set(f, VU_SET_VRING_CALL, &idx, sizeof(idx), &f->call[qi], 1) < 0 ||
        vuf_set(f, VU_SET_VRING_KICK, &idx, sizeof(idx), &f->kick[qi], 1) < 0)
        return -1;
    f->started |= 1u << qi;
    st.num = 1;
    if (f->proto && vuf_set(f, VU_SET_VRING_ENABLE, &st, sizeof(st), NULL, 0) < 0)
        return -1;
    return 0;
}

static int start(struct vuf *f, const struct guest_mem *mem, uint64_t acked, const struct ring_snap *rs)
{
    uint64_t features = acked | (f->proto ? 1ull << VU_F_PROTOCOL_FEATURES : 0);
    if (vuf_set(f, VU_SET_FEATURES, &features, sizeof(features), NULL, 0) < 0)
        return -1;
    if (!f->mem_sent) {
        if (send_mem_table(f, mem) < 0)
            return -1;
        f->mem_sent = true;
    }
    for (int qi = 0; qi < f->d.nqueues; qi++)
        if (rs[qi].ready && start_ring(f, qi, &rs[qi]) < 0)
            return -1;
    return 0;
}

/* GET_VRING_BASE stops a ring; the back end answers with where it got to. */
static void stop(struct vuf *f)
{
    for (int qi = 0; qi < f->d.nqueues && f->sock >= 0; qi++) {
        if (!(f->started & (1u << qi)))
            continue;
        struct { uint32_t index, num; } st = { (uint32_t)qi, 0 };
        if (vuf_send(f, VU_GET_VRING_BASE, false, &st, sizeof(st), NULL, 0) < 0 ||
            vuf_reply(f, VU_GET_VRING_BASE, &st, sizeof(st)) < 0)
            break;
        if (st.index != (uint32_t)qi) {
            vuf_die(f, "stopping ring %d, the back end answered for ring %u", qi, st.index);
            break;
        }
    }
    f->started = 0;
    f->running = false;
}

/* Brings the back end to what the driver asked for last (the messaging thread). */
static void sync_backend(struct vuf *f)
{
    struct vdev *d = &f->d;
    struct ring_snap rs[VDEV_MAX_QUEUES];
    pthread_mutex_lock(&d->lock);
    bool want = f->want;
    uint32_t gen = f->gen;
    uint64_t acked = d->acked;
    const struct guest_mem *mem = d->mem;
    snapshot(d, rs);
    pthread_mutex_unlock(&d->lock);
    if (f->running && (!want || gen != f->running_gen))
        stop(f);
    if (want && !f->running && f->sock >= 0) {
        /* The guest memory a VM binds stays mapped until the VM is destroyed, after its
         * I/O thread (this one) is gone: using it unlocked here is safe. */
        f->running = true;
        f->running_gen = gen;
        if (start(f, mem, acked, rs) < 0)
            f->running = false;
    }
    pthread_mutex_lock(&d->lock);
    if (f->dead[0] && d->transport)
        vdev_fail(d, "vhost-user back end %s: %s", f->path, f->dead);
    pthread_mutex_unlock(&d->lock);
}

/* ---- ops ---- */

static void ask_sync(struct vuf *f)
{
    f->gen++;
    eventfd_write(f->work, 1);
}

static void vuf_notify(struct vdev *d, int qi)
{
    /* Only from a transport without d->kick_fd support; also before the ring reached the
     * back end: the count waits in the eventfd. */
    eventfd_write(F(d)->kick[qi], 1);
}

static void vuf_driver_ok(struct vdev *d)
{
    F(d)->want = true;
    ask_sync(F(d));
}

static void vuf_reset(struct vdev *d)
{
    F(d)->want = false;
    ask_sync(F(d));
}

static void vuf_poll(struct vdev *d)
{
    struct vuf *f = F(d);
    struct epoll_event ev[2 + VDEV_MAX_QUEUES];
    int n = epoll_wait(f->epfd, ev, 2 + VDEV_MAX_QUEUES, 0);
    bool sync = false;
    for (int i = 0; i < n; i++) {
        uint32_t tag = ev[i].data.u32;
        eventfd_t v;
        if (tag == TAG_WORK) {
            eventfd_read(f->work, &v);
            sync = true;
        } else if (tag == TAG_SOCK) {
            vuf_unasked(f);
            sync = true; /* the device fails (or not) there */
        } else if (tag >= TAG_CALL0 && tag < TAG_CALL0 + (uint32_t)d->nqueues) {
            int qi = (int)(tag - TAG_CALL0);
            if (eventfd_read(f->call[qi], &v) < 0)
                continue;
            pthread_mutex_lock(&d->lock);
            if (d->irq && (f->started & (1u << qi))) {
                counter_add(d->c.interrupts, 1);
                d->irq(d->irq_opaque, qi);
            }
            pthread_mutex_unlock(&d->lock);
        }
    }
    if (sync)
        sync_backend(f);
}

static void vuf_destroy(struct vdev *d)
{
    struct vuf *f = F(d);
    vu_close_fd(&f->sock);
    vu_close_fd(&f->epfd);
    vu_close_fd(&f->work);
    for (int i = 0; i < VDEV_MAX_QUEUES; i++) {
        vu_close_fd(&f->kick[i]);
        vu_close_fd(&f->call[i]);
    }
}

static const struct vdev_ops vuf_ops = {
    .notify = vuf_notify,
    .reset = vuf_reset,
    .driver_ok = vuf_driver_ok,
    .poll = vuf_poll,
    .destroy = vuf_destroy,
};

/* ---- open ---- */

static int epoll_in(struct vuf *f, int fd, uint32_t tag)
{
    struct epoll_event ev = { .events = EPOLLIN, .data.u32 = tag };
    return epoll_ctl(f->epfd, EPOLL_CTL_ADD, fd, &ev);
}

static int make_fds(struct vuf *f, char *err, size_t errlen)
{
    f->epfd = epoll_create1(EPOLL_CLOEXEC);
    f->work = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (f->epfd < 0 || f->work < 0 || epoll_in(f, f->work, TAG_WORK) < 0)
        return errf(err, errlen, "cannot make the front end's event fds: %s", strerror(errno));
    for (int i = 0; i < f->d.nqueues; i++) {
        f->kick[i] = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        f->call[i] = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        if (f->kick[i] < 0 || f->call[i] < 0 || epoll_in(f, f->call[i], TAG_CALL0 + (uint32_t)i) < 0)
            return errf(err, errlen, "cannot make the front end's event fds: %s", strerror(errno));
        f->d.kick_fd[i] = f->kick[i]; /* the guest's notifies go straight to the back end */
    }
    f->d.poll_fd = f->epfd;
    return 0;
}

static int connect_backend(struct vuf *f, char *err, size_t errlen)
{
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    memcpy(sa.sun_path, f->path, sizeof(f->path));
    f->sock = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (f->sock < 0)
        return errf(err, errlen, "socket: %s", strerror(errno));
    /* Non-blocking connect to a Unix socket completes at once or fails (EAGAIN: the back
     * end's backlog is full, i.e. it does not accept). */
    if (connect(f->sock, (struct sockaddr *)&sa, sizeof(sa)) < 0)
        return errf(err, errlen, "cannot connect to the vhost-user back end at %s: %s", f->path, strerror(errno));
    return epoll_in(f, f->sock, TAG_SOCK) < 0 ? errf(err, errlen, "epoll: %s", strerror(errno)) : 0;
}

static int negotiate(struct vuf *f, char *err, size_t errlen)
{
    uint64_t features, protocol;
    if (vuf_get_u64(f, VU_GET_FEATURES, &features) < 0)
        goto fail;
    f->backend_features = features;
    if (!(features & (1ull << VIRTIO_F_VERSION_1)))
        return errf(err, errlen, "vhost-user back end %s does not offer VIRTIO_F_VERSION_1 (features 0x%llx); "
                    "the kvm engine's transport is virtio 1.x only", f->path, (unsigned long long)features);
    if (features & (1ull << VU_F_PROTOCOL_FEATURES)) {
        f->proto = true;
        if (vuf_get_u64(f, VU_GET_PROTOCOL_FEATURES, &protocol) < 0)
            goto fail;
        protocol &= OUR_PROTOCOL;
        if (vuf_send(f, VU_SET_PROTOCOL_FEATURES, false, &protocol, sizeof(protocol), NULL, 0) < 0)
            goto fail;
        f->protocol = protocol; /* replies are acked from the next request on */
    }
    if (vuf_set(f, VU_SET_OWNER, NULL, 0, NULL, 0) < 0)
        goto fail;
    f->d.features = (features & PASS_FEATURES) | (1ull << VIRTIO_F_VERSION_1);
    return 0;
fail:
    return errf(err, errlen, "vhost-user back end %s: %s", f->path, f->dead);
}

static const char *kind_name(uint32_t device_id)
{
    switch (device_id) {
    case VIRTIO_ID_BLOCK: return "blk (vhost-user)";
    case 26: return "fs (vhost-user)";
    default: return "vhost-user";
    }
}

struct vmm_vdev *vmm_vhost_user_front_new(uint32_t device_id, const char *path, const uint8_t *config,
                                          uint32_t config_len, int num_queues, uint32_t queue_size,
                                          int reply_timeout_ms, char *err, size_t errlen)
{
    if (num_queues < 1 || num_queues > VDEV_MAX_QUEUES || config_len > VDEV_CONFIG_MAX ||
        queue_size == 0 || queue_size > VQ_MAX_SIZE || (queue_size & (queue_size - 1)) ||
        reply_timeout_ms < 0 || reply_timeout_ms > VUF_REPLY_TIMEOUT_MAX_MS || device_id == 0) {
        errf(err, errlen, "vhost-user front end: device id %u, %d queues (1..%d) of %u entries (a power "
             "of 2 up to %d), %u config bytes (up to %d), reply timeout %d ms (0..%d): out of range",
             device_id, num_queues, VDEV_MAX_QUEUES, queue_size, VQ_MAX_SIZE, config_len,
             VDEV_CONFIG_MAX, reply_timeout_ms, VUF_REPLY_TIMEOUT_MAX_MS);
        return NULL;
    }
    if (strlen(path) >= sizeof(((struct vuf *)0)->path)) {
        errf(err, errlen, "vhost-user socket path is longer than %zu bytes: %s",
             sizeof(((struct vuf *)0)->path) - 1, path);
        return NULL;
    }
    struct vuf *f = calloc(1, sizeof(*f));
    if (!f) {
        errf(err, errlen, "out of memory");
        return NULL;
    }
    vdev_init(&f->d, kind_name(device_id), device_id, &vuf_ops, 0, num_queues, (uint16_t)queue_size);
    if (config_len)
        memcpy(f->d.config, config, config_len);
    f->d.config_len = config_len;
    snprintf(f->path, sizeof(f->path), "%s", path);
    f->timeout_ms = reply_timeout_ms ? reply_timeout_ms : VUF_REPLY_TIMEOUT_MS;
    f->sock = f->epfd = f->work = -1;
    for (int i = 0; i < VDEV_MAX_QUEUES; i++)
        f->kick[i] = f->call[i] = -1;
    if (make_fds(f, err, errlen) < 0 || connect_backend(f, err, errlen) < 0 || negotiate(f, err, errlen) < 0) {
        vdev_free(&f->d);
        return NULL;
    }
    return (struct vmm_vdev *)f;
}

/* ---- tests ---- */

static void test_irq(void *opaque, int qi) {}

int vmm_vhost_user_front_test_cycle(struct vmm_vdev *dev, int mem_fd, uint64_t mem_size, uint64_t features,
                                    uint32_t queue_size, char *err, size_t errlen)
{
    struct vdev *d = (struct vdev *)dev;
    struct vuf *f = F(d);
    if (d->ops != &vuf_ops)
        return errf(err, errlen, "not a vhost-user front end");
    if (queue_size == 0 || queue_size > 256 || (queue_size & (queue_size - 1)) ||
        mem_size < (uint64_t)d->nqueues << 16 || mem_size > (1ull << 32))
        return errf(err, errlen, "test cycle: queue size 1..256 (a power of 2), memory 64 KiB per queue up to 4 GiB");
    struct guest_mem mem;
    guest_mem_init(&mem);
    mem.map = mmap(NULL, mem_size, PROT_READ | PROT_WRITE, MAP_SHARED, mem_fd, 0);
    if (mem.map == MAP_FAILED)
        return errf(err, errlen, "mmap: %s", strerror(errno));
    mem.map_len = mem_size;
    mem.fd = mem_fd;
    guest_mem_add(&mem, 0, mem_size, mem.map);
    if (vdev_bind(d, &mem, test_irq, NULL, "a test cycle", NULL, err, errlen) < 0) {
        munmap(mem.map, mem_size);
        return -1;
    }
    pthread_mutex_lock(&d->lock);
    d->acked = (features & d->features) | (1ull << VIRTIO_F_VERSION_1);
    for (int qi = 0; qi < d->nqueues; qi++) {
        uint64_t base = (uint64_t)qi << 16;
        char why[160];
        vq_setup(&d->vq[qi], &mem, (uint16_t)queue_size, base, base + 0x4000, base + 0x8000, d->acked,
                 why, sizeof(why));
    }
    vuf_driver_ok(d);
    pthread_mutex_unlock(&d->lock);
    vuf_poll(d);           /* the start, as the I/O thread would run it */
    pthread_mutex_lock(&d->lock);
    vdev_reset(d);         /* what the guest's status write of 0 does */
    pthread_mutex_unlock(&d->lock);
    vuf_poll(d);           /* the stop */
    int rc = f->dead[0] ? errf(err, errlen, "%s", f->dead) : 0;
    vdev_unbind(d);
    munmap(mem.map, mem_size);
    return rc;
}
