/* Split virtqueues (virtio 1.x, section 2.7), walked from the device side.
 *
 * The guest writes the rings while we read them, and every value in them is untrusted:
 * vq_pop() copies each descriptor once, checks it, and turns a chain into two iovec lists
 * (device-readable, then device-writable) of host pointers that lie inside guest RAM.
 * A structurally impossible queue state (a loop, a chain longer than the queue, a nested
 * indirect table, a head index out of range, an avail index that ran ahead by more than
 * the queue size) marks the queue broken with a reason; it then does nothing until it is
 * set up again. A chain whose buffers point outside guest RAM, or are in the wrong order,
 * is only rejected: it is returned to the guest with 0 bytes written and counted.
 *
 * The host is assumed little-endian (x86_64, like virtio 1.x rings). */
#ifndef VIRTIO_QUEUE_H
#define VIRTIO_QUEUE_H
#include <stdbool.h>
#include <stdint.h>
#include <sys/uio.h>

#include "guest_mem.h"

#define VQ_MAX_SIZE 32768
/* Linux sizes indirect tables by the request (e.g. blk's seg_max), not by the queue size,
 * so a table may be longer than a small queue; we cap it where QEMU does. */
#define VQ_MAX_INDIRECT 1024
/* Most segments one chain can produce: a direct chain, or an indirect table. */
#define VQ_MAX_SEGS(size) ((size) > VQ_MAX_INDIRECT ? (size) : VQ_MAX_INDIRECT)

#define VRING_DESC_F_NEXT 1
#define VRING_DESC_F_WRITE 2
#define VRING_DESC_F_INDIRECT 4
#define VRING_AVAIL_F_NO_INTERRUPT 1

#define VIRTIO_RING_F_INDIRECT_DESC 28
#define VIRTIO_RING_F_EVENT_IDX 29
#define VIRTIO_F_VERSION_1 32

struct vring_desc {
    uint64_t addr;
    uint32_t len;
    uint16_t flags;
    uint16_t next;
};

struct vq_req {
    uint16_t head;
    int nr, nw;           /* readable, writable segment counts */
    struct iovec *rd, *wr;
    uint64_t rlen, wlen;  /* total bytes */
};

struct vq {
    uint16_t size;
    bool ready;       /* set up and translated: may be popped */
    bool event_idx;   /* VIRTIO_RING_F_EVENT_IDX negotiated */
    bool indirect;    /* VIRTIO_RING_F_INDIRECT_DESC negotiated */
    bool broken;
    char reason[160];
    uint64_t desc_gpa, avail_gpa, used_gpa;

    /* Host pointers to the rings, valid while ready. */
    struct vring_desc *desc;
    uint16_t *avail;   /* flags, idx, ring[size], used_event */
    uint8_t *used;     /* flags u16, idx u16, {id u32, len u32}[size], avail_event u16 */
    const struct guest_mem *mem;

    uint16_t last_avail;    /* next avail entry we will consume */
    uint16_t used_idx;      /* our copy of used->idx */
    uint16_t signalled_used;
    bool signalled_valid;
    bool pushed;            /* something was pushed since the last notification check */
    uint16_t tick_event, tick_used; /* vq_irq_overdue's view at its previous call */
    bool tick_valid, tick_fired;

    struct iovec *rdv, *wrv; /* scratch for vq_pop, VQ_MAX_SEGS(size) entries each */
    uint64_t rejected;       /* chains returned unused because they were invalid */
};

/* Sets up (or re-translates) a queue. size must be a power of 2 in 1..VQ_MAX_SIZE; the
 * three rings must be aligned as the spec requires and lie in guest RAM. On failure
 * writes a one-line reason to err and leaves the queue not ready. */
int vq_setup(struct vq *q, const struct guest_mem *mem, uint16_t size, uint64_t desc,
             uint64_t avail, uint64_t used, uint64_t features, char *err, size_t errlen);
/* Forgets the rings and frees the scratch; keeps nothing of the guest. */
void vq_teardown(struct vq *q);

/* 1: *r holds a valid chain; 0: nothing available; -1: the queue is broken. */
int vq_pop(struct vq *q, struct vq_req *r);
/* Gives back the chain just popped, unused, so the next vq_pop returns it again (for a
 * device that popped a buffer and then found it had nothing to put in it). */
void vq_unpop(struct vq *q);
/* Returns a chain to the guest with len bytes written into its writable part. */
void vq_push(struct vq *q, uint16_t head, uint32_t len);
/* After the avail ring ran empty: asks the guest to kick on the next buffer (EVENT_IDX)
 * and returns true if buffers arrived in the meantime, so the caller loops again. */
bool vq_enable_notify(struct vq *q);
/* Whether the guest wants an interrupt for what was pushed since the last call. */
bool vq_need_notify(struct vq *q);

/* True if the driver has made buffers available that we have not popped. */
bool vq_has_avail(const struct vq *q);
/* For a transport that cannot trust the guest's barriers (QEMU TCG with one vCPU emits
 * none, so a kick or an interrupt can be lost in the avail_event/used_event handshake):
 * true, once per stall, when the driver asked for an interrupt at an entry we have
 * already passed and nothing moved since the previous call. Call it periodically. */
bool vq_irq_overdue(struct vq *q);

/* Copies n bytes starting at byte off of an iovec list into buf (or out of buf);
 * returns the bytes copied (less than n if the list is shorter). */
size_t iov_to_buf(const struct iovec *iov, int cnt, size_t off, void *buf, size_t n);
size_t buf_to_iov(const struct iovec *iov, int cnt, size_t off, const void *buf, size_t n);
/* Makes dst a view of bytes [off, off+len) of src; returns the number of entries. */
int iov_slice(const struct iovec *src, int cnt, size_t off, size_t len, struct iovec *dst);

#endif
