/* vhost-user messages: the wire format (a 12-byte header, a payload of at most
 * VU_MAX_PAYLOAD bytes, fds as SCM_RIGHTS) and the checks every payload goes through before
 * a handler sees it. A message that fails a check closes the connection (see vhost_user.h). */
#define _GNU_SOURCE
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>

#include "vhost_user.h"

int vu_fail(struct vmm_vhost_user *s, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(s->error, sizeof(s->error), fmt, ap);
    va_end(ap);
    fprintf(stderr, "vmm: vhost-user %s: %s; closing the connection\n", s->path, s->error);
    return -1;
}

/* Appends the fds of a successful read's control data to m (extra ones are closed). */
static void take_fds(struct vu_msg *m, struct msghdr *mh, const char *buf)
{
    for (struct cmsghdr *c = CMSG_FIRSTHDR(mh); c; c = CMSG_NXTHDR(mh, c)) {
        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS || c->cmsg_len < CMSG_LEN(0))
            continue;
        size_t room = mh->msg_controllen - (size_t)((char *)CMSG_DATA(c) - buf);
        size_t len = c->cmsg_len - CMSG_LEN(0) < room ? c->cmsg_len - CMSG_LEN(0) : room;
        for (size_t i = 0; i < len / sizeof(int); i++) {
            int fd;
            memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
            if (m->nfds < VU_MAX_FDS)
                m->fds[m->nfds++] = fd;
            else
                close(fd);
        }
    }
}

/* Reads what has arrived of the message in s->in, never waiting for more: a front end
 * that stops in the middle of a message holds only its own connection, not the loop
 * (which may serve other VMs' back ends). */
int vu_read_msg(struct vmm_vhost_user *s)
{
    struct vu_msg *m = &s->in;
    const size_t hdr = sizeof(m->h);
    for (;;) {
        size_t total = s->in_have < hdr ? hdr : hdr + m->h.size;
        char *dst = s->in_have < hdr ? (char *)&m->h + s->in_have : (char *)m->payload + (s->in_have - hdr);
        if (s->in_have == total)
            return 1;
        /* Zeroed, and parsed only after a successful read: a failed recvmsg (a front end
         * that closes with replies unread gets us ECONNRESET) writes no control data, and
         * parsing leftovers closed fd numbers the process had given to others since. */
        union {
            char buf[CMSG_SPACE(sizeof(int) * VU_MAX_FDS)];
            struct cmsghdr align;
        } ctl;
        memset(&ctl, 0, sizeof(ctl));
        struct iovec iov = { .iov_base = dst, .iov_len = total - s->in_have };
        struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl.buf,
                             .msg_controllen = sizeof(ctl.buf) };
        ssize_t n = recvmsg(s->conn, &mh, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return 2;
        if (n < 0)
            return vu_fail(s, "cannot read a message: %s", strerror(errno));
        if (n == 0) {
            if (s->in_have == 0)
                return 0;
            return vu_fail(s, "message truncated (%zu bytes of a %s)", s->in_have,
                           s->in_have < hdr ? "header" : "payload");
        }
        take_fds(m, &mh, ctl.buf);
        if (mh.msg_flags & MSG_CTRUNC)
            return vu_fail(s, "request %u carried too many fds", s->in_have >= hdr ? m->h.request : 0);
        s->in_have += (size_t)n;
        if (s->in_have == hdr) {
            if ((m->h.flags & 0x3) != VU_VERSION)
                return vu_fail(s, "request %u has protocol version %u", m->h.request, m->h.flags & 3);
            if (m->h.size > VU_MAX_PAYLOAD)
                return vu_fail(s, "request %u payload of %u bytes is too large", m->h.request, m->h.size);
        }
    }
}

void vu_msg_clear(struct vmm_vhost_user *s)
{
    for (int i = 0; i < s->in.nfds; i++)
        close(s->in.fds[i]);
    s->in.nfds = 0;
    s->in_have = 0;
}

int vu_send_reply(struct vmm_vhost_user *s, const struct vu_msg *req, const void *payload, uint32_t len)
{
    struct vu_hdr h = { .request = req->h.request, .flags = VU_VERSION | VU_FLAG_REPLY, .size = len };
    struct iovec iov[2] = { { &h, sizeof(h) }, { (void *)payload, len } };
    struct msghdr mh = { .msg_iov = iov, .msg_iovlen = len ? 2 : 1 };
    ssize_t n = sendmsg(s->conn, &mh, MSG_NOSIGNAL);
    return n == (ssize_t)(sizeof(h) + len) ? 0 : vu_fail(s, "cannot send a reply: %s", strerror(errno));
}

int vu_reply_u64(struct vmm_vhost_user *s, const struct vu_msg *m, uint64_t v)
{
    return vu_send_reply(s, m, &v, sizeof(v));
}

int vu_payload_u64(struct vmm_vhost_user *s, const struct vu_msg *m, uint64_t *v)
{
    if (m->h.size != sizeof(*v))
        return vu_fail(s, "request %u: payload of %u bytes, expected 8", m->h.request, m->h.size);
    memcpy(v, m->payload, sizeof(*v));
    return 0;
}

/* vring state {index, num}, with index checked. */
int vu_payload_state(struct vmm_vhost_user *s, const struct vu_msg *m, uint32_t *idx, uint32_t *num)
{
    if (m->h.size != 8)
        return vu_fail(s, "request %u: vring state of %u bytes, expected 8", m->h.request, m->h.size);
    memcpy(idx, m->payload, 4);
    memcpy(num, m->payload + 4, 4);
    if (*idx >= (uint32_t)s->d->nqueues)
        return vu_fail(s, "request %u names ring %u (device has %d)", m->h.request, *idx, s->d->nqueues);
    return 0;
}

int vu_take_fd(struct vu_msg *m)
{
    if (m->nfds < 1)
        return -1;
    int fd = m->fds[0];
    memmove(m->fds, m->fds + 1, sizeof(int) * (size_t)(--m->nfds));
    return fd;
}
