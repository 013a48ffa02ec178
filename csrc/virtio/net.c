/* virtio-net (virtio 1.x section 5.1) with a frame backend: a Unix stream socket speaking
 * 4-byte big-endian length framing (passt, QEMU's stream netdev), or a tap device.
 *
 * No offloads are offered, so every packet starts with a 12-byte virtio_net_hdr_v1 that
 * says "nothing to do"; we strip it on the way out and prepend a zero one on the way in.
 * Backend -> guest runs when the backend fd is ready (net_poll, on the transport's event
 * loop): input is read in large chunks and split into frames, each handed to the guest as
 * it gives rx buffers; when it has none we stop reading (the backend buffers, or drops, as
 * a wire would). Guest -> backend runs on the transport's notify, frame by frame, and
 * pauses (never blocks) while the backend is full. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/if_tun.h>
#include <net/if.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include "device.h"
#include "devices.h"
#include "net_policy.h"

#define VIRTIO_NET_F_MAC 5
#define VIRTIO_NET_F_STATUS 16
#define VIRTIO_NET_S_LINK_UP 1

#define Q_RX 0
#define Q_TX 1
#define NET_QUEUE_MAX 1024
#define NET_HDR_LEN 12
#define MAX_FRAME 65550u /* 64 KiB payload plus Ethernet header, with some slack */
#define RBUF_SIZE (256u * 1024) /* backend input, read in large chunks and split into frames */
/* Policy replies (RSTs for denied TCP) waiting for a guest rx buffer. A few suffice: a lost
 * one only means the guest's retransmitted SYN is refused again. */
#define REPLY_SLOTS 8

struct net {
    struct vdev d;
    int fd, kind;
    int epfd;              /* the backend fd alone; exposed as d.poll_fd */
    bool reading;          /* we want EPOLLIN */
    bool tx_blocked;       /* txbuf[tx_off..tx_len) still has to reach the stream backend */
    uint32_t tx_off, tx_len;
    uint32_t events;       /* registered with epoll */
    bool dead;             /* the backend closed or broke its framing */
    bool not_socket;       /* the stream backend fd is not a socket: write(), not send() */
    /* Bytes read from the backend, rbuf[rstart..rend), parsed into frames in place. All
     * of the rx state is used under d.lock only, by net_poll and by notify. */
    uint8_t *rbuf;
    uint32_t rstart, rend;
    bool frame_ready;      /* frame/frame_len (inside rbuf) wait for a guest buffer */
    const uint8_t *frame;
    uint32_t frame_len;
    uint8_t *txbuf;        /* 4-byte length + frame, for the stream backend */
    struct iovec *scratch;
    /* Egress policy (vmm_net_set_policy; not owned): every guest frame is checked before
     * it reaches the backend. Denied TCP gets an RST back, queued in replies[]. */
    struct vmm_net_policy *policy;
    uint8_t replies[REPLY_SLOTS][NET_POLICY_REPLY_MAX];
    uint16_t reply_len[REPLY_SLOTS];
    unsigned reply_head, reply_count;
};

/* The backend events we wait for: input while we can take a frame, output while a frame
 * for the backend is only partly written. */
static void update_events(struct net *n)
{
    uint32_t ev = (n->reading && !n->dead ? EPOLLIN : 0) | (n->tx_blocked && !n->dead ? EPOLLOUT : 0);
    if (ev == n->events)
        return;
    struct epoll_event e = { .events = ev, .data.u64 = 1 };
    epoll_ctl(n->epfd, EPOLL_CTL_MOD, n->fd, &e);
    n->events = ev;
}

static void set_reading(struct net *n, bool on)
{
    n->reading = on;
    update_events(n);
}

static void backend_dead(struct net *n, const char *why)
{
    if (!n->dead) {
        vdev_log(&n->d, "backend: %s; the link is down", why);
        /* Out of epoll for good: a hang-up would otherwise be reported forever. */
        epoll_ctl(n->epfd, EPOLL_CTL_DEL, n->fd, NULL);
    }
    n->dead = true;
    n->d.config[6] &= (uint8_t)~VIRTIO_NET_S_LINK_UP;
}

