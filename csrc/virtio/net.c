/* virtio-net (virtio 1.x section 5.1) with a frame backend: a Unix stream socket speaking
 * 4-byte big-endian length framing (passt, QEMU's stream netdev), or a tap device.
 *
 * No offloads are offered, so every packet starts with a 12-byte virtio_net_hdr_v1 that
 * says "nothing to do"; we strip it on the way out and prepend a zero one on the way in.
 * Backend -> guest runs on our own thread: one frame is read and held until the guest
 * gives an rx buffer; while it waits we stop reading (the backend buffers, or drops, as a
 * wire would). Guest -> backend runs on the transport's notify, frame by frame. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/if_tun.h>
#include <net/if.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include "device.h"
#include "devices.h"

#define VIRTIO_NET_F_MAC 5
#define VIRTIO_NET_F_STATUS 16
#define VIRTIO_NET_S_LINK_UP 1

#define Q_RX 0
#define Q_TX 1
#define NET_QUEUE_MAX 1024
#define NET_HDR_LEN 12
#define MAX_FRAME 65550u /* 64 KiB payload plus Ethernet header, with some slack */

struct net {
    struct vdev d;
    int fd, kind;
    int epfd, stop_efd;
    pthread_t thread;
    bool thread_started;
    bool reading;          /* we want EPOLLIN */
    bool tx_blocked;       /* txbuf[tx_off..tx_len) still has to reach the stream backend */
    uint32_t tx_off, tx_len;
    uint32_t events;       /* registered with epoll */
    bool dead;             /* the backend closed or broke its framing */
    /* The frame being read (stream: after its 4-byte length) or held for the guest. */
    uint8_t lenbuf[4];
    uint32_t len_have, frame_len, frame_have;
    bool frame_ready;      /* under d.lock: a whole frame waits in frame[] for the guest */
    uint8_t *frame;
    uint8_t *txbuf;        /* 4-byte length + frame, for the stream backend */
    struct iovec *scratch;
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
        fprintf(stderr, "vmm: virtio-net backend: %s; the link is down\n", why);
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

/* Delivers held frames until the guest runs out of buffers; lock held. */
static void flush_rx(struct net *n)
{
    struct vq *q = &n->d.vq[Q_RX];
    while (n->frame_ready && q->ready && !q->broken) {
        if (deliver(n)) {
            n->frame_ready = false;
            n->len_have = n->frame_have = n->frame_len = 0;
            break;
        }
        /* No buffer: with EVENT_IDX the guest kicks only if we ask (avail_event). */
        if (!vq_enable_notify(q))
            break;
    }
    vdev_signal(&n->d, Q_RX);
    set_reading(n, !n->frame_ready);
}

/* Reads towards one whole frame. 1: frame ready; 0: need more; -1: backend gone. */
static int read_stream(struct net *n)
{
    while (n->len_have < 4) {
        ssize_t k = read(n->fd, n->lenbuf + n->len_have, 4 - n->len_have);
        if (k < 0 && (errno == EAGAIN || errno == EINTR))
            return 0;
        if (k <= 0)
            return -1;
        n->len_have += (uint32_t)k;
        if (n->len_have == 4) {
            n->frame_len = (uint32_t)n->lenbuf[0] << 24 | (uint32_t)n->lenbuf[1] << 16 |
                           (uint32_t)n->lenbuf[2] << 8 | n->lenbuf[3];
            if (n->frame_len == 0 || n->frame_len > MAX_FRAME)
                return -1;
        }
    }
    while (n->frame_have < n->frame_len) {
        ssize_t k = read(n->fd, n->frame + n->frame_have, n->frame_len - n->frame_have);
        if (k < 0 && (errno == EAGAIN || errno == EINTR))
            return 0;
        if (k <= 0)
            return -1;
        n->frame_have += (uint32_t)k;
    }
    return 1;
}

static int read_tap(struct net *n)
{
    ssize_t k = read(n->fd, n->frame, MAX_FRAME);
    if (k < 0 && (errno == EAGAIN || errno == EINTR))
        return 0;
    if (k <= 0)
        return -1;
    n->frame_len = (uint32_t)k;
    return 1;
}

/* Reader thread. frame[] and the read state belong to this thread while no frame is
 * held (frame_ready false); once it is held they belong to whoever holds d.lock. */
static void backend_readable(struct net *n)
{
    pthread_mutex_lock(&n->d.lock);
    bool busy = n->frame_ready || n->dead;
    pthread_mutex_unlock(&n->d.lock);
    while (!busy) {
        int rc = n->kind == NET_BACKEND_TAP ? read_tap(n) : read_stream(n);
        pthread_mutex_lock(&n->d.lock);
        if (rc < 0)
            backend_dead(n, "the backend closed the connection or sent a bad frame length");
        if (rc > 0) {
            n->frame_ready = true;
            flush_rx(n);
        }
        busy = rc <= 0 || n->frame_ready || n->dead;
        pthread_mutex_unlock(&n->d.lock);
    }
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

static void *net_thread(void *arg)
{
    struct net *n = arg;
    for (;;) {
        struct epoll_event evs[4];
        int k = epoll_wait(n->epfd, evs, 4, -1);
        if (k < 0 && errno == EINTR)
            continue;
        if (k < 0)
            return NULL;
        for (int i = 0; i < k; i++) {
            if (evs[i].data.u64 == 0)
                return NULL; /* stop */
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
}

/* ---- guest -> backend ---- */

/* Pushes the pending framed bytes to the stream backend without blocking. The guest's
 * tx queue waits (we stop popping) while a frame is only partly written: never block the
 * device on the backend, whose own writes towards us our reader thread must keep taking. */
static int flush_stream_tx(struct net *n)
{
    while (n->tx_off < n->tx_len) {
        ssize_t k = write(n->fd, n->txbuf + n->tx_off, n->tx_len - n->tx_off);
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
    if (n->kind == NET_BACKEND_TAP) {
        int cnt = iov_slice(r->rd, r->nr, NET_HDR_LEN, len, n->scratch);
        rc = cnt <= IOV_MAX && writev(n->fd, n->scratch, cnt) == (ssize_t)len ? 0 : -1; /* a full tap drops, like a wire */
    } else {
        uint8_t be[4] = { (uint8_t)(len >> 24), (uint8_t)(len >> 16), (uint8_t)(len >> 8), (uint8_t)len };
        memcpy(n->txbuf, be, 4);
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
    for (;;) {
        int rc = 0;
        while (!n->tx_blocked && (rc = vq_pop(q, &r)) == 1) {
            send_frame(n, &r); /* the frame is copied out: the chain can go back now */
            vq_push(q, r.head, 0);
        }
        if (n->tx_blocked)
            break; /* resumed by the reader thread when the backend takes more */
        if (rc < 0) {
            vdev_note_broken(&n->d, Q_TX);
            break;
        }
        if (!vq_enable_notify(q))
            break;
    }
    vdev_signal(&n->d, Q_TX);
}

static void net_notify(struct vdev *d, int qi)
{
    struct net *n = (struct net *)d;
    if (qi == Q_TX)
        process_tx(n);
    else if (qi == Q_RX)
        flush_rx(n);
}

static void net_reset(struct vdev *d)
{
    struct net *n = (struct net *)d;
    /* A frame half-read from a stream must still be completed to keep the framing, so
     * only a whole held frame is dropped. */
    if (n->frame_ready) {
        n->frame_ready = false;
        n->len_have = n->frame_have = n->frame_len = 0;
        set_reading(n, true);
    }
}

static void net_destroy(struct vdev *d)
{
    struct net *n = (struct net *)d;
    if (n->thread_started) {
        eventfd_write(n->stop_efd, 1);
        pthread_join(n->thread, NULL);
    }
    if (n->fd >= 0)
        close(n->fd);
    if (n->epfd >= 0)
        close(n->epfd);
    if (n->stop_efd >= 0)
        close(n->stop_efd);
    free(n->frame);
    free(n->txbuf);
    free(n->scratch);
}

static const struct vdev_ops net_ops = {
    .notify = net_notify,
    .reset = net_reset,
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
        n->frame = malloc(MAX_FRAME);
        n->txbuf = malloc(MAX_FRAME + 4);
        n->scratch = calloc(VQ_MAX_SEGS(NET_QUEUE_MAX), sizeof(struct iovec));
    }
    if (!n || !n->frame || !n->txbuf || !n->scratch) {
        if (n) {
            free(n->frame);
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
    n->stop_efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    struct epoll_event stop = { .events = EPOLLIN, .data.u64 = 0 };
    struct epoll_event in = { .events = EPOLLIN, .data.u64 = 1 };
    if (n->epfd < 0 || n->stop_efd < 0 || epoll_ctl(n->epfd, EPOLL_CTL_ADD, n->stop_efd, &stop) < 0 ||
        epoll_ctl(n->epfd, EPOLL_CTL_ADD, backend_fd, &in) < 0) {
        snprintf(err, errlen, "cannot poll the net backend fd %d: %s", backend_fd, strerror(errno));
        goto fail;
    }
    n->reading = true;
    n->events = EPOLLIN;
    if (pthread_create(&n->thread, NULL, net_thread, n) != 0) {
        snprintf(err, errlen, "cannot start the net thread");
        goto fail;
    }
    n->thread_started = true;
    return &n->d;
fail:
    net_destroy(&n->d);
    pthread_mutex_destroy(&n->d.lock);
    free(n);
    return NULL;
}
