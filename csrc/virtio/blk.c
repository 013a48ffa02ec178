/* virtio-blk (virtio 1.x section 5.2) backed by a host file or block device.
 *
 * A request is a chain: a 16-byte header the device reads, data (read for OUT, written for
 * IN and GET_ID), and one status byte the device writes last. We do not rely on the
 * driver putting each part in its own descriptor: the header is gathered from the first
 * readable bytes and the status is the last writable byte, whatever the split. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "device.h"
#include "devices.h"

#define VIRTIO_BLK_F_SIZE_MAX 1
#define VIRTIO_BLK_F_SEG_MAX 2
#define VIRTIO_BLK_F_RO 5
#define VIRTIO_BLK_F_FLUSH 9

#define VIRTIO_BLK_T_IN 0
#define VIRTIO_BLK_T_OUT 1
#define VIRTIO_BLK_T_FLUSH 4
#define VIRTIO_BLK_T_GET_ID 8

#define VIRTIO_BLK_S_OK 0
#define VIRTIO_BLK_S_IOERR 1
#define VIRTIO_BLK_S_UNSUPP 2

#define SECTOR 512u
#define BLK_QUEUE_MAX 1024
#define BLK_SIZE_MAX (1u << 20)
#define BLK_SEG_MAX 254 /* Linux's default too; leaves room for header and status in 256 */
#define BLK_ID_BYTES 20

struct blk {
    struct vdev d;
    int fd;
    bool read_only;
    uint64_t sectors;
    char serial[BLK_ID_BYTES];
    struct iovec *data; /* scratch: the data part of the current request */
};

struct blk_hdr {
    uint32_t type;
    uint32_t reserved;
    uint64_t sector;
};

