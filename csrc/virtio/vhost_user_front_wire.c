/* The front end's side of the vhost-user connection: requests out, replies in, each with a
 * deadline (see vhost_user_front.h). The socket is non-blocking; waiting is poll() on it
 * with what is left of the deadline, so a back end that stops reading or answering costs
 * at most one timeout, after which the connection is closed. */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "vhost_user_front.h"

int vuf_die(struct vuf *f, const char *fmt, ...)
{
    if (!f->dead[0]) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(f->dead, sizeof(f->dead), fmt, ap);
        va_end(ap);
    }
    if (f->sock >= 0) {
        close(f->sock); /* also leaves f->epfd */
        f->sock = -1;
    }
    return -1;
}

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Waits until the socket is ready for events, or the deadline: 0, or -1 (reason set). */
static int wait_sock(struct vuf *f, short events, int64_t deadline, const char *what, uint32_t req)
{
    for (;;) {
        int64_t left = deadline - now_ms();
        if (left <= 0)
            return vuf_die(f, "no %s for request %u within %d ms", what, req, f->timeout_ms);
        struct pollfd p = { .fd = f->sock, .events = events };
        int n = poll(&p, 1, (int)left);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return vuf_die(f, "poll: %s", strerror(errno));
        if (n > 0)
            return 0; /* readable, writable, or hung up: the next call says which */
    }
}

int vuf_send(struct vuf *f, uint32_t req, bool need_reply, const void *payload, uint32_t len,
             const int *fds, int nfds)
{
    if (f->sock < 0)
        return -1;
    struct vu_hdr h = { .request = req, .flags = VU_VERSION | (need_reply ? VU_FLAG_NEED_REPLY : 0),
                        .size = len };
    union {
        char buf[CMSG_SPACE(sizeof(int) * VU_MAX_FDS)];
        struct cmsghdr align;
    } ctl;
    if (nfds > VU_MAX_FDS || len > VU_MAX_PAYLOAD)
        return vuf_die(f, "request %u too large to send", req); /* our own bug: never the guest's */
    size_t total = sizeof(h) + len, sent = 0;
    int64_t deadline = now_ms() + f->timeout_ms;
    while (sent < total) {
        struct iovec iov[2];
        int niov = 0;
        if (sent < sizeof(h))
            iov[niov++] = (struct iovec){ (char *)&h + sent, sizeof(h) - sent };
        size_t poff = sent > sizeof(h) ? sent - sizeof(h) : 0;
        if (len > poff)
            iov[niov++] = (struct iovec){ (char *)payload + poff, len - poff };
        struct msghdr mh = { .msg_iov = iov, .msg_iovlen = (size_t)niov };
        if (sent == 0 && nfds > 0) { /* the fds ride with the first byte */
            memset(&ctl, 0, sizeof(ctl));
            mh.msg_control = ctl.buf;
            mh.msg_controllen = CMSG_SPACE(sizeof(int) * (size_t)nfds);
            struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
            c->cmsg_level = SOL_SOCKET;
            c->cmsg_type = SCM_RIGHTS;
            c->cmsg_len = CMSG_LEN(sizeof(int) * (size_t)nfds);
            memcpy(CMSG_DATA(c), fds, sizeof(int) * (size_t)nfds);
        }
        ssize_t n = sendmsg(f->sock, &mh, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n > 0) {
            sent += (size_t)n;
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            if (wait_sock(f, POLLOUT, deadline, "room to send", req) < 0)
                return -1;
            continue;
        }
        return vuf_die(f, "cannot send request %u: %s", req, n < 0 ? strerror(errno) : "nothing sent");
    }
    return 0;
}

/* Closes every fd in a received message's control data; true if there was one. */
static bool close_fds(struct msghdr *mh)
{
    bool any = false;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(mh); c; c = CMSG_NXTHDR(mh, c)) {
        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
            continue;
        size_t n = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        for (size_t i = 0; i < n; i++) {
            int fd;
            memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
            close(fd);
            any = true;
        }
    }
    return any;
}

/* Exactly n bytes, or -1. fds that come along are closed, and a reply carrying any is
 * refused: none of the replies we ask for has one. */
static int read_exact(struct vuf *f, void *buf, size_t n, int64_t deadline, uint32_t req)
{
    size_t have = 0;
    while (have < n) {
        union {
            char buf[CMSG_SPACE(sizeof(int) * VU_MAX_FDS)];
            struct cmsghdr align;
        } ctl;
        memset(&ctl, 0, sizeof(ctl));
        struct iovec iov = { (char *)buf + have, n - have };
        struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl.buf,
                             .msg_controllen = sizeof(ctl.buf) };
        ssize_t r = recvmsg(f->sock, &mh, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            if (wait_sock(f, POLLIN, deadline, "reply", req) < 0)
                return -1;
            continue;
        }
        if (r < 0)
            return vuf_die(f, "cannot read the reply to request %u: %s", req, strerror(errno));
        if (r == 0)
            return vuf_die(f, "the back end closed the connection (waiting for the reply to request %u)", req);
        if (close_fds(&mh) || (mh.msg_flags & MSG_CTRUNC))
            return vuf_die(f, "the reply to request %u carried file descriptors", req);
        have += (size_t)r;
    }
    return 0;
}

int vuf_reply(struct vuf *f, uint32_t req, void *out, uint32_t len)
{
    if (f->sock < 0)
        return -1;
    int64_t deadline = now_ms() + f->timeout_ms;
    struct vu_hdr h;
    if (read_exact(f, &h, sizeof(h), deadline, req) < 0)
        return -1;
    if ((h.flags & 3u) != VU_VERSION || !(h.flags & VU_FLAG_REPLY))
        return vuf_die(f, "the reply to request %u has flags 0x%x (not a version-1 reply)", req, h.flags);
    if (h.request != req)
        return vuf_die(f, "sent request %u, the back end answered request %u", req, h.request);
    if (h.size != len)
        return vuf_die(f, "the reply to request %u has %u payload bytes, expected %u", req, h.size, len);
    return read_exact(f, out, len, deadline, req);
}

int vuf_get_u64(struct vuf *f, uint32_t req, uint64_t *v)
{
    if (vuf_send(f, req, false, NULL, 0, NULL, 0) < 0)
        return -1;
    return vuf_reply(f, req, v, sizeof(*v));
}

int vuf_set(struct vuf *f, uint32_t req, const void *payload, uint32_t len, const int *fds, int nfds)
{
    bool ack = f->protocol & (1ull << VU_PROTO_F_REPLY_ACK);
    if (vuf_send(f, req, ack, payload, len, fds, nfds) < 0)
        return -1;
    if (!ack)
        return 0;
    uint64_t status;
    if (vuf_reply(f, req, &status, sizeof(status)) < 0)
        return -1;
    if (status != 0)
        return vuf_die(f, "the back end refused request %u (status %llu)", req, (unsigned long long)status);
    return 0;
}

void vuf_unasked(struct vuf *f)
{
    if (f->sock < 0)
        return;
    char c;
    ssize_t n = recv(f->sock, &c, 1, MSG_PEEK | MSG_DONTWAIT);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
        return; /* nothing after all */
    if (n == 0)
        vuf_die(f, "the back end closed the connection");
    else if (n < 0)
        vuf_die(f, "the connection failed: %s", strerror(errno));
    else
        vuf_die(f, "the back end sent a message nobody asked for (back-end requests are not negotiated)");
}
