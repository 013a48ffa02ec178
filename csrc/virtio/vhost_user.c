/* The vhost-user server: a Unix listener for one front-end at a time, the request
 * dispatch and config space, the server's events on the back-end process's event loop
 * (control connection, kick eventfds, the device's backend fds and a safety-net tick),
 * start and stop. The wire format is vhost_user_msg.c, memory and rings
 * vhost_user_rings.c; vhost_user.h says how they fit together. */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/timerfd.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "ioloop.h"
#include "vhost_user.h"

void vu_epoll_set(struct vmm_vhost_user *s, int fd, uint64_t tag, bool add)
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

static int do_get_config(struct vmm_vhost_user *s, const struct vu_msg *m)
{
    uint32_t off, size;
    if (m->h.size < VU_CONFIG_HDR)
        return vu_fail(s, "config request of %u bytes", m->h.size);
    memcpy(&off, m->payload, 4);
    memcpy(&size, m->payload + 4, 4);
    if (size > VDEV_CONFIG_MAX || m->h.size != VU_CONFIG_HDR + size)
        return vu_fail(s, "config request for %u bytes in a %u-byte message", size, m->h.size);
    uint8_t out[VU_CONFIG_HDR + VDEV_CONFIG_MAX];
    memcpy(out, m->payload, VU_CONFIG_HDR);
    memset(out + VU_CONFIG_HDR, 0, size);
    pthread_mutex_lock(&s->d->lock);
    if (off < s->d->config_len) {
        uint32_t n = s->d->config_len - off < size ? s->d->config_len - off : size;
        memcpy(out + VU_CONFIG_HDR, s->d->config + off, n);
    }
    pthread_mutex_unlock(&s->d->lock);
    return vu_send_reply(s, m, out, VU_CONFIG_HDR + size);
}

static int do_set_config(struct vmm_vhost_user *s, const struct vu_msg *m)
{
    uint32_t off, size;
    if (m->h.size < VU_CONFIG_HDR)
        return vu_fail(s, "config write of %u bytes", m->h.size);
    memcpy(&off, m->payload, 4);
    memcpy(&size, m->payload + 4, 4);
    if (size > VDEV_CONFIG_MAX || m->h.size != VU_CONFIG_HDR + size)
        return vu_fail(s, "config write of %u bytes in a %u-byte message", size, m->h.size);
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
        return vu_reply_u64(s, m, d->features | (1ull << VU_F_PROTOCOL_FEATURES)) < 0 ? -1 : 1;
    case VU_SET_FEATURES:
        if (vu_payload_u64(s, m, &v) < 0)
            return -1;
        if (v & ~(d->features | (1ull << VU_F_PROTOCOL_FEATURES)))
            return vu_fail(s, "front-end set features 0x%llx we did not offer", (unsigned long long)v);
        pthread_mutex_lock(&d->lock);
        d->acked = v & d->features;
        s->proto_acked = v & (1ull << VU_F_PROTOCOL_FEATURES);
        pthread_mutex_unlock(&d->lock);
        return 0;
    case VU_GET_PROTOCOL_FEATURES:
        return vu_reply_u64(s, m, s->protocol_features) < 0 ? -1 : 1;
    case VU_SET_PROTOCOL_FEATURES:
        if (vu_payload_u64(s, m, &v) < 0)
            return -1;
        s->protocol_features &= v;
        return 0;
    case VU_SET_OWNER:
        return 0;
    case VU_RESET_OWNER:
    case VU_RESET_DEVICE:
        pthread_mutex_lock(&d->lock);
        for (int i = 0; i < d->nqueues; i++)
            vu_ring_stop(s, i);
        vdev_reset(d);
        pthread_mutex_unlock(&d->lock);
        return 0;
    case VU_SET_MEM_TABLE:
        return vu_set_mem_table(s, m);
    case VU_SET_VRING_NUM:
        if (vu_payload_state(s, m, &qi, &num) < 0)
            return -1;
        if (num == 0 || num > d->queue_max || (num & (num - 1)))
            return vu_fail(s, "ring %u size %u (must be a power of 2 up to %u)", qi, num, d->queue_max);
        s->ring[qi].num = (uint16_t)num;
        return 0;
    case VU_SET_VRING_ADDR:
        return vu_set_vring_addr(s, m);
    case VU_SET_VRING_BASE:
        if (vu_payload_state(s, m, &qi, &num) < 0)
            return -1;
        if (num > 0xffff || s->ring[qi].started)
            return vu_fail(s, "ring %u base %u set while %s", qi, num, num > 0xffff ? "out of range" : "running");
        d->vq[qi].last_avail = (uint16_t)num;
        return 0;
    case VU_GET_VRING_BASE:
        return vu_get_vring_base(s, m) < 0 ? -1 : 1;
    case VU_SET_VRING_KICK:
    case VU_SET_VRING_CALL:
    case VU_SET_VRING_ERR:
        return vu_set_vring_fd(s, m);
    case VU_GET_QUEUE_NUM:
        return vu_reply_u64(s, m, (uint64_t)d->nqueues) < 0 ? -1 : 1;
    case VU_SET_VRING_ENABLE:
        if (vu_payload_state(s, m, &qi, &num) < 0)
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
            return vu_reply_u64(s, m, 1) < 0 ? -1 : 1;
        return vu_fail(s, "unsupported request %u", m->h.request);
    }
}

