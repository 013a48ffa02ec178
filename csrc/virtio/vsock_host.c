/* virtio-vsock host side: the Unix sockets (see vsock.h). A host program connects to the
 * listener at `path` and says "CONNECT <port>\n" (read here without consuming stream data
 * after it); a guest connection to host port P dials "<path>_P". The listener and every
 * connection's socket are in the device's own epoll set (d->poll_fd), which the
 * transport's event loop waits on; vsock_poll moves data under d->lock. */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "vsock.h"

void host_established(struct vsock *v, struct conn *c)
{
    char ok[32];
    int n = snprintf(ok, sizeof(ok), "OK %u\n", c->local_port);
    if (send(c->fd, ok, (size_t)n, MSG_NOSIGNAL | MSG_DONTWAIT) != n) {
        conn_reset(v, c);
        return;
    }
    c->state = C_OPEN;
    c->readable = true;
    counter_add(v->d.c.connections, 1);
    conn_rearm(v, c);
}

/* Reads the "CONNECT <port>\n" line without consuming any stream data after it. */
static void read_connect_line(struct vsock *v, struct conn *c)
{
    char buf[LINE_MAX_LEN];
    ssize_t n = recv(c->fd, buf, sizeof(buf) - c->line_len, MSG_PEEK | MSG_DONTWAIT);
    if (n < 0 && (errno == EAGAIN || errno == EINTR))
        return;
    if (n <= 0) {
        conn_free(v, c);
        return;
    }
    char *nl = memchr(buf, '\n', (size_t)n);
    size_t take = nl ? (size_t)(nl - buf) + 1 : (size_t)n;
    if (recv(c->fd, c->line + c->line_len, take, MSG_DONTWAIT) != (ssize_t)take) {
        conn_free(v, c);
        return;
    }
    c->line_len += (unsigned)take;
    c->line[c->line_len] = 0;
    if (!nl) {
        if (c->line_len >= LINE_MAX_LEN)
            conn_free(v, c); /* no newline in a sane length: not our protocol */
        return;
    }
    unsigned long port;
    char *end;
    if (strncmp(c->line, "CONNECT ", 8) != 0 || (port = strtoul(c->line + 8, &end, 10)) > UINT32_MAX ||
        end == c->line + 8 || (*end != '\n' && !(*end == '\r' && end[1] == '\n'))) {
        conn_free(v, c);
        return;
    }
    do {
        c->local_port = v->next_host_port++;
        if (v->next_host_port == 0)
            v->next_host_port = FIRST_HOST_PORT;
    } while (local_port_used(v, c->local_port));
    c->peer_port = (uint32_t)port;
    c->state = C_REQUESTED;
    c->pending |= P_REQUEST;
    conn_rearm(v, c);
}

static void accept_host(struct vsock *v)
{
    int fd = accept4(v->listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd >= 0)
        conn_new(v, fd, C_LINE, false); /* beyond MAX_HOST_CONNS: closed, the client sees EOF */
}

static void conn_event(struct vsock *v, uint64_t tag, uint32_t events)
{
    uint32_t slot = (uint32_t)tag;
    if (slot >= MAX_CONNS || !v->conns[slot] || v->gens[slot] != (uint32_t)(tag >> 32))
        return; /* a stale event for a connection already gone */
    struct conn *c = v->conns[slot];
    if (c->state == C_LINE) {
        read_connect_line(v, c);
        return;
    }
    /* Hang-up is reported whatever we asked for: if there is nothing left to read from
     * the socket (or nobody to read it for), the connection is over. */
    if ((events & (EPOLLHUP | EPOLLERR)) && (c->state != C_OPEN || c->host_eof || c->guest_shut_rcv)) {
        conn_reset(v, c);
        return;
    }
    if (events & (EPOLLHUP | EPOLLERR)) {
        /* Data may still wait in the socket for the guest (as its credit allows): stop
         * polling, since a hang-up is reported forever, and let the reads find EOF. With
         * nothing left unread the connection is over now, whatever the guest's credit: it
         * must not hold its slot until a guest that gives no credit changes its mind. */
        epoll_ctl(v->epfd, EPOLL_CTL_DEL, c->fd, NULL);
        c->hup = true;
        c->readable = true;
        int unread = 0;
        if (ioctl(c->fd, FIONREAD, &unread) == 0 && unread == 0) {
            c->host_eof = true;
            c->readable = false;
            c->pending |= P_RST;
        }
        return;
    }
    if ((events & EPOLLOUT) && drain_tx(v, c) < 0) {
        conn_reset(v, c);
        return;
    }
    if (events & (EPOLLIN | EPOLLHUP | EPOLLERR)) {
        c->readable = true;
        conn_rearm(v, c);
    }
}

