/* vhost-user memory and rings: the front-end's memory table (mapped here, described to
 * the device as checked guest memory) and each ring's addresses, kick and call eventfds,
 * base and enable state. A ring starts once it has an address, a size and a kick fd, and
 * is re-translated whenever the memory table changes. See vhost_user.h. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/stat.h>

#include "vhost_user.h"

void vu_irq(void *opaque, int qi)
{
    struct vmm_vhost_user *s = opaque;
    if (qi >= 0 && qi < VDEV_MAX_QUEUES && s->ring[qi].call >= 0)
        eventfd_write(s->ring[qi].call, 1);
}

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
        return vu_fail(s, "ring %d addresses are outside the memory table", qi);
    r->started = true;
    return 0;
}

void vu_ring_stop(struct vmm_vhost_user *s, int qi)
{
    struct vu_ring *r = &s->ring[qi];
    uint16_t base = s->d->vq[qi].last_avail;
    vq_teardown(&s->d->vq[qi]);
    s->d->vq[qi].last_avail = base;
    r->started = false;
}

void vu_ring_kick(struct vmm_vhost_user *s, int qi)
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
void vu_reset_all(struct vmm_vhost_user *s)
{
    pthread_mutex_lock(&s->d->lock);
    for (int i = 0; i < s->d->nqueues; i++) {
        struct vu_ring *r = &s->ring[i];
        if (r->kick >= 0)
            vu_epoll_set(s, r->kick, TAG_KICK0 + i, false);
        vu_close_fd(&r->kick);
        vu_close_fd(&r->call);
        vu_close_fd(&r->err);
        *r = (struct vu_ring){ .kick = -1, .call = -1, .err = -1 };
    }
    vdev_reset(s->d);
    unmap_all(s);
    s->proto_acked = false;
    s->protocol_features = 0;
    pthread_mutex_unlock(&s->d->lock);
}

int vu_set_mem_table(struct vmm_vhost_user *s, struct vu_msg *m)
{
    uint32_t n;
    if (m->h.size < 8)
        return vu_fail(s, "memory table of %u bytes", m->h.size);
    memcpy(&n, m->payload, 4);
    if (n == 0 || n > GUEST_MEM_MAX_REGIONS || m->h.size != 8 + n * sizeof(struct vu_region))
        return vu_fail(s, "memory table with %u regions in %u bytes", n, m->h.size);
    if ((uint32_t)m->nfds != n)
        return vu_fail(s, "memory table with %u regions but %d fds", n, m->nfds);
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
        return vu_fail(s, "memory region %u cannot be mapped (bad size, offset or overlap)", i);
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

int vu_set_vring_addr(struct vmm_vhost_user *s, const struct vu_msg *m)
{
    struct {
        uint32_t index, flags;
        uint64_t desc, used, avail, log;
    } a;
    if (m->h.size != sizeof(a))
        return vu_fail(s, "vring address of %u bytes", m->h.size);
    memcpy(&a, m->payload, sizeof(a));
    if (a.index >= (uint32_t)s->d->nqueues)
        return vu_fail(s, "vring address for ring %u", a.index);
    pthread_mutex_lock(&s->d->lock);
    struct vu_ring *r = &s->ring[a.index];
    r->desc_uva = a.desc, r->used_uva = a.used, r->avail_uva = a.avail;
    r->addr_set = true;
    int rc = r->started ? ring_try_start(s, (int)a.index) : 0;
    pthread_mutex_unlock(&s->d->lock);
    return rc;
}

/* SET_VRING_KICK / CALL / ERR: u64 with the ring index and a "no fd" flag. */
int vu_set_vring_fd(struct vmm_vhost_user *s, struct vu_msg *m)
{
    uint64_t v = 0;
    if (vu_payload_u64(s, m, &v) < 0)
        return -1;
    uint32_t qi = v & 0xff;
    if (qi >= (uint32_t)s->d->nqueues)
        return vu_fail(s, "request %u names ring %u", m->h.request, qi);
    int fd = -1;
    if (!(v & VU_VRING_NOFD) && (fd = vu_take_fd(m)) < 0)
        return vu_fail(s, "request %u for ring %u without an fd", m->h.request, qi);
    struct vu_ring *r = &s->ring[qi];
    int rc = 0;
    pthread_mutex_lock(&s->d->lock);
    if (m->h.request == VU_SET_VRING_CALL) {
        vu_close_fd(&r->call);
        r->call = fd;
    } else if (m->h.request == VU_SET_VRING_ERR) {
        vu_close_fd(&r->err);
        r->err = fd;
    } else {
        if (r->kick >= 0)
            vu_epoll_set(s, r->kick, TAG_KICK0 + qi, false);
        vu_close_fd(&r->kick);
        r->kick = fd;
        if (fd < 0) {
            rc = vu_fail(s, "ring %u: polling mode (no kick fd) is not supported", qi);
        } else {
            fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
            vu_epoll_set(s, fd, TAG_KICK0 + qi, true);
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

int vu_get_vring_base(struct vmm_vhost_user *s, const struct vu_msg *m)
{
    uint32_t qi, num;
    if (vu_payload_state(s, m, &qi, &num) < 0)
        return -1;
    pthread_mutex_lock(&s->d->lock);
    struct vu_ring *r = &s->ring[qi];
    if (r->kick >= 0)
        vu_epoll_set(s, r->kick, TAG_KICK0 + qi, false);
    vu_close_fd(&r->kick);
    vu_ring_stop(s, (int)qi);
    uint32_t state[2] = { qi, s->d->vq[qi].last_avail };
    pthread_mutex_unlock(&s->d->lock);
    return vu_send_reply(s, m, state, sizeof(state));
}

/* A safety net for lost notifications. The kick and interrupt suppression handshakes
 * (avail_event / used_event) need a full barrier on both sides; QEMU's TCG emits none
 * for a guest with one vCPU, so now and then the guest misses our avail_event or we miss
 * its used_event, and each side waits for the other forever. Every VU_TICK_MS we serve
 * rings with unseen buffers and re-send an interrupt the guest asked for and did not
 * act on. With a correct guest and real barriers this finds nothing to do. */
void vu_rings_tick(struct vmm_vhost_user *s)
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

bool vu_any_ring_started(const struct vmm_vhost_user *s)
{
    for (int i = 0; i < s->d->nqueues; i++)
        if (s->ring[i].started)
            return true;
    return false;
}