/* What has arrived from the front-end, and the message if it is whole; -1 means drop
 * the connection. */
static int serve_one(struct vmm_vhost_user *s)
{
    struct vu_msg *m = &s->in;
    int rc = vu_read_msg(s);
    if (rc == 2)
        return 1; /* the rest comes later */
    if (rc == 1) {
        rc = dispatch(s, m);
        if (rc == 0 && (m->h.flags & VU_FLAG_NEED_REPLY))
            rc = vu_reply_u64(s, m, 0);
        else if (rc < 0 && (m->h.flags & VU_FLAG_NEED_REPLY))
            vu_reply_u64(s, m, 1);
        rc = rc < 0 ? -1 : 1;
    } else if (rc == 0) {
        rc = -1; /* peer closed: not an error */
    }
    vu_msg_clear(s);
    return rc;
}

static void drop_conn(struct vmm_vhost_user *s)
{
    vu_epoll_set(s, s->conn, TAG_CONN, false);
    pthread_mutex_lock(&s->conn_lock);
    vu_close_fd(&s->conn);
    pthread_mutex_unlock(&s->conn_lock);
    vu_msg_clear(s);
    vu_reset_all(s);
    s->protocol_features = offered_protocol_features(s->d);
    vu_epoll_set(s, s->listen_fd, TAG_LISTEN, true);
}

static void accept_conn(struct vmm_vhost_user *s)
{
    int c = accept4(s->listen_fd, NULL, NULL, SOCK_CLOEXEC);
    if (c < 0)
        return;
    /* Reads never wait (vu_read_msg); a reply waits for room at most this long. */
    struct timeval stv = { .tv_sec = VU_SEND_TIMEOUT_MS / 1000, .tv_usec = VU_SEND_TIMEOUT_MS % 1000 * 1000 };
    setsockopt(c, SOL_SOCKET, SO_SNDTIMEO, &stv, sizeof(stv));
    pthread_mutex_lock(&s->conn_lock);
    s->conn = c;
    pthread_mutex_unlock(&s->conn_lock);
    s->error[0] = 0;
    /* One front-end at a time: stop listening until it goes. */
    vu_epoll_set(s, s->listen_fd, TAG_LISTEN, false);
    vu_epoll_set(s, c, TAG_CONN, true);
}

/* Arms the tick timer while some ring runs: see vu_rings_tick(). */
static void set_ticking(struct vmm_vhost_user *s, bool on)
{
    if (on == s->ticking)
        return;
    struct timespec period = { .tv_nsec = on ? VU_TICK_MS * 1000000L : 0 };
    struct itimerspec t = { .it_interval = period, .it_value = period };
    timerfd_settime(s->tick_fd, 0, &t, NULL);
    s->ticking = on;
}

