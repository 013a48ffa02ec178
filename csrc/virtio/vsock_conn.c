/* virtio-vsock connections: the table of host-socket connections and the credit scheme
 * on the guest -> host side (see vsock.h). A connection is found by its (local, peer) port
 * pair; its epoll interest follows its state (conn_rearm), so a connection waiting for
 * guest credit or rx buffers is not polled and a host program blocks on its own socket. */
#define _GNU_SOURCE
#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include "vsock.h"

uint64_t conn_tag(struct vsock *v, int slot) { return ((uint64_t)v->gens[slot] << 32) | (uint32_t)slot; }

static int conn_slot(struct vsock *v, struct conn *c)
{
    for (int i = 0; i < v->nslots; i++)
        if (v->conns[i] == c)
            return i;
    return -1;
}

struct conn *conn_find(struct vsock *v, uint32_t local_port, uint32_t peer_port)
{
    for (int i = 0; i < v->nslots; i++) {
        struct conn *c = v->conns[i];
        if (c && c->state != C_LINE && c->local_port == local_port && c->peer_port == peer_port)
            return c;
    }
    return NULL;
}

bool local_port_used(struct vsock *v, uint32_t port)
{
    for (int i = 0; i < v->nslots; i++)
        if (v->conns[i] && v->conns[i]->state != C_LINE && v->conns[i]->local_port == port)
            return true;
    return false;
}

/* Registers fd as a new connection of the guest (from_guest) or the host; NULL (fd closed)
 * when that side has all its slots. The caps are per side so that neither can take the
 * other's slots: the table has room for both at once. */
struct conn *conn_new(struct vsock *v, int fd, enum conn_state st, bool from_guest)
{
    int *count = from_guest ? &v->nguest : &v->nhost;
    int slot = -1;
    if (*count < (from_guest ? MAX_GUEST_CONNS : MAX_HOST_CONNS))
        for (int i = 0; i < MAX_CONNS && slot < 0; i++)
            if (!v->conns[i])
                slot = i;
    struct conn *c = slot >= 0 ? calloc(1, sizeof(*c)) : NULL;
    if (!c) {
        close(fd);
        return NULL;
    }
    c->fd = fd;
    c->state = st;
    c->from_guest = from_guest;
    (*count)++;
    c->gen = ++v->gens[slot];
    v->conns[slot] = c;
    if (slot >= v->nslots)
        v->nslots = slot + 1;
    c->events = st == C_LINE ? EPOLLIN : 0;
    struct epoll_event ev = { .events = c->events, .data.u64 = conn_tag(v, slot) };
    epoll_ctl(v->epfd, EPOLL_CTL_ADD, fd, &ev);
    return c;
}

