/* Split virtqueue walking with every guest-supplied value checked. See queue.h. */
#include "queue.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Ordering between our accesses and the guest's, as the spec's memory-barrier rules ask:
 * acquire after reading avail->idx (ring entries and descriptors are read after it),
 * release before publishing used->idx (used entries and buffer data become visible
 * first), and a full fence between publishing used->idx and reading used_event (or
 * writing avail_event and re-reading avail->idx), the classic lost-wakeup window. */
#define load_acquire16(p) __atomic_load_n((p), __ATOMIC_ACQUIRE)
#define store_release16(p, v) __atomic_store_n((p), (v), __ATOMIC_RELEASE)
#define full_fence() __atomic_thread_fence(__ATOMIC_SEQ_CST)

static void set_err(char *err, size_t errlen, const char *fmt, ...)
{
    if (!err || !errlen)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

static int mark_broken(struct vq *q, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(q->reason, sizeof(q->reason), fmt, ap);
    va_end(ap);
    q->broken = true;
    return -1;
}

static void *ring_ptr(const struct guest_mem *mem, uint64_t gpa, uint64_t len, uint64_t align)
{
    if (gpa & (align - 1))
        return NULL;
    return guest_mem_ptr(mem, gpa, len);
}

int vq_setup(struct vq *q, const struct guest_mem *mem, uint16_t size, uint64_t desc,
             uint64_t avail, uint64_t used, uint64_t features, char *err, size_t errlen)
{
    q->ready = false;
    if (size == 0 || size > VQ_MAX_SIZE || (size & (size - 1))) {
        set_err(err, errlen, "queue size %u is not a power of 2 in 1..%u", size, VQ_MAX_SIZE);
        return -1;
    }
    void *d = ring_ptr(mem, desc, 16ull * size, 16);
    void *a = ring_ptr(mem, avail, 6 + 2ull * size, 2);
    void *u = ring_ptr(mem, used, 6 + 8ull * size, 4);
    if (!d || !a || !u) {
        set_err(err, errlen, "%s ring at 0x%llx is misaligned or outside guest memory",
                !d ? "descriptor" : !a ? "available" : "used",
                (unsigned long long)(!d ? desc : !a ? avail : used));
        return -1;
    }
    if (q->size != size || !q->rdv) {
        free(q->rdv);
        free(q->wrv);
        q->rdv = calloc(VQ_MAX_SEGS(size), sizeof(struct iovec));
        q->wrv = calloc(VQ_MAX_SEGS(size), sizeof(struct iovec));
        if (!q->rdv || !q->wrv) {
            set_err(err, errlen, "out of memory for a queue of %u entries", size);
            return -1;
        }
    }
    q->size = size;
    q->desc_gpa = desc, q->avail_gpa = avail, q->used_gpa = used;
    q->desc = d, q->avail = a, q->used = u;
    q->mem = mem;
    q->event_idx = features & (1ull << VIRTIO_RING_F_EVENT_IDX);
    q->indirect = features & (1ull << VIRTIO_RING_F_INDIRECT_DESC);
    q->broken = false;
    q->reason[0] = 0;
    q->signalled_valid = false;
    q->pushed = false;
    /* The driver may hand over a queue that was already used (vhost-user restarts a ring
     * at the base it gave us): continue from the used index in memory. */
    q->used_idx = __atomic_load_n((uint16_t *)(q->used + 2), __ATOMIC_ACQUIRE);
    q->ready = true;
    return 0;
}

void vq_teardown(struct vq *q)
{
    free(q->rdv);
    free(q->wrv);
    uint16_t last = q->last_avail;
    memset(q, 0, sizeof(*q));
    q->last_avail = last; /* kept for vhost-user GET_VRING_BASE; reset by the caller */
}

/* The walk of one chain: where the descriptors come from and how many we have seen. */
struct walk {
    const struct vring_desc *table;
    uint32_t table_n;
    bool in_indirect;
    uint32_t seen;
};

/* Appends one buffer to the request. 1 = ok, 0 = reject the chain (bad buffer). */
static int add_segment(struct vq *q, struct vq_req *r, const struct vring_desc *d)
{
    bool wr = d->flags & VRING_DESC_F_WRITE;
    if (!wr && r->nw > 0)
        return 0; /* readable after writable: the spec forbids it */
    if (d->len == 0)
        return 1; /* nothing to map; harmless */
    void *p = guest_mem_ptr(q->mem, d->addr, d->len);
    if (!p)
        return 0;
    struct iovec *v = wr ? &r->wr[r->nw++] : &r->rd[r->nr++];
    v->iov_base = p;
    v->iov_len = d->len;
    if (wr)
        r->wlen += d->len;
    else
        r->rlen += d->len;
    return 1;
}

/* Switches the walk into an indirect table. 1 ok, 0 reject chain, -1 broken. */
static int enter_indirect(struct vq *q, struct walk *w, const struct vring_desc *d)
{
    if (!q->indirect)
        return mark_broken(q, "indirect descriptor but VIRTIO_RING_F_INDIRECT_DESC not negotiated");
    if (w->in_indirect)
        return mark_broken(q, "nested indirect descriptor table");
    if (w->seen != 1)
        return mark_broken(q, "indirect descriptor not at the head of its chain");
    if (d->flags & VRING_DESC_F_NEXT)
        return mark_broken(q, "indirect descriptor with the NEXT flag");
    if (d->len == 0 || d->len % sizeof(struct vring_desc))
        return mark_broken(q, "indirect table length %u is not a non-zero multiple of 16", d->len);
    uint32_t n = d->len / sizeof(struct vring_desc);
    if (n > VQ_MAX_INDIRECT)
        return mark_broken(q, "indirect table of %u entries exceeds %u", n, VQ_MAX_INDIRECT);
    const void *t = guest_mem_ptr(q->mem, d->addr, d->len);
    if (!t || (d->addr & 15))
        return 0;
    w->table = t;
    w->table_n = n;
    w->in_indirect = true;
    w->seen = 0; /* from here the walk is bounded by the table's length */
    return 1;
}

/* Walks the chain starting at head into r. 1 ok, 0 reject, -1 broken. */
static int walk_chain(struct vq *q, uint16_t head, struct vq_req *r)
{
    struct walk w = { .table = q->desc, .table_n = q->size };
    uint32_t idx = head;
    for (;;) {
        if (++w.seen > w.table_n)
            return mark_broken(q, "descriptor chain from head %u loops or is longer than its table (%u entries)",
                               head, w.table_n);
        struct vring_desc d;
        memcpy(&d, &w.table[idx], sizeof(d)); /* one read: the guest may change it under us */
        if (d.flags & VRING_DESC_F_INDIRECT) {
            int rc = enter_indirect(q, &w, &d);
            if (rc <= 0)
                return rc;
            idx = 0;
            continue;
        }
        if (!add_segment(q, r, &d))
            return 0;
        if (!(d.flags & VRING_DESC_F_NEXT))
            break;
        if (d.next >= w.table_n)
            return mark_broken(q, "descriptor next index %u out of range (%u entries)", d.next, w.table_n);
        idx = d.next;
    }
    if (r->rlen > UINT32_MAX || r->wlen > UINT32_MAX)
        return 0;
    return 1;
}

int vq_pop(struct vq *q, struct vq_req *r)
{
    for (;;) {
        if (!q->ready || q->broken)
            return q->broken ? -1 : 0;
        uint16_t avail_idx = load_acquire16(&q->avail[1]);
        uint16_t pending = (uint16_t)(avail_idx - q->last_avail);
        if (pending == 0)
            return 0;
        if (pending > q->size)
            return mark_broken(q, "available index %u ran %u entries ahead of %u (queue size %u)",
                               avail_idx, pending, q->last_avail, q->size);
        uint16_t head = __atomic_load_n(&q->avail[2 + (q->last_avail & (q->size - 1))], __ATOMIC_RELAXED);
        if (head >= q->size)
            return mark_broken(q, "available ring entry %u names descriptor %u (queue size %u)",
                               q->last_avail, head, q->size);
        q->last_avail++;
        *r = (struct vq_req){ .head = head, .rd = q->rdv, .wr = q->wrv };
        int rc = walk_chain(q, head, r);
        if (rc == 1)
            return 1;
        if (rc < 0)
            return -1;
        /* Rejected: give the chain back untouched so the driver does not wait forever. */
        q->rejected++;
        vq_push(q, head, 0);
    }
}

void vq_unpop(struct vq *q) { q->last_avail--; }

void vq_push(struct vq *q, uint16_t head, uint32_t len)
{
    if (!q->ready)
        return;
    uint8_t *e = q->used + 4 + 8 * (size_t)(q->used_idx & (q->size - 1));
    uint32_t id = head;
    memcpy(e, &id, 4);
    memcpy(e + 4, &len, 4);
    q->used_idx++;
    store_release16((uint16_t *)(q->used + 2), q->used_idx);
    q->pushed = true;
}

bool vq_enable_notify(struct vq *q)
{
    if (!q->ready || q->broken)
        return false;
    if (q->event_idx) {
        uint16_t *avail_event = (uint16_t *)(q->used + 4 + 8 * (size_t)q->size);
        __atomic_store_n(avail_event, q->last_avail, __ATOMIC_RELAXED);
    }
    full_fence();
    return load_acquire16(&q->avail[1]) != q->last_avail;
}

/* The spec's vring_need_event(): has new_idx passed event since old? */
static bool need_event(uint16_t event, uint16_t new_idx, uint16_t old)
{
    return (uint16_t)(new_idx - event - 1) < (uint16_t)(new_idx - old);
}

bool vq_need_notify(struct vq *q)
{
    if (!q->ready)
        return false;
    full_fence();
    bool pushed = q->pushed;
    q->pushed = false;
    if (!pushed)
        return false;
    if (!q->event_idx)
        return !(__atomic_load_n(&q->avail[0], __ATOMIC_RELAXED) & VRING_AVAIL_F_NO_INTERRUPT);
    uint16_t old = q->signalled_used, now = q->used_idx;
    bool valid = q->signalled_valid;
    q->signalled_used = now;
    q->signalled_valid = true;
    if (!valid)
        return true; /* never signalled yet: always interrupt once */
    uint16_t used_event = __atomic_load_n(&q->avail[2 + q->size], __ATOMIC_RELAXED);
    return need_event(used_event, now, old);
}

bool vq_has_avail(const struct vq *q)
{
    return q->ready && !q->broken && load_acquire16(&q->avail[1]) != q->last_avail;
}

bool vq_irq_overdue(struct vq *q)
{
    if (!q->ready || q->broken || !q->event_idx)
        return false;
    full_fence();
    uint16_t event = __atomic_load_n(&q->avail[2 + q->size], __ATOMIC_RELAXED);
    bool same = q->tick_valid && event == q->tick_event && q->used_idx == q->tick_used;
    q->tick_event = event;
    q->tick_used = q->used_idx;
    q->tick_valid = true;
    if (!same) {
        q->tick_fired = false;
        return false;
    }
    /* Entries after `event` are in the used ring: the driver wanted an interrupt for them. */
    uint16_t past = (uint16_t)(q->used_idx - event);
    if (past == 0 || past >= 0x8000 || q->tick_fired)
        return false;
    q->tick_fired = true;
    return true;
}

size_t iov_to_buf(const struct iovec *iov, int cnt, size_t off, void *buf, size_t n)
{
    size_t done = 0;
    for (int i = 0; i < cnt && done < n; i++) {
        if (off >= iov[i].iov_len) {
            off -= iov[i].iov_len;
            continue;
        }
        size_t k = iov[i].iov_len - off;
        if (k > n - done)
            k = n - done;
        memcpy((uint8_t *)buf + done, (uint8_t *)iov[i].iov_base + off, k);
        done += k;
        off = 0;
    }
    return done;
}

size_t buf_to_iov(const struct iovec *iov, int cnt, size_t off, const void *buf, size_t n)
{
    size_t done = 0;
    for (int i = 0; i < cnt && done < n; i++) {
        if (off >= iov[i].iov_len) {
            off -= iov[i].iov_len;
            continue;
        }
        size_t k = iov[i].iov_len - off;
        if (k > n - done)
            k = n - done;
        memcpy((uint8_t *)iov[i].iov_base + off, (const uint8_t *)buf + done, k);
        done += k;
        off = 0;
    }
    return done;
}

int iov_slice(const struct iovec *src, int cnt, size_t off, size_t len, struct iovec *dst)
{
    int n = 0;
    for (int i = 0; i < cnt && len > 0; i++) {
        if (off >= src[i].iov_len) {
            off -= src[i].iov_len;
            continue;
        }
        size_t k = src[i].iov_len - off;
        if (k > len)
            k = len;
        dst[n].iov_base = (uint8_t *)src[i].iov_base + off;
        dst[n].iov_len = k;
        n++;
        len -= k;
        off = 0;
    }
    return n;
}