/* The server's epoll set is ready (the loop thread): one batch of its events. */
static void server_events(void *opaque, int fd)
{
    struct vmm_vhost_user *s = opaque;
    struct epoll_event evs[8];
    int n = epoll_wait(s->epfd, evs, 8, 0);
    for (int i = 0; i < n; i++) {
        uint64_t tag = evs[i].data.u64, expirations;
        if (tag == TAG_TICK && read(s->tick_fd, &expirations, sizeof(expirations)) > 0)
            vu_rings_tick(s);
        else if (tag == TAG_LISTEN)
            accept_conn(s);
        else if (tag == TAG_CONN && s->conn >= 0 && serve_one(s) < 0)
            drop_conn(s);
        else if (tag == TAG_BACKEND)
            s->d->ops->poll(s->d);
        else if (tag >= TAG_KICK0 && tag < TAG_KICK0 + VDEV_MAX_QUEUES && s->ring[tag - TAG_KICK0].kick >= 0)
            vu_ring_kick(s, (int)(tag - TAG_KICK0), evs[i].events & (EPOLLHUP | EPOLLERR));
    }
    /* Rings the device left unfinished for lack of budget (vdev_budget_spent): kick them
     * ourselves, so the rest is served after what else the loop has ready. */
    uint32_t more = vdev_take_more(s->d);
    for (int qi = 0; qi < s->d->nqueues; qi++)
        if ((more & (1u << qi)) && s->ring[qi].kick >= 0)
            eventfd_write(s->ring[qi].kick, 1);
    set_ticking(s, vu_any_ring_started(s));
}

/* The back-end process's event loop, shared by every server in it (with the QEMU engine,
 * the back-ends of a VM): made with the first server, freed with the last. */
static pthread_mutex_t process_loop_lock = PTHREAD_MUTEX_INITIALIZER;
static struct ioloop *process_loop;
static int process_loop_users;

static int join_process_loop(struct vmm_vhost_user *s, char *err, size_t errlen)
{
    pthread_mutex_lock(&process_loop_lock);
    int rc = 0;
    if (!process_loop && !(process_loop = ioloop_new(err, errlen)))
        rc = -1;
    if (rc == 0 && (rc = ioloop_add(process_loop, s->epfd, server_events, s, err, errlen)) == 0) {
        process_loop_users++;
        s->in_loop = true;
        if (ioloop_start(process_loop, err, errlen) < 0) {
            pthread_mutex_unlock(&process_loop_lock);
            return -1; /* stop() leaves the loop */
        }
    }
    if (process_loop && process_loop_users == 0) {
        ioloop_free(process_loop);
        process_loop = NULL;
    }
    pthread_mutex_unlock(&process_loop_lock);
    return rc;
}

/* Returns once the loop can no longer run server_events for s. */
static void leave_process_loop(struct vmm_vhost_user *s)
{
    if (!s->in_loop)
        return;
    pthread_mutex_lock(&process_loop_lock);
    ioloop_del(process_loop, s->epfd);
    s->in_loop = false;
    if (--process_loop_users == 0) {
        ioloop_free(process_loop);
        process_loop = NULL;
    }
    pthread_mutex_unlock(&process_loop_lock);
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
    s->listen_fd = s->epfd = s->tick_fd = -1;
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
    s->tick_fd = timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC | TFD_NONBLOCK);
    if (s->listen_fd < 0 || s->epfd < 0 || s->tick_fd < 0) {
        if (s->listen_fd >= 0)
            snprintf(err, errlen, "cannot create epoll/timerfd: %s", strerror(errno));
        vmm_vhost_user_stop(s);
        return NULL;
    }
    s->protocol_features = offered_protocol_features(d);
    vu_epoll_set(s, s->tick_fd, TAG_TICK, true);
    vu_epoll_set(s, s->listen_fd, TAG_LISTEN, true);
    if (d->poll_fd >= 0)
        vu_epoll_set(s, d->poll_fd, TAG_BACKEND, true);
    if (join_process_loop(s, err, errlen) < 0) {
        vmm_vhost_user_stop(s);
        return NULL;
    }
    return s;
}

int vmm_vhost_user_connected(struct vmm_vhost_user *s) { return s->conn >= 0; }

const char *vmm_vhost_user_error(struct vmm_vhost_user *s) { return s->error[0] ? s->error : NULL; }

void vmm_vhost_user_stop(struct vmm_vhost_user *s)
{
    if (!s)
        return;
    pthread_mutex_lock(&s->conn_lock);
    if (s->conn >= 0)
        shutdown(s->conn, SHUT_RDWR); /* wakes the loop if it waits to send a reply */
    pthread_mutex_unlock(&s->conn_lock);
    leave_process_loop(s);
    if (s->conn >= 0)
        vu_close_fd(&s->conn);
    vu_msg_clear(s);
    vu_reset_all(s);
    vdev_unbind(s->d);
    if (s->listen_fd >= 0) {
        close(s->listen_fd);
        unlink(s->path);
    }
    vu_close_fd(&s->epfd);
    vu_close_fd(&s->tick_fd);
    pthread_mutex_destroy(&s->conn_lock);
    free(s);
}
