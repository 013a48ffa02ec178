/* vhost-user memory and rings: the front-end's memory table (mapped here, described to
 * the device as checked guest memory) and each ring's addresses, kick and call eventfds,
 * base and enable state. A ring starts once it has an address, a size and a kick fd, and
 * is re-translated whenever the memory table changes. See vhost_user.h. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/stat.h>

#include "vhost_user.h"

/* The call fd was checked to be an eventfd and made non-blocking (vu_set_vring_fd): a
 * front end that lets the counter reach its maximum gets EAGAIN here, never a blocked loop
 * thread holding d->lock (the counter is non-zero then, so its interrupt is pending
 * anyway). */
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

/* Front-end virtual address -> guest physical through a memory table, or UINT64_MAX. */
static uint64_t uva_to_gpa(const struct vu_map *maps, int nmaps, uint64_t uva)
{
    for (int i = 0; i < nmaps; i++) {
        const struct vu_map *m = &maps[i];
        if (uva >= m->uva && uva - m->uva < m->size)
            return m->gpa + (uva - m->uva);
    }
    return UINT64_MAX;
}

/* Whether ring qi's addresses lie inside the memory table (maps, mem), checked on a
 * scratch queue so the running one is untouched (the layout rules stay queue.c's). */
static int ring_fits(struct vmm_vhost_user *s, const struct vu_map *maps, int nmaps, const struct guest_mem *mem,
                     int qi, char *err, size_t errlen)
{
    const struct vu_ring *r = &s->ring[qi];
    uint64_t d = uva_to_gpa(maps, nmaps, r->desc_uva), a = uva_to_gpa(maps, nmaps, r->avail_uva),
             u = uva_to_gpa(maps, nmaps, r->used_uva);
    if (d == UINT64_MAX || a == UINT64_MAX || u == UINT64_MAX) {
        snprintf(err, errlen, "ring %d addresses are outside the memory table", qi);
        return -1;
    }
    struct vq probe;
    memset(&probe, 0, sizeof(probe));
    char why[120];
    int rc = vq_setup(&probe, mem, r->num, d, a, u, s->d->acked, why, sizeof(why));
    vq_teardown(&probe);
    if (rc < 0)
        snprintf(err, errlen, "ring %d addresses are outside the memory table (%s)", qi, why);
    return rc;
}

/* Translates and starts ring qi if it has everything it needs; lock held. A ring that
 * cannot start is stopped (never left pointing at its old translation). */
static int ring_try_start(struct vmm_vhost_user *s, int qi)
{
    struct vu_ring *r = &s->ring[qi];
    if (!r->addr_set || r->kick < 0 || r->num == 0)
        return 0;
    char err[200];
    uint64_t d = uva_to_gpa(s->maps, s->nmaps, r->desc_uva), a = uva_to_gpa(s->maps, s->nmaps, r->avail_uva),
             u = uva_to_gpa(s->maps, s->nmaps, r->used_uva);
    if (ring_fits(s, s->maps, s->nmaps, &s->mem, qi, err, sizeof(err)) < 0 ||
        vq_setup(&s->d->vq[qi], &s->mem, r->num, d, a, u, s->d->acked, err, sizeof(err)) < 0) {
        vu_ring_stop(s, qi);
        return vu_fail(s, "%s", err);
    }
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

/* Ring qi's kick fd is ready. An eventfd reads 8 bytes and then EAGAIN; anything else
 * (an error, a hang-up the epoll set reports forever, or a semaphore-mode eventfd with a
 * huge count, which reads 1 at a time and stays readable) means the fd is no kick
 * source: it leaves the loop and the ring breaks, instead of the loop spinning on it. */
void vu_ring_kick(struct vmm_vhost_user *s, int qi, bool hangup)
{
    struct vu_ring *r = &s->ring[qi];
    const char *why = hangup ? "hung up" : NULL;
    int reads = 0;
    eventfd_t v;
    while (!why && reads < VU_KICK_READS) {
        if (eventfd_read(r->kick, &v) == 0)
            reads++;
        else if (errno == EAGAIN)
            break;
        else
            why = strerror(errno);
    }
    if (!why && reads == VU_KICK_READS)
        why = "never drains (a semaphore eventfd?)";
    if (!why && reads == 0)
        return;
    pthread_mutex_lock(&s->d->lock);
    if (why) {
        vu_epoll_set(s, r->kick, TAG_KICK0 + qi, false);
        vu_close_fd(&r->kick);
        vu_ring_stop(s, qi);
        if (!s->d->broken[0]) {
            snprintf(s->d->broken, sizeof(s->d->broken), "queue %d: its kick fd %s; the ring stops until the "
                     "front end sets a new one", qi, why);
            fprintf(stderr, "vmm: vhost-user %s: %s\n", s->path, s->d->broken);
        }
    } else if (r->started && r->enabled && s->d->vq[qi].ready) {
        s->d->ops->notify(s->d, qi);
    }
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

/* Why the front end's region fd cannot back guest memory safely, or NULL. Touching a
 * mapping beyond the end of its file raises SIGBUS, which kills this process (every
 * device in it): the fd must be a memfd sealed against shrinking (QEMU's
 * memory-backend-memfd seals by default) and already cover the region. */
static const char *region_fd_problem(int fd, const struct vu_region *r)
{
    int seals = fcntl(fd, F_GET_SEALS);
    if (seals < 0)
        return "its fd is not a memfd (F_GET_SEALS fails); use memory-backend-memfd";
    if (!(seals & F_SEAL_SHRINK))
        return "its memfd is not sealed against shrinking (F_SEAL_SHRINK): the front end could "
               "truncate it under us; use memory-backend-memfd with seal=on";
    /* The size only after the seal is seen: before it, the file could still shrink. */
    struct stat st;
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode))
        return "its fd is not a memfd";
    if ((uint64_t)st.st_size < r->mmap_offset + r->size)
        return "it ends beyond the end of its memfd";
    return NULL;
}