void conn_free(struct vsock *v, struct conn *c)
{
    int slot = conn_slot(v, c);
    if (slot >= 0)
        v->conns[slot] = NULL;
    while (v->nslots > 0 && !v->conns[v->nslots - 1])
        v->nslots--;
    if (c->from_guest)
        v->nguest--;
    else
        v->nhost--;
    epoll_ctl(v->epfd, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    free(c->tx);
    free(c);
}

/* Which socket events we want now, from the connection's state. */
void conn_rearm(struct vsock *v, struct conn *c)
{
    if (c->hup)
        return;
    uint32_t ev = 0;
    if (c->state == C_LINE)
        ev |= EPOLLIN;
    if (c->state == C_OPEN && !c->readable && !c->host_eof && !c->guest_shut_rcv)
        ev |= EPOLLIN;
    if (c->tx_len)
        ev |= EPOLLOUT;
    if (ev == c->events)
        return;
    int slot = conn_slot(v, c);
    struct epoll_event e = { .events = ev, .data.u64 = conn_tag(v, slot) };
    epoll_ctl(v->epfd, EPOLL_CTL_MOD, c->fd, &e);
    c->events = ev;
}

uint32_t peer_credit(const struct conn *c)
{
    uint32_t in_flight = c->rx_cnt - c->peer_fwd_cnt;
    return in_flight >= c->peer_buf_alloc ? 0 : c->peer_buf_alloc - in_flight;
}

/* Ends a connection from our side: RST to the guest (if it knows the connection), then
 * forget it. */
void conn_reset(struct vsock *v, struct conn *c)
{
    if (c->state != C_LINE && v->nrst < MAX_LONE_RST)
        v->rst[v->nrst++] = (struct lone_rst){ c->local_port, c->peer_port };
    conn_free(v, c);
}

void queue_lone_rst(struct vsock *v, uint32_t local_port, uint32_t peer_port)
{
    if (v->nrst < MAX_LONE_RST)
        v->rst[v->nrst++] = (struct lone_rst){ local_port, peer_port };
}

/* The pending bytes are all out: give their buffer back (an idle connection holds none). */
static void tx_release(struct conn *c)
{
    free(c->tx);
    c->tx = NULL;
    c->tx_cap = c->tx_off = 0;
}

/* Writes as much of the pending data as the socket takes. -1: the socket is dead. */
int drain_tx(struct vsock *v, struct conn *c)
{
    while (c->tx_len) {
        ssize_t n = send(c->fd, c->tx + c->tx_off, c->tx_len, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno == EAGAIN)
            break;
        if (n <= 0)
            return -1;
        c->tx_off += (uint32_t)n, c->tx_len -= (uint32_t)n, c->fwd_cnt += (uint32_t)n;
    }
    if (c->tx_len == 0)
        tx_release(c);
    if (c->tx_len == 0 && c->guest_shut_send && !c->shut_wr_done) {
        shutdown(c->fd, SHUT_WR);
        c->shut_wr_done = true;
    }
    if (c->tx_len == 0 && c->rst_when_drained) {
        c->pending = P_RST;
        return 0;
    }
    /* Tell the guest about freed buffer once its view of our free space (what it sent
     * minus the fwd_cnt we last told) falls to half: early enough that it never stalls
     * while we have room, rare enough not to answer every packet. Packets we send to the
     * guest carry fwd_cnt as well. */
    if (c->fwd_cnt != c->fwd_told && c->fwd_cnt + c->tx_len - c->fwd_told >= CONN_BUF / 2)
        c->pending |= P_CREDIT_UPDATE;
    conn_rearm(v, c);
    return 0;
}

/* Room for `more` bytes after the pending ones: the buffer grows by doubling (from
 * TX_MIN_BUF, at most CONN_BUF, which the credit check keeps enough), so a connection holds
 * about as much memory as it has data waiting. */
static int tx_reserve(struct conn *c, uint32_t more)
{
    uint32_t need = c->tx_len + more;
    if (need > c->tx_cap) {
        uint32_t cap = c->tx_cap ? c->tx_cap : TX_MIN_BUF;
        while (cap < need)
            cap *= 2;
        if (cap > CONN_BUF)
            cap = CONN_BUF;
        uint8_t *b = malloc(cap);
        if (!b)
            return -1;
        if (c->tx_len)
            memcpy(b, c->tx + c->tx_off, c->tx_len);
        free(c->tx);
        c->tx = b, c->tx_cap = cap, c->tx_off = 0;
    } else if (c->tx_off + need > c->tx_cap) {
        memmove(c->tx, c->tx + c->tx_off, c->tx_len);
        c->tx_off = 0;
    }
    return 0;
}

/* Takes len payload bytes of a RW packet. -1 = reset the connection. With nothing pending,
 * the payload goes from guest memory straight to the socket and only what the socket does
 * not take is copied. */
int take_rw(struct vsock *v, struct conn *c, const struct vq_req *r, uint32_t len)
{
    if (c->guest_shut_send)
        return -1;
    if ((uint64_t)c->tx_len + len > CONN_BUF)
        return -1; /* beyond the credit we gave: a misbehaving guest */
    counter_add(v->d.c.bytes_written, len);
    uint32_t sent = 0;
    if (c->tx_len == 0 && len > 0) {
        int n = iov_slice(r->rd, r->nr, sizeof(struct vsock_hdr), len, v->scratch);
        struct msghdr m = { .msg_iov = v->scratch, .msg_iovlen = (size_t)(n < IOV_MAX ? n : IOV_MAX) };
        ssize_t k;
        do
            k = sendmsg(c->fd, &m, MSG_NOSIGNAL | MSG_DONTWAIT);
        while (k < 0 && errno == EINTR);
        if (k < 0 && errno != EAGAIN)
            return -1;
        if (k > 0) {
            sent = (uint32_t)k;
            c->fwd_cnt += sent;
        }
    }
    if (sent < len) {
        if (tx_reserve(c, len - sent) < 0)
            return -1;
        iov_to_buf(r->rd, r->nr, sizeof(struct vsock_hdr) + sent, c->tx + c->tx_off + c->tx_len, len - sent);
        c->tx_len += len - sent;
    }
    return drain_tx(v, c);
}

void close_all(struct vsock *v)
{
    for (int i = 0; i < v->nslots; i++)
        if (v->conns[i])
            conn_free(v, v->conns[i]);
    v->nslots = 0;
    v->nguest = v->nhost = 0;
    v->nrst = 0;
}
