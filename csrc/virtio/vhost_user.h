/* vhost-user back-end: what its files share (not visible outside csrc/virtio/vhost_user*.c).
 *
 * A vhost-user back-end ("slave") serving one struct vdev on a Unix socket, in three files:
 *   vhost_user_msg.c    the wire format: reading a message with its fds, replies, and the
 *                       length and index checks every payload goes through
 *   vhost_user_rings.c  what the front-end sets up: the memory table (mapped here) and the
 *                       rings (addresses, kick/call fds, start and stop)
 *   vhost_user.c        the server: listener, one connection, the request dispatch and
 *                       config space, its events on the process's loop, start and stop
 *
 * Protocol: QEMU docs/interop/vhost-user.rst. The front-end (QEMU) owns the virtio
 * transport; we receive its guest memory as fds (mapped here), the rings' addresses in
 * its address space, an eventfd per queue to wait on (kick) and one to signal (call).
 * Each server keeps its fds in an epoll set of its own (listener, control connection, kick
 * eventfds, the device's backend fds d->poll_fd, and a tick timer), and every server of
 * the process waits on one event loop (ioloop.c): one thread serves all the back-ends of a
 * VM, and for each server a memory-table change never races its queue processing; d->lock
 * is held while changing memory or rings. Every message is length-checked; a malformed one
 * closes the connection (the device is reset and the server waits for the next
 * front-end), never the process. Messages are read as they arrive, never waiting for the
 * rest of one (the loop may serve several VMs' back ends: an embedder runs several VMs
 * in one process); sending a reply waits at most VU_SEND_TIMEOUT_MS.
 *
 * What a hostile front end cannot do (issue 12): leave a ring pointing into memory that
 * is no longer mapped (a new memory table must hold every running ring, or every ring
 * stops before the old table goes and the connection closes); make the process fault on
 * guest memory (regions must be memfds sealed with F_SEAL_SHRINK, covering the region);
 * block the loop on a call fd or spin it on a kick fd (both must be eventfds, both are
 * non-blocking, a kick fd that fails breaks its ring and leaves the loop). */
#ifndef VIRTIO_VHOST_USER_H
#define VIRTIO_VHOST_USER_H
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
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
/* Replies are a few bytes and QEMU reads each one before its next request: a reply that
 * cannot be sent within this time means a front end that does not read them, and its
 * connection closes instead of blocking the loop (every device of the process) forever. */
#define VU_SEND_TIMEOUT_MS 1000
/* A kick eventfd still readable after this many reads in a row does not drain (see
 * vu_ring_kick): a front end kicking between every two of our reads is not plausible. */
#define VU_KICK_READS 64
/* While rings run, look at them this often even without a kick: see vu_rings_tick(). */
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
    int listen_fd, conn, epfd, tick_fd;
    bool ticking;           /* tick_fd armed (while some ring runs) */
    bool in_loop;           /* epfd is on the process's event loop */
    struct guest_mem mem;
    struct vu_map maps[GUEST_MEM_MAX_REGIONS];
    int nmaps;
    struct vu_ring ring[VDEV_MAX_QUEUES];
    uint64_t protocol_features;
    bool proto_acked;
    char error[200];
    struct vu_msg in;       /* the message being read from conn ... */
    size_t in_have;         /* ... and how many of its bytes (header, payload) are in */
    /* Guards s->conn between the loop thread (which closes it) and stop (which shuts it
     * down to wake the loop if it waits to send one of our replies). */
    pthread_mutex_t conn_lock;
};

/* epoll tags */
#define TAG_TICK 1
#define TAG_LISTEN 2
#define TAG_CONN 3
#define TAG_BACKEND 4   /* the device's backend fds (d->poll_fd) */
#define TAG_KICK0 16

static inline void vu_close_fd(int *fd)
{
    if (*fd >= 0)
        close(*fd);
    *fd = -1;
}

/* vhost_user_msg.c */
/* Records why the connection closes (vmm_vhost_user_error) and logs it; returns -1. */
int vu_fail(struct vmm_vhost_user *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Reads what has arrived of the next message (with its fds) into s->in, without waiting.
 * 1 whole message, 2 not yet whole, 0 peer closed between messages, -1 error (reason set). */
int vu_read_msg(struct vmm_vhost_user *s);
/* Forgets s->in (closing the fds it still holds) for the next message. */
void vu_msg_clear(struct vmm_vhost_user *s);
int vu_send_reply(struct vmm_vhost_user *s, const struct vu_msg *req, const void *payload, uint32_t len);
int vu_reply_u64(struct vmm_vhost_user *s, const struct vu_msg *m, uint64_t v);
/* A u64 payload, length checked. */
int vu_payload_u64(struct vmm_vhost_user *s, const struct vu_msg *m, uint64_t *v);
/* vring state {index, num}, with index checked against the device's queues. */
int vu_payload_state(struct vmm_vhost_user *s, const struct vu_msg *m, uint32_t *idx, uint32_t *num);
/* The message's next fd (ownership passes to the caller), or -1. */
int vu_take_fd(struct vu_msg *m);

/* vhost_user_rings.c (each takes d->lock itself) */
/* The device's interrupt: signal the ring's call eventfd. */
void vu_irq(void *opaque, int qi);
/* Back to the state of a fresh connection: rings stopped, fds closed, memory unmapped. */
void vu_reset_all(struct vmm_vhost_user *s);
/* Stops ring qi, keeping its position (lock held). */
void vu_ring_stop(struct vmm_vhost_user *s, int qi);
/* Ring qi's kick eventfd fired (or hung up: the ring breaks). */
void vu_ring_kick(struct vmm_vhost_user *s, int qi, bool hangup);
int vu_set_mem_table(struct vmm_vhost_user *s, struct vu_msg *m);
int vu_set_vring_addr(struct vmm_vhost_user *s, const struct vu_msg *m);
/* SET_VRING_KICK / CALL / ERR. */
int vu_set_vring_fd(struct vmm_vhost_user *s, struct vu_msg *m);
int vu_get_vring_base(struct vmm_vhost_user *s, const struct vu_msg *m);
void vu_rings_tick(struct vmm_vhost_user *s);
bool vu_any_ring_started(const struct vmm_vhost_user *s);

/* vhost_user.c */
void vu_epoll_set(struct vmm_vhost_user *s, int fd, uint64_t tag, bool add);

#endif