/* The host sockets have work (the transport's event loop saw d->poll_fd readable): one
 * batch of socket events, then whatever that lets us hand the guest. */
void vsock_poll(struct vdev *d)
{
    struct vsock *v = (struct vsock *)d;
    struct epoll_event evs[32];
    int n = epoll_wait(v->epfd, evs, 32, 0);
    if (n <= 0)
        return;
    pthread_mutex_lock(&v->d.lock);
    for (int i = 0; i < n; i++) {
        if (evs[i].data.u64 == TAG_LISTEN)
            accept_host(v);
        else
            conn_event(v, evs[i].data.u64, evs[i].events);
    }
    pump_rx(v);
    pthread_mutex_unlock(&v->d.lock);
}

static int vsock_listen(struct vsock *v, char *err, size_t errlen)
{
    struct sockaddr_un a = { .sun_family = AF_UNIX };
    strcpy(a.sun_path, v->path); /* length checked in vsock_new */
    unlink(v->path);
    v->listen_fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (v->listen_fd < 0 || bind(v->listen_fd, (struct sockaddr *)&a, sizeof(a)) < 0 ||
        listen(v->listen_fd, MAX_HOST_CONNS) < 0) {
        snprintf(err, errlen, "cannot listen on vsock socket %s: %s", v->path, strerror(errno));
        return -1;
    }
    return 0;
}

/* Guest REQUEST to host port P: connect to "<path>_P". */
struct conn *host_dial(struct vsock *v, uint32_t local_port, uint32_t peer_port)
{
    struct sockaddr_un a = { .sun_family = AF_UNIX };
    int k = snprintf(a.sun_path, sizeof(a.sun_path), "%s_%u", v->path, local_port);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0 || k >= (int)sizeof(a.sun_path) || connect(fd, (struct sockaddr *)&a, sizeof(a)) < 0) {
        if (fd >= 0)
            close(fd);
        queue_lone_rst(v, local_port, peer_port);
        return NULL;
    }
    struct conn *c = conn_new(v, fd, C_OPEN, true);
    if (!c) {
        queue_lone_rst(v, local_port, peer_port);
        return NULL;
    }
    c->local_port = local_port;
    c->peer_port = peer_port;
    return c;
}

int host_start(struct vsock *v, char *err, size_t errlen)
{
    if (vsock_listen(v, err, errlen) < 0)
        return -1;
    v->epfd = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event e = { .events = EPOLLIN, .data.u64 = TAG_LISTEN };
    if (v->epfd < 0 || epoll_ctl(v->epfd, EPOLL_CTL_ADD, v->listen_fd, &e) < 0) {
        snprintf(err, errlen, "cannot create the vsock socket set: %s", strerror(errno));
        return -1;
    }
    v->d.poll_fd = v->epfd;
    return 0;
}

void host_stop(struct vsock *v)
{
    close_all(v);
    if (v->listen_fd >= 0) {
        close(v->listen_fd);
        unlink(v->path);
    }
    if (v->epfd >= 0)
        close(v->epfd);
    v->listen_fd = v->epfd = v->d.poll_fd = -1;
}