static void unmap_table(struct vu_map *maps, int n)
{
    for (int i = 0; i < n; i++)
        munmap(maps[i].base, maps[i].maplen);
}

/* A new memory table. Every running ring must fit in it before the old one goes: if one
 * does not, every ring stops (under the lock, while the old table is still mapped) and
 * the connection closes, so no ring ever points into an unmapped table. */
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
    const char *problem = NULL;
    uint32_t i;
    for (i = 0; i < n; i++) {
        struct vu_region r;
        memcpy(&r, m->payload + 8 + i * sizeof(r), sizeof(r));
        size_t len = (size_t)(r.mmap_offset + r.size);
        if (r.size == 0 || r.mmap_offset + r.size < r.size)
            break;
        if ((problem = region_fd_problem(m->fds[i], &r)))
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
        unmap_table(maps, (int)i);
        if (problem)
            return vu_fail(s, "memory region %u refused: %s", i, problem);
        return vu_fail(s, "memory region %u cannot be mapped (bad size, offset or overlap)", i);
    }
    char err[200];
    int rc = 0;
    pthread_mutex_lock(&s->d->lock);
    for (int q = 0; q < s->d->nqueues && rc == 0; q++)
        if (s->ring[q].started)
            rc = ring_fits(s, maps, (int)n, &mem, q, err, sizeof(err));
    if (rc < 0) {
        for (int q = 0; q < s->d->nqueues; q++)
            vu_ring_stop(s, q);
        pthread_mutex_unlock(&s->d->lock);
        unmap_table(maps, (int)n);
        return vu_fail(s, "new memory table while rings run: %s", err);
    }
    /* Swap under the lock; re-translate running rings into the new mapping. */
    unmap_all(s);
    memcpy(s->maps, maps, sizeof(maps[0]) * n);
    s->nmaps = (int)n;
    s->mem = mem;
    s->d->mem = &s->mem;
    for (int q = 0; q < s->d->nqueues && rc == 0; q++)
        if (s->ring[q].started)
            rc = ring_try_start(s, q);
    if (rc < 0) /* only out of memory now: stop them all, as above */
        for (int q = 0; q < s->d->nqueues; q++)
            vu_ring_stop(s, q);
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

/* Whether fd is an eventfd: kick and call fds must be (a socket or pipe could block our
 * writes or flood the loop with hang-ups). */
static bool is_eventfd(int fd)
{
    static const char want[] = "anon_inode:[eventfd]";
    char link[48], target[sizeof(want) + 1];
    snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, target, sizeof(target));
    if (n < 0 && errno == ENOENT && access("/proc/self/fd", F_OK) < 0) {
        /* No /proc: settle for an anonymous inode (no file type bits). The other kinds
         * (timerfd, signalfd, epoll) cannot block a write and fail a kick read, which
         * breaks the ring. */
        struct stat st;
        return fstat(fd, &st) == 0 && (st.st_mode & S_IFMT) == 0;
    }
    return n == (ssize_t)sizeof(want) - 1 && memcmp(target, want, sizeof(want) - 1) == 0;
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
    if (fd >= 0 && m->h.request != VU_SET_VRING_ERR) {
        if (!is_eventfd(fd)) {
            close(fd);
            return vu_fail(s, "ring %u: the %s fd is not an eventfd", qi,
                           m->h.request == VU_SET_VRING_CALL ? "call" : "kick");
        }
        /* Never block the loop thread on it (a call counter at its maximum blocks a write). */
        fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    }
    struct vu_ring *r = &s->ring[qi];
    int rc = 0;
    pthread_mutex_lock(&s->d->lock);
    if (m->h.request == VU_SET_VRING_CALL) {
        vu_close_fd(&r->call);
        r->call = fd;
    } else if (m->h.request == VU_SET_VRING_ERR) {
        vu_close_fd(&r->err); /* kept only to be closed: we report no ring errors */
        r->err = fd;
    } else {
        if (r->kick >= 0)
            vu_epoll_set(s, r->kick, TAG_KICK0 + qi, false);
        vu_close_fd(&r->kick);
        r->kick = fd;
        if (fd < 0) {
            rc = vu_fail(s, "ring %u: polling mode (no kick fd) is not supported", qi);
        } else {
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