/* ---- backend -> guest ---- */

/* Hands the held frame to the guest if it has a buffer; true if the frame is gone. */
static bool deliver(struct net *n)
{
    struct vq *q = &n->d.vq[Q_RX];
    struct vq_req r;
    int rc = vq_pop(q, &r);
    if (rc < 0)
        vdev_note_broken(&n->d, Q_RX);
    if (rc != 1)
        return false;
    uint8_t hdr[NET_HDR_LEN] = { 0 };
    hdr[10] = 1; /* num_buffers */
    if (r.wlen < NET_HDR_LEN + (uint64_t)n->frame_len) {
        counter_add(n->d.c.errors, 1); /* guest buffer too small: drop the frame, as a NIC would */
        vq_push(q, r.head, 0);
        return true;
    }
    buf_to_iov(r.wr, r.nw, 0, hdr, sizeof(hdr));
    buf_to_iov(r.wr, r.nw, NET_HDR_LEN, n->frame, n->frame_len);
    vq_push(q, r.head, NET_HDR_LEN + n->frame_len);
    counter_add(n->d.c.frames_in, 1);
    counter_add(n->d.c.bytes_read, n->frame_len);
    return true;
}

/* A policy reply for the guest; the oldest is overwritten when all slots wait. */
static void queue_reply(struct net *n, const uint8_t *frame, size_t len)
{
    if (len > NET_POLICY_REPLY_MAX)
        return;
    unsigned slot = (n->reply_head + n->reply_count) % REPLY_SLOTS;
    if (n->reply_count == REPLY_SLOTS)
        n->reply_head = (n->reply_head + 1) % REPLY_SLOTS;
    else
        n->reply_count++;
    memcpy(n->replies[slot], frame, len);
    n->reply_len[slot] = (uint16_t)len;
}

/* Hands waiting policy replies to the guest while it has rx buffers; lock held. */
static void deliver_replies(struct net *n)
{
    struct vq *q = &n->d.vq[Q_RX];
    while (n->reply_count && q->ready && !q->broken) {
        struct vq_req r;
        int rc = vq_pop(q, &r);
        if (rc < 0)
            vdev_note_broken(&n->d, Q_RX);
        if (rc != 1)
            return;
        unsigned slot = n->reply_head;
        uint32_t len = n->reply_len[slot];
        n->reply_head = (n->reply_head + 1) % REPLY_SLOTS;
        n->reply_count--;
        if (r.wlen < NET_HDR_LEN + (uint64_t)len) {
            vq_push(q, r.head, 0);
            continue;
        }
        uint8_t hdr[NET_HDR_LEN] = { 0 };
        hdr[10] = 1; /* num_buffers */
        buf_to_iov(r.wr, r.nw, 0, hdr, sizeof(hdr));
        buf_to_iov(r.wr, r.nw, NET_HDR_LEN, n->replies[slot], len);
        vq_push(q, r.head, NET_HDR_LEN + len);
        counter_add(n->d.c.frames_in, 1);
    }
}

/* Next whole frame from the stream: parsed from what was read already, else read more
 * (non-blocking). 1: n->frame is set; 0: need more input; -1: backend gone or bad length. */