/* Reads or writes the whole iovec list at off, retrying short transfers; 0 or -errno. */
static int full_io(int fd, struct iovec *iov, int cnt, uint64_t off, bool write)
{
    while (cnt > 0) {
        int k = cnt < IOV_MAX ? cnt : IOV_MAX;
        ssize_t n = write ? pwritev(fd, iov, k, (off_t)off) : preadv(fd, iov, k, (off_t)off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return -errno;
        if (n == 0)
            return -EIO; /* the file shrank under us */
        off += (uint64_t)n;
        while (cnt > 0 && (size_t)n >= iov->iov_len) {
            n -= (ssize_t)iov->iov_len;
            iov++, cnt--;
        }
        if (cnt > 0) {
            iov->iov_base = (uint8_t *)iov->iov_base + n;
            iov->iov_len -= (size_t)n;
        }
    }
    return 0;
}

/* True if [sector, sector + len/512) is inside the disk and len is whole sectors. */
static bool in_range(const struct blk *b, uint64_t sector, uint64_t len)
{
    if (len % SECTOR)
        return false;
    return sector <= b->sectors && len / SECTOR <= b->sectors - sector;
}

static uint8_t do_rw(struct blk *b, const struct blk_hdr *h, const struct vq_req *r, bool write,
                     uint32_t *written)
{
    uint64_t len = write ? r->rlen - sizeof(*h) : r->wlen - 1;
    if (write && b->read_only)
        return VIRTIO_BLK_S_IOERR;
    if (!in_range(b, h->sector, len))
        return VIRTIO_BLK_S_IOERR;
    int n = write ? iov_slice(r->rd, r->nr, sizeof(*h), len, b->data)
                  : iov_slice(r->wr, r->nw, 0, len, b->data);
    if (full_io(b->fd, b->data, n, h->sector * SECTOR, write) < 0)
        return VIRTIO_BLK_S_IOERR;
    if (write) {
        counter_add(b->d.c.bytes_written, len);
    } else {
        counter_add(b->d.c.bytes_read, len);
        *written = (uint32_t)len;
    }
    return VIRTIO_BLK_S_OK;
}

static uint8_t do_get_id(struct blk *b, const struct vq_req *r, uint32_t *written)
{
    uint64_t room = r->wlen - 1;
    size_t n = room < BLK_ID_BYTES ? (size_t)room : BLK_ID_BYTES;
    *written = (uint32_t)buf_to_iov(r->wr, r->nw, 0, b->serial, n);
    return VIRTIO_BLK_S_OK;
}

/* Serves one request; returns the bytes written into the chain (for the used ring). */
static uint32_t blk_handle(struct blk *b, const struct vq_req *r)
{
    struct blk_hdr h;
    if (r->wlen < 1) {
        counter_add(b->d.c.errors, 1); /* nowhere to put a status: just return the chain */
        return 0;
    }
    uint32_t data_written = 0;
    uint8_t status;
    if (iov_to_buf(r->rd, r->nr, 0, &h, sizeof(h)) < sizeof(h)) {
        status = VIRTIO_BLK_S_IOERR;
    } else {
        counter_add(b->d.c.requests, 1);
        switch (h.type) {
        case VIRTIO_BLK_T_IN:
            status = do_rw(b, &h, r, false, &data_written);
            break;
        case VIRTIO_BLK_T_OUT:
            status = do_rw(b, &h, r, true, &data_written);
            break;
        case VIRTIO_BLK_T_FLUSH:
            status = b->read_only || fdatasync(b->fd) == 0 ? VIRTIO_BLK_S_OK : VIRTIO_BLK_S_IOERR;
            break;
        case VIRTIO_BLK_T_GET_ID:
            status = do_get_id(b, r, &data_written);
            break;
        default:
            status = VIRTIO_BLK_S_UNSUPP;
        }
    }
    if (status != VIRTIO_BLK_S_OK)
        counter_add(b->d.c.errors, 1);
    buf_to_iov(r->wr, r->nw, r->wlen - 1, &status, 1);
    return data_written + 1;
}

/* Serves the queue until it is empty or the budget is spent (see VDEV_BUDGET_CHAINS):
 * disk I/O runs under d->lock, so the budget also bounds how long the lock is held. */
static void blk_notify(struct vdev *d, int qi)
{
    struct blk *b = (struct blk *)d;
    struct vq *q = &d->vq[qi];
    struct vq_req r;
    unsigned chains = 0;
    uint64_t bytes = 0;
    for (;;) {
        int rc = 0;
        while (!vdev_budget_spent(d, qi, chains, bytes) && (rc = vq_pop(q, &r)) == 1) {
            vq_push(q, r.head, blk_handle(b, &r));
            chains++;
            bytes += r.rlen + r.wlen;
        }
        if (rc == 1)
            break; /* out of budget: the transport calls us again */
        if (rc < 0) {
            vdev_note_broken(d, qi);
            break;
        }
        if (!vq_enable_notify(q))
            break;
    }
    vdev_signal(d, qi);
}

static void blk_destroy(struct vdev *d)
{
    struct blk *b = (struct blk *)d;
    if (b->fd >= 0)
        close(b->fd);
    free(b->data);
}

static const struct vdev_ops blk_ops = {
    .notify = blk_notify,
    .destroy = blk_destroy,
};

static void put_u32(uint8_t *p, uint32_t v) { memcpy(p, &v, 4); }
static void put_u64(uint8_t *p, uint64_t v) { memcpy(p, &v, 8); }

/* virtio_blk_config: capacity @0, size_max @8, seg_max @12; the rest (60 bytes in Linux
 * 6.1) stays zero: no geometry, topology, discard or write-zeroes. */
static void blk_fill_config(struct blk *b)
{
    put_u64(b->d.config + 0, b->sectors);
    put_u32(b->d.config + 8, BLK_SIZE_MAX);
    put_u32(b->d.config + 12, BLK_SEG_MAX);
    b->d.config_len = 60;
}

struct vdev *blk_new(const char *path, bool read_only, const char *serial, char *err, size_t errlen)
{
    int fd = open(path, (read_only ? O_RDONLY : O_RDWR) | O_CLOEXEC);
    if (fd < 0) {
        snprintf(err, errlen, "cannot open disk %s: %s", path, strerror(errno));
        return NULL;
    }
    off_t size = lseek(fd, 0, SEEK_END);
    if (size < 0) {
        snprintf(err, errlen, "cannot find the size of disk %s: %s", path, strerror(errno));
        close(fd);
        return NULL;
    }
    struct blk *b = calloc(1, sizeof(*b));
    if (b)
        b->data = calloc(VQ_MAX_SEGS(BLK_QUEUE_MAX), sizeof(struct iovec));
    if (!b || !b->data) {
        snprintf(err, errlen, "out of memory for disk %s", path);
        if (b)
            free(b);
        close(fd);
        return NULL;
    }
    uint64_t features = (1ull << VIRTIO_BLK_F_SIZE_MAX) | (1ull << VIRTIO_BLK_F_SEG_MAX) |
                        (1ull << VIRTIO_BLK_F_FLUSH) | (1ull << VIRTIO_RING_F_INDIRECT_DESC) |
                        (1ull << VIRTIO_RING_F_EVENT_IDX);
    if (read_only)
        features |= 1ull << VIRTIO_BLK_F_RO;
    vdev_init(&b->d, "blk", VIRTIO_ID_BLOCK, &blk_ops, features, 1, BLK_QUEUE_MAX);
    b->fd = fd;
    b->read_only = read_only;
    b->sectors = (uint64_t)size / SECTOR;
    if (serial)
        memcpy(b->serial, serial, strnlen(serial, sizeof(b->serial))); /* not NUL-terminated if 20 */
    blk_fill_config(b);
    return &b->d;
}