static int next_stream_frame(struct net *n)
{
    for (;;) {
        uint32_t have = n->rend - n->rstart;
        if (have >= 4) {
            const uint8_t *p = n->rbuf + n->rstart;
            uint32_t len = (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
            if (len == 0 || len > MAX_FRAME)
                return -1;
            if (have >= 4 + len) {
                n->frame = p + 4;
                n->frame_len = len;
                n->rstart += 4 + len;
                return 1;
            }
        }
        if (RBUF_SIZE - n->rend < MAX_FRAME + 4) { /* make room for a whole frame */
            memmove(n->rbuf, n->rbuf + n->rstart, have);
            n->rstart = 0;
            n->rend = have;
        }
        ssize_t k = read(n->fd, n->rbuf + n->rend, RBUF_SIZE - n->rend);
        if (k < 0 && errno == EINTR)
            continue;
        if (k < 0 && errno == EAGAIN)
            return 0;
        if (k <= 0)
            return -1;
        n->rend += (uint32_t)k;
    }
}

static int next_tap_frame(struct net *n)
{
    ssize_t k = read(n->fd, n->rbuf, MAX_FRAME);
    if (k < 0 && (errno == EAGAIN || errno == EINTR))
        return 0;
    if (k <= 0)
        return -1;
    n->frame = n->rbuf;
    n->frame_len = (uint32_t)k;
    return 1;
}

/* Moves frames from the backend to the guest until either runs dry; lock held. Called by
 * net_poll (input arrived) and by notify (the guest added rx buffers). */
static void pump_rx(struct net *n)
{
    struct vq *q = &n->d.vq[Q_RX];
    unsigned frames = 0;
    deliver_replies(n);
    while (!n->dead && q->ready && !q->broken) {
        /* A budget per call (VDEV_BUDGET_CHAINS): frames already read stay in rbuf, and the
         * transport calls notify(Q_RX) again after serving what else is ready. */
        if (vdev_budget_spent(&n->d, Q_RX, frames, 0))
            break;
        if (!n->frame_ready) {
            int rc = n->kind == NET_BACKEND_TAP ? next_tap_frame(n) : next_stream_frame(n);
            if (rc < 0)
                backend_dead(n, "the backend closed the connection or sent a bad frame length");
            if (rc <= 0)
                break;
            n->frame_ready = true;
            if (n->policy) /* domain rules learn from DNS answers; the frame goes on as is */
                vmm_net_policy_observe(n->policy, n->frame, n->frame_len);
        }
        if (deliver(n)) {
            n->frame_ready = false;
            frames++;
            continue;
        }
        /* No buffer: with EVENT_IDX the guest kicks only if we ask (avail_event). */
        if (!vq_enable_notify(q))
            break;
    }
    vdev_signal(&n->d, Q_RX);
    set_reading(n, !n->frame_ready);
}

static void backend_readable(struct net *n)
{
    pthread_mutex_lock(&n->d.lock);
    pump_rx(n);
    pthread_mutex_unlock(&n->d.lock);
}

static void process_tx(struct net *n);
static int flush_stream_tx(struct net *n);

/* The backend took the rest of a blocked frame: finish it and resume the tx queue. */
static void backend_writable(struct net *n)
{
    pthread_mutex_lock(&n->d.lock);
    if (n->tx_blocked && !n->dead) {
        if (flush_stream_tx(n) < 0)
            backend_dead(n, "cannot write a frame to the backend socket");
        else if (!n->tx_blocked && n->d.vq[Q_TX].ready)
            process_tx(n);
    }
    pthread_mutex_unlock(&n->d.lock);
}

/* The backend fd is ready (the transport's event loop saw d.poll_fd readable). */
static void net_poll(struct vdev *d)
{
    struct net *n = (struct net *)d;
    struct epoll_event evs[4];
    int k = epoll_wait(n->epfd, evs, 4, 0);
    for (int i = 0; i < k; i++) {
        if (evs[i].events & EPOLLOUT)
            backend_writable(n);
        if (evs[i].events & EPOLLIN)
            backend_readable(n);
        if (evs[i].events & (EPOLLHUP | EPOLLERR)) {
            pthread_mutex_lock(&n->d.lock);
            backend_dead(n, "the backend hung up");
            pthread_mutex_unlock(&n->d.lock);
        }
    }
}

/* ---- guest -> backend ---- */

/* A write to the stream backend. send() with MSG_NOSIGNAL: a backend that hung up must
 * be a dead link (EPIPE), not a SIGPIPE that kills whatever process hosts the device (the
 * VMM, or a back-end process whose SIGPIPE is at its default). write() for a backend fd
 * that is not a socket (a pipe, say), where MSG_NOSIGNAL has no equivalent. */
static ssize_t stream_write(struct net *n, const void *buf, size_t len)
{
    if (!n->not_socket) {
        ssize_t k = send(n->fd, buf, len, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (k >= 0 || errno != ENOTSOCK)
            return k;
        n->not_socket = true;
    }
    return write(n->fd, buf, len);
}

/* Pushes the pending framed bytes to the stream backend without blocking. The guest's
 * tx queue waits (we stop popping) while a frame is only partly written: never block the
 * device on the backend, whose own writes towards us net_poll must keep taking. */
static int flush_stream_tx(struct net *n)
{
    while (n->tx_off < n->tx_len) {
        ssize_t k = stream_write(n, n->txbuf + n->tx_off, n->tx_len - n->tx_off);
        if (k < 0 && errno == EINTR)
            continue;
        if (k < 0 && errno == EAGAIN) {
            n->tx_blocked = true;
            update_events(n);
            return 0;
        }
        if (k <= 0)
            return -1;
        n->tx_off += (uint32_t)k;
    }
    n->tx_off = n->tx_len = 0;
    n->tx_blocked = false;
    update_events(n);
    return 0;
}

static void send_frame(struct net *n, const struct vq_req *r)
{
    counter_add(n->d.c.requests, 1);
    if (r->rlen <= NET_HDR_LEN || r->rlen - NET_HDR_LEN > MAX_FRAME || n->dead) {
        counter_add(n->d.c.errors, 1);
        return;
    }
    uint32_t len = (uint32_t)(r->rlen - NET_HDR_LEN);
    int rc;
    if (n->policy) {
        /* The policy needs the frame whole (it checks IP lengths against it). */
        iov_to_buf(r->rd, r->nr, NET_HDR_LEN, n->txbuf + 4, len);
        uint8_t reply[NET_POLICY_REPLY_MAX];
        size_t reply_len = sizeof(reply);
        if (vmm_net_policy_check(n->policy, n->txbuf + 4, len, reply, &reply_len) != VMM_NET_PASS) {
            counter_add(n->d.c.rejected, 1);
            if (reply_len)
                queue_reply(n, reply, reply_len);
            return;
        }
    }
    if (n->kind == NET_BACKEND_TAP && n->policy) {
        rc = write(n->fd, n->txbuf + 4, len) == (ssize_t)len ? 0 : -1; /* copied above */
    } else if (n->kind == NET_BACKEND_TAP) {
        int cnt = iov_slice(r->rd, r->nr, NET_HDR_LEN, len, n->scratch);
        rc = cnt <= IOV_MAX && writev(n->fd, n->scratch, cnt) == (ssize_t)len ? 0 : -1; /* a full tap drops, like a wire */
    } else {
        uint8_t be[4] = { (uint8_t)(len >> 24), (uint8_t)(len >> 16), (uint8_t)(len >> 8), (uint8_t)len };
        memcpy(n->txbuf, be, 4);
        if (!n->policy)
            iov_to_buf(r->rd, r->nr, NET_HDR_LEN, n->txbuf + 4, len);
        n->tx_off = 0;
        n->tx_len = 4 + len;
        rc = flush_stream_tx(n);
        if (rc < 0)
            backend_dead(n, "cannot write a frame to the backend socket");
    }
    if (rc < 0) {
        counter_add(n->d.c.errors, 1);
        return;
    }
    counter_add(n->d.c.frames_out, 1);
    counter_add(n->d.c.bytes_written, len);
}

static void process_tx(struct net *n)
{
    struct vq *q = &n->d.vq[Q_TX];
    struct vq_req r;
    unsigned frames = 0;
    uint64_t bytes = 0;
    for (;;) {
        int rc = 0;
        while (!n->tx_blocked && !vdev_budget_spent(&n->d, Q_TX, frames, bytes) &&
               (rc = vq_pop(q, &r)) == 1) {
            send_frame(n, &r); /* the frame is copied out: the chain can go back now */
            vq_push(q, r.head, 0);
            frames++;
            bytes += r.rlen;
        }
        if (n->tx_blocked || rc == 1)
            break; /* resumed by net_poll when the backend takes more, or out of budget */
        if (rc < 0) {
            vdev_note_broken(&n->d, Q_TX);
            break;
        }
        if (!vq_enable_notify(q))
            break;
    }
    vdev_signal(&n->d, Q_TX);
    if (n->reply_count) {
        deliver_replies(n);
        vdev_signal(&n->d, Q_RX);
    }
}

static void net_notify(struct vdev *d, int qi)
{
    struct net *n = (struct net *)d;
    if (qi == Q_TX)
        process_tx(n);
    else if (qi == Q_RX)
        pump_rx(n);
}

static void net_reset(struct vdev *d)
{
    /* A held frame is dropped; bytes of a stream frame not yet complete stay, to keep the
     * framing. Waiting policy replies go too. */
    ((struct net *)d)->frame_ready = false;
    ((struct net *)d)->reply_count = 0;
}

void net_set_policy(struct vdev *d, struct vmm_net_policy *policy)
{
    struct net *n = (struct net *)d;
    pthread_mutex_lock(&d->lock);
    n->policy = policy;
    pthread_mutex_unlock(&d->lock);
}

static void net_destroy(struct vdev *d)
{
    struct net *n = (struct net *)d;
    if (n->fd >= 0)
        close(n->fd);
    if (n->epfd >= 0)
        close(n->epfd);
    free(n->rbuf);
    free(n->txbuf);
    free(n->scratch);
}

static const struct vdev_ops net_ops = {
    .notify = net_notify,
    .reset = net_reset,
    .poll = net_poll,
    .destroy = net_destroy,
};

int vmm_net_open_tap(const char *name, char *err, size_t errlen)
{
    struct ifreq ifr = { .ifr_flags = IFF_TAP | IFF_NO_PI };
    if (strlen(name) >= IFNAMSIZ) {
        snprintf(err, errlen, "tap device name %s is longer than %d bytes", name, IFNAMSIZ - 1);
        return -1;
    }
    strcpy(ifr.ifr_name, name);
    int fd = open("/dev/net/tun", O_RDWR | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0 || ioctl(fd, TUNSETIFF, &ifr) < 0) {
        snprintf(err, errlen, "cannot open tap device %s: %s", name, strerror(errno));
        if (fd >= 0)
            close(fd);
        return -1;
    }
    return fd;
}

struct vdev *net_new(int backend_fd, int kind, const uint8_t mac[6], char *err, size_t errlen)
{
    struct net *n = calloc(1, sizeof(*n));
    if (n) {
        n->rbuf = malloc(RBUF_SIZE);
        n->txbuf = malloc(MAX_FRAME + 4);
        n->scratch = calloc(VQ_MAX_SEGS(NET_QUEUE_MAX), sizeof(struct iovec));
    }
    if (!n || !n->rbuf || !n->txbuf || !n->scratch) {
        if (n) {
            free(n->rbuf);
            free(n->txbuf);
            free(n->scratch);
        }
        free(n);
        close(backend_fd);
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    vdev_init(&n->d, "net", VIRTIO_ID_NET, &net_ops,
              (1ull << VIRTIO_NET_F_MAC) | (1ull << VIRTIO_NET_F_STATUS) |
                  (1ull << VIRTIO_RING_F_INDIRECT_DESC) | (1ull << VIRTIO_RING_F_EVENT_IDX),
              2, NET_QUEUE_MAX);
    n->fd = backend_fd;
    n->kind = kind;
    memcpy(n->d.config, mac, 6);
    n->d.config[6] = VIRTIO_NET_S_LINK_UP;
    n->d.config_len = 8;
    fcntl(backend_fd, F_SETFL, fcntl(backend_fd, F_GETFL) | O_NONBLOCK);
    n->epfd = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event in = { .events = EPOLLIN, .data.u64 = 1 };
    if (n->epfd < 0 || epoll_ctl(n->epfd, EPOLL_CTL_ADD, backend_fd, &in) < 0) {
        snprintf(err, errlen, "cannot poll the net backend fd %d: %s", backend_fd, strerror(errno));
        goto fail;
    }
    n->reading = true;
    n->events = EPOLLIN;
    n->d.poll_fd = n->epfd;
    return &n->d;
fail:
    net_destroy(&n->d);
    pthread_mutex_destroy(&n->d.lock);
    free(n);
    return NULL;
}
