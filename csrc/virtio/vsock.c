/* virtio-vsock stream sockets (virtio 1.x section 5.10) with a Firecracker-style host side.
 *
 * Host side: one Unix listening socket per VM at `path`. A host program connects, writes
 * "CONNECT <port>\n" and, once the guest accepts, reads "OK <hostport>\n" followed by the
 * byte stream. A guest connection to CID 2 port P is connected to the Unix socket
 * "<path>_P", or reset if nothing listens there.
 *
 * Flow control is the spec's credit scheme in both directions. Guest -> host: we tell the
 * guest we have CONN_BUF bytes of buffer; data is written to the Unix socket at once and
 * only what the socket does not take is kept, so a guest that respects credit never makes
 * us hold more than CONN_BUF per connection, and one that does not is reset. Host -> guest:
 * we read from the Unix socket only as much as the guest's advertised buffer has room for,
 * and only when the guest gave us an rx buffer; otherwise the socket is left unread (the
 * host program blocks on its own socket buffer).
 *
 * Threads: the transport calls notify (tx queue: packets from the guest; rx queue: new
 * buffers) with d->lock held; our own epoll thread serves the Unix sockets and takes
 * d->lock too. All connection state is touched only under d->lock. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "device.h"
#include "devices.h"

#define VSOCK_HOST_CID 2
#define VSOCK_TYPE_STREAM 1
enum { OP_REQUEST = 1, OP_RESPONSE, OP_RST, OP_SHUTDOWN, OP_RW, OP_CREDIT_UPDATE, OP_CREDIT_REQUEST };
#define SHUT_F_RCV 1
#define SHUT_F_SEND 2

#define Q_RX 0
#define Q_TX 1
#define Q_EVENT 2
#define VSOCK_QUEUE_MAX 1024

#define CONN_BUF (256u * 1024)      /* our receive buffer per connection (buf_alloc) */
#define MAX_PAYLOAD (64u * 1024)    /* largest packet payload either way (Linux's limit) */
#define MAX_CONNS 1024
#define MAX_LONE_RST 128            /* resets for unknown connections waiting for rx buffers */
#define LINE_MAX_LEN 32             /* "CONNECT 4294967295\n" fits */
#define FIRST_HOST_PORT (1u << 30)  /* host-initiated connections get local ports from here */

struct vsock_hdr {
    uint64_t src_cid, dst_cid;
    uint32_t src_port, dst_port, len;
    uint16_t type, op;
    uint32_t flags, buf_alloc, fwd_cnt;
} __attribute__((packed));

enum conn_state {
    C_LINE,        /* host client: waiting for "CONNECT <port>\n" */
    C_REQUESTED,   /* host client: REQUEST sent to the guest, waiting for RESPONSE */
    C_OPEN,        /* established */
};

/* Control packets a connection owes the guest, sent as rx buffers allow. */
#define P_REQUEST 1u
#define P_RESPONSE 2u
#define P_CREDIT_UPDATE 4u
#define P_CREDIT_REQUEST 8u
#define P_SHUTDOWN 16u
#define P_RST 32u

struct conn {
    int fd;
    uint32_t gen;
    enum conn_state state;
    uint32_t local_port, peer_port;
    char line[LINE_MAX_LEN + 1];
    unsigned line_len;
    /* guest -> host */
    uint8_t *tx;             /* CONN_BUF bytes once needed */
    uint32_t tx_off, tx_len; /* pending bytes tx[tx_off .. tx_off+tx_len) */
    uint32_t fwd_cnt, fwd_told;
    bool guest_shut_send;    /* no more data from the guest: SHUT_WR once drained */
    bool shut_wr_done;
    bool rst_when_drained;   /* the guest closed: answer with RST once its data is out */
    /* host -> guest */
    uint32_t rx_cnt;
    uint32_t peer_buf_alloc, peer_fwd_cnt;
    bool readable;           /* the socket may have data or EOF for us */
    bool host_eof;           /* the host closed its side; SHUTDOWN sent or owed */
    bool guest_shut_rcv;     /* the guest takes no more data */
    bool credit_asked;
    bool hup;                /* the host closed both directions; no longer polled */
    uint32_t pending;        /* P_* */
    uint32_t events;         /* epoll interest now registered */
};

struct lone_rst {
    uint32_t local_port, peer_port;
};

struct vsock {
    struct vdev d;
    uint64_t cid;
    char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
    int listen_fd, epfd, stop_efd;
    pthread_t thread;
    bool thread_started;
    struct conn *conns[MAX_CONNS];
    uint32_t gens[MAX_CONNS];
    int nslots;              /* slots in use are below this */
    uint32_t next_host_port;
    struct lone_rst rst[MAX_LONE_RST];
    int nrst;
    struct iovec *scratch;   /* rx payload view */
};

#define TAG_STOP (~0ull)
#define TAG_LISTEN (~0ull - 1)

static uint64_t conn_tag(struct vsock *v, int slot) { return ((uint64_t)v->gens[slot] << 32) | (uint32_t)slot; }

/* ---- connection table ---- */

static int conn_slot(struct vsock *v, struct conn *c)
{
    for (int i = 0; i < v->nslots; i++)
        if (v->conns[i] == c)
            return i;
    return -1;
}

static struct conn *conn_find(struct vsock *v, uint32_t local_port, uint32_t peer_port)
{
    for (int i = 0; i < v->nslots; i++) {
        struct conn *c = v->conns[i];
        if (c && c->state != C_LINE && c->local_port == local_port && c->peer_port == peer_port)
            return c;
    }
    return NULL;
}

static bool local_port_used(struct vsock *v, uint32_t port)
{
    for (int i = 0; i < v->nslots; i++)
        if (v->conns[i] && v->conns[i]->state != C_LINE && v->conns[i]->local_port == port)
            return true;
    return false;
}

/* Registers fd as a new connection; NULL (fd closed) when the table is full. */
static struct conn *conn_new(struct vsock *v, int fd, enum conn_state st)
{
    int slot = -1;
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
    c->gen = ++v->gens[slot];
    v->conns[slot] = c;
    if (slot >= v->nslots)
        v->nslots = slot + 1;
    c->events = st == C_LINE ? EPOLLIN : 0;
    struct epoll_event ev = { .events = c->events, .data.u64 = conn_tag(v, slot) };
    epoll_ctl(v->epfd, EPOLL_CTL_ADD, fd, &ev);
    return c;
}

static void conn_free(struct vsock *v, struct conn *c)
{
    int slot = conn_slot(v, c);
    if (slot >= 0)
        v->conns[slot] = NULL;
    while (v->nslots > 0 && !v->conns[v->nslots - 1])
        v->nslots--;
    epoll_ctl(v->epfd, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    free(c->tx);
    free(c);
}

/* Which socket events we want now, from the connection's state. */
static void conn_rearm(struct vsock *v, struct conn *c)
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

static uint32_t peer_credit(const struct conn *c)
{
    uint32_t in_flight = c->rx_cnt - c->peer_fwd_cnt;
    return in_flight >= c->peer_buf_alloc ? 0 : c->peer_buf_alloc - in_flight;
}

/* Ends a connection from our side: RST to the guest (if it knows the connection), then
 * forget it. */
static void conn_reset(struct vsock *v, struct conn *c)
{
    if (c->state != C_LINE && v->nrst < MAX_LONE_RST)
        v->rst[v->nrst++] = (struct lone_rst){ c->local_port, c->peer_port };
    conn_free(v, c);
}

static void queue_lone_rst(struct vsock *v, uint32_t local_port, uint32_t peer_port)
{
    if (v->nrst < MAX_LONE_RST)
        v->rst[v->nrst++] = (struct lone_rst){ local_port, peer_port };
}

/* ---- packets to the guest (rx queue) ---- */

static void fill_hdr(struct vsock *v, struct conn *c, struct vsock_hdr *h, uint16_t op, uint32_t local,
                     uint32_t peer)
{
    *h = (struct vsock_hdr){
        .src_cid = VSOCK_HOST_CID, .dst_cid = v->cid, .src_port = local, .dst_port = peer,
        .type = VSOCK_TYPE_STREAM, .op = op,
    };
    if (c) {
        h->buf_alloc = CONN_BUF;
        h->fwd_cnt = c->fwd_cnt;
        c->fwd_told = c->fwd_cnt;
    }
}

/* Pops an rx buffer big enough for a header. NULL if none (the caller stops for now). */
static bool pop_rx(struct vsock *v, struct vq_req *r)
{
    struct vq *q = &v->d.vq[Q_RX];
    for (;;) {
        int rc = vq_pop(q, r);
        if (rc < 0)
            vdev_note_broken(&v->d, Q_RX);
        if (rc != 1)
            return false;
        if (r->wlen >= sizeof(struct vsock_hdr))
            return true;
        counter_add(v->d.c.errors, 1); /* too small to hold anything: hand it back */
        vq_push(q, r->head, 0);
    }
}

static bool send_ctl(struct vsock *v, struct conn *c, uint16_t op, uint32_t flags, uint32_t local, uint32_t peer)
{
    struct vq_req r;
    if (!pop_rx(v, &r))
        return false;
    struct vsock_hdr h;
    fill_hdr(v, c, &h, op, local, peer);
    h.flags = flags;
    buf_to_iov(r.wr, r.nw, 0, &h, sizeof(h));
    vq_push(&v->d.vq[Q_RX], r.head, sizeof(h));
    counter_add(v->d.c.frames_in, 1);
    if (op == OP_RST)
        counter_add(v->d.c.resets, 1);
    return true;
}

/* Sends the control packets c owes; false if rx buffers ran out. May free c (after RST). */
static bool flush_ctl(struct vsock *v, struct conn *c, bool *freed)
{
    static const struct { uint32_t bit; uint16_t op; } order[] = {
        { P_REQUEST, OP_REQUEST }, { P_RESPONSE, OP_RESPONSE }, { P_CREDIT_UPDATE, OP_CREDIT_UPDATE },
        { P_CREDIT_REQUEST, OP_CREDIT_REQUEST }, { P_SHUTDOWN, OP_SHUTDOWN }, { P_RST, OP_RST },
    };
    *freed = false;
    for (size_t i = 0; i < sizeof(order) / sizeof(order[0]); i++) {
        if (!(c->pending & order[i].bit))
            continue;
        uint32_t flags = order[i].op == OP_SHUTDOWN ? SHUT_F_RCV | SHUT_F_SEND : 0;
        if (!send_ctl(v, c, order[i].op, flags, c->local_port, c->peer_port))
            return false;
        c->pending &= ~order[i].bit;
        if (order[i].op == OP_RST) {
            conn_free(v, c);
            *freed = true;
            return true;
        }
    }
    return true;
}

/* Moves socket data into one rx buffer. false: out of rx buffers. */
static bool send_data(struct vsock *v, struct conn *c)
{
    uint32_t credit = peer_credit(c);
    if (credit == 0) {
        if (!c->credit_asked) {
            c->pending |= P_CREDIT_REQUEST;
            c->credit_asked = true;
        }
        return true;
    }
    struct vq_req r;
    if (!pop_rx(v, &r))
        return false;
    uint64_t room = r.wlen - sizeof(struct vsock_hdr);
    if (room == 0) {
        /* A header-sized buffer: use it for a credit update rather than spin on it. */
        struct vsock_hdr h;
        fill_hdr(v, c, &h, OP_CREDIT_UPDATE, c->local_port, c->peer_port);
        buf_to_iov(r.wr, r.nw, 0, &h, sizeof(h));
        vq_push(&v->d.vq[Q_RX], r.head, sizeof(h));
        return true;
    }
    size_t want = room < credit ? (size_t)room : credit;
    if (want > MAX_PAYLOAD)
        want = MAX_PAYLOAD;
    int n = iov_slice(r.wr, r.nw, sizeof(struct vsock_hdr), want, v->scratch);
    ssize_t got = readv(c->fd, v->scratch, n < IOV_MAX ? n : IOV_MAX);
    if (got < 0 && (errno == EAGAIN || errno == EINTR)) {
        vq_unpop(&v->d.vq[Q_RX]);
        c->readable = false;
        conn_rearm(v, c);
        return true;
    }
    struct vsock_hdr h;
    if (got <= 0 && c->hup) {
        /* Everything the host sent has been delivered and it is gone both ways. */
        vq_unpop(&v->d.vq[Q_RX]);
        c->host_eof = true;
        c->readable = false;
        c->pending |= P_RST;
        return true;
    }
    if (got <= 0) {
        /* EOF: the host will send no more. It may still read (a half-close with
         * shutdown(SHUT_WR) looks the same here), so only SEND is shut; a host that closed
         * completely shows up as EPOLLHUP or a failing write, and is reset then. */
        fill_hdr(v, c, &h, OP_SHUTDOWN, c->local_port, c->peer_port);
        h.flags = SHUT_F_SEND;
        c->host_eof = true;
        c->readable = false;
        conn_rearm(v, c);
        got = 0;
    } else {
        fill_hdr(v, c, &h, OP_RW, c->local_port, c->peer_port);
        h.len = (uint32_t)got;
        c->rx_cnt += (uint32_t)got;
        counter_add(v->d.c.bytes_read, (uint64_t)got);
    }
    buf_to_iov(r.wr, r.nw, 0, &h, sizeof(h));
    vq_push(&v->d.vq[Q_RX], r.head, (uint32_t)(sizeof(h) + (size_t)got));
    counter_add(v->d.c.frames_in, 1);
    return true;
}

/* Fills rx buffers with everything owed to the guest, as far as buffers last. */
static void pump_rx(struct vsock *v)
{
    struct vq *q = &v->d.vq[Q_RX];
    if (!q->ready || q->broken)
        return;
    for (;;) {
        bool progress = false, starved = false;
        while (v->nrst > 0 && !starved) {
            struct lone_rst *x = &v->rst[v->nrst - 1];
            if (send_ctl(v, NULL, OP_RST, 0, x->local_port, x->peer_port))
                v->nrst--, progress = true;
            else
                starved = true;
        }
        for (int i = 0; i < v->nslots && !starved; i++) {
            struct conn *c = v->conns[i];
            bool freed = false;
            if (!c)
                continue;
            if (c->pending) {
                uint32_t before = c->pending;
                starved = !flush_ctl(v, c, &freed);
                progress |= freed || c->pending != before;
                if (freed || starved)
                    continue;
            }
            if (c->state == C_OPEN && c->readable && !c->host_eof && !c->guest_shut_rcv) {
                uint32_t before = c->rx_cnt;
                starved = !send_data(v, c);
                progress |= c->rx_cnt != before || c->host_eof || c->pending;
            }
        }
        if (starved) {
            /* Kick us when the guest adds buffers. */
            if (vq_enable_notify(q))
                continue;
            break;
        }
        if (!progress)
            break;
    }
    vdev_signal(&v->d, Q_RX);
}

/* ---- packets from the guest (tx queue) ---- */

/* Writes as much of the pending data as the socket takes. -1: the socket is dead. */
static int drain_tx(struct vsock *v, struct conn *c)
{
    while (c->tx_len) {
        ssize_t n = write(c->fd, c->tx + c->tx_off, c->tx_len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno == EAGAIN)
            break;
        if (n <= 0)
            return -1;
        c->tx_off += (uint32_t)n, c->tx_len -= (uint32_t)n, c->fwd_cnt += (uint32_t)n;
    }
    if (c->tx_len == 0)
        c->tx_off = 0;
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

/* Takes len payload bytes of a RW packet. -1 = reset the connection. */
static int take_rw(struct vsock *v, struct conn *c, const struct vq_req *r, uint32_t len)
{
    if (c->guest_shut_send)
        return -1;
    if ((uint64_t)c->tx_len + len > CONN_BUF)
        return -1; /* beyond the credit we gave: a misbehaving guest */
    if (!c->tx && !(c->tx = malloc(CONN_BUF)))
        return -1;
    if (c->tx_off + c->tx_len + len > CONN_BUF) {
        memmove(c->tx, c->tx + c->tx_off, c->tx_len);
        c->tx_off = 0;
    }
    iov_to_buf(r->rd, r->nr, sizeof(struct vsock_hdr), c->tx + c->tx_off + c->tx_len, len);
    c->tx_len += len;
    counter_add(v->d.c.bytes_written, len);
    return drain_tx(v, c);
}

/* Guest REQUEST to host port P: connect to "<path>_P". */
static void guest_connect(struct vsock *v, const struct vsock_hdr *h)
{
    struct sockaddr_un a = { .sun_family = AF_UNIX };
    int k = snprintf(a.sun_path, sizeof(a.sun_path), "%s_%u", v->path, h->dst_port);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0 || k >= (int)sizeof(a.sun_path) || connect(fd, (struct sockaddr *)&a, sizeof(a)) < 0) {
        if (fd >= 0)
            close(fd);
        queue_lone_rst(v, h->dst_port, h->src_port);
        return;
    }
    struct conn *c = conn_new(v, fd, C_OPEN);
    if (!c) {
        queue_lone_rst(v, h->dst_port, h->src_port);
        return;
    }
    c->local_port = h->dst_port;
    c->peer_port = h->src_port;
    c->peer_buf_alloc = h->buf_alloc;
    c->peer_fwd_cnt = h->fwd_cnt;
    c->pending |= P_RESPONSE;
    c->readable = true;
    counter_add(v->d.c.connections, 1);
    conn_rearm(v, c);
}

static void host_established(struct vsock *v, struct conn *c)
{
    char ok[32];
    int n = snprintf(ok, sizeof(ok), "OK %u\n", c->local_port);
    if (write(c->fd, ok, (size_t)n) != n) {
        conn_reset(v, c);
        return;
    }
    c->state = C_OPEN;
    c->readable = true;
    counter_add(v->d.c.connections, 1);
    conn_rearm(v, c);
}

static void guest_shutdown(struct vsock *v, struct conn *c, uint32_t flags)
{
    if (flags & SHUT_F_RCV)
        c->guest_shut_rcv = true;
    if (flags & SHUT_F_SEND)
        c->guest_shut_send = true;
    if (c->guest_shut_rcv && c->guest_shut_send) {
        /* Full close by the guest: it waits for our RST, which we send once the data
         * it sent before has reached the host socket (drain_tx sets it). */
        c->rst_when_drained = true;
        if (drain_tx(v, c) < 0)
            conn_reset(v, c);
        return;
    }
    if (drain_tx(v, c) < 0)
        conn_reset(v, c);
}

static void handle_packet(struct vsock *v, const struct vq_req *r)
{
    struct vsock_hdr h;
    counter_add(v->d.c.requests, 1);
    if (iov_to_buf(r->rd, r->nr, 0, &h, sizeof(h)) < sizeof(h)) {
        counter_add(v->d.c.errors, 1);
        return;
    }
    if (h.src_cid != v->cid || h.dst_cid != VSOCK_HOST_CID) {
        counter_add(v->d.c.errors, 1); /* not ours to answer: drop */
        return;
    }
    if (h.len > MAX_PAYLOAD || h.len > r->rlen - sizeof(h) || h.type != VSOCK_TYPE_STREAM) {
        counter_add(v->d.c.errors, 1);
        struct conn *bad = conn_find(v, h.dst_port, h.src_port);
        if (bad)
            conn_reset(v, bad);
        else if (h.op != OP_RST)
            queue_lone_rst(v, h.dst_port, h.src_port);
        return;
    }
    struct conn *c = conn_find(v, h.dst_port, h.src_port);
    if (!c) {
        if (h.op == OP_REQUEST)
            guest_connect(v, &h);
        else if (h.op != OP_RST)
            queue_lone_rst(v, h.dst_port, h.src_port);
        return;
    }
    c->peer_buf_alloc = h.buf_alloc;
    c->peer_fwd_cnt = h.fwd_cnt;
    if (peer_credit(c) > 0)
        c->credit_asked = false;
    switch (h.op) {
    case OP_RESPONSE:
        if (c->state == C_REQUESTED)
            host_established(v, c);
        else
            conn_reset(v, c);
        break;
    case OP_RW:
        if (c->state != C_OPEN || take_rw(v, c, r, h.len) < 0)
            conn_reset(v, c);
        break;
    case OP_CREDIT_UPDATE:
        break;
    case OP_CREDIT_REQUEST:
        c->pending |= P_CREDIT_UPDATE;
        break;
    case OP_SHUTDOWN:
        guest_shutdown(v, c, h.flags);
        break;
    case OP_RST:
        conn_free(v, c);
        break;
    default: /* a REQUEST for an existing connection, or an unknown op */
        conn_reset(v, c);
    }
}

static void process_tx(struct vsock *v)
{
    struct vq *q = &v->d.vq[Q_TX];
    struct vq_req r;
    for (;;) {
        int rc;
        while ((rc = vq_pop(q, &r)) == 1) {
            handle_packet(v, &r);
            vq_push(q, r.head, 0);
        }
        if (rc < 0) {
            vdev_note_broken(&v->d, Q_TX);
            break;
        }
        if (!vq_enable_notify(q))
            break;
    }
    vdev_signal(&v->d, Q_TX);
}

static void vsock_notify(struct vdev *d, int qi)
{
    struct vsock *v = (struct vsock *)d;
    if (qi == Q_TX)
        process_tx(v);
    /* New rx buffers, or packets owed after tx processing. */
    pump_rx(v);
}

/* ---- the host side: Unix sockets on our own thread ---- */

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
        conn_new(v, fd, C_LINE);
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
         * polling, since a hang-up is reported forever, and let the reads find EOF. */
        epoll_ctl(v->epfd, EPOLL_CTL_DEL, c->fd, NULL);
        c->hup = true;
        c->readable = true;
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

static void *vsock_thread(void *arg)
{
    struct vsock *v = arg;
    for (;;) {
        struct epoll_event evs[32];
        int n = epoll_wait(v->epfd, evs, 32, -1);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return NULL;
        pthread_mutex_lock(&v->d.lock);
        for (int i = 0; i < n; i++) {
            uint64_t tag = evs[i].data.u64;
            if (tag == TAG_STOP) {
                pthread_mutex_unlock(&v->d.lock);
                return NULL;
            }
            if (tag == TAG_LISTEN)
                accept_host(v);
            else
                conn_event(v, tag, evs[i].events);
        }
        pump_rx(v);
        pthread_mutex_unlock(&v->d.lock);
    }
}

static void close_all(struct vsock *v)
{
    for (int i = 0; i < v->nslots; i++)
        if (v->conns[i])
            conn_free(v, v->conns[i]);
    v->nslots = 0;
    v->nrst = 0;
}

static void vsock_reset(struct vdev *d) { close_all((struct vsock *)d); }

static void vsock_destroy(struct vdev *d)
{
    struct vsock *v = (struct vsock *)d;
    if (v->thread_started) {
        eventfd_write(v->stop_efd, 1);
        pthread_join(v->thread, NULL);
    }
    close_all(v);
    if (v->listen_fd >= 0) {
        close(v->listen_fd);
        unlink(v->path);
    }
    if (v->epfd >= 0)
        close(v->epfd);
    if (v->stop_efd >= 0)
        close(v->stop_efd);
    free(v->scratch);
}

static const struct vdev_ops vsock_ops = {
    .notify = vsock_notify,
    .reset = vsock_reset,
    .destroy = vsock_destroy,
};

static int vsock_listen(struct vsock *v, char *err, size_t errlen)
{
    struct sockaddr_un a = { .sun_family = AF_UNIX };
    strcpy(a.sun_path, v->path); /* length checked in vsock_new */
    unlink(v->path);
    v->listen_fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (v->listen_fd < 0 || bind(v->listen_fd, (struct sockaddr *)&a, sizeof(a)) < 0 ||
        listen(v->listen_fd, 64) < 0) {
        snprintf(err, errlen, "cannot listen on vsock socket %s: %s", v->path, strerror(errno));
        return -1;
    }
    return 0;
}

struct vdev *vsock_new(uint64_t guest_cid, const char *uds_path, char *err, size_t errlen)
{
    if (guest_cid < 3 || guest_cid >= 0xffffffffull) {
        snprintf(err, errlen, "vsock guest CID %llu is reserved or out of range", (unsigned long long)guest_cid);
        return NULL;
    }
    /* Leave room for "_<port>" on the guest-initiated side. */
    if (strlen(uds_path) + 11 >= sizeof(((struct sockaddr_un *)0)->sun_path)) {
        snprintf(err, errlen, "vsock socket path %s is too long (max %zu bytes)", uds_path,
                 sizeof(((struct sockaddr_un *)0)->sun_path) - 12);
        return NULL;
    }
    struct vsock *v = calloc(1, sizeof(*v));
    if (!v || !(v->scratch = calloc(VQ_MAX_SEGS(VSOCK_QUEUE_MAX), sizeof(struct iovec)))) {
        free(v);
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    vdev_init(&v->d, "vsock", VIRTIO_ID_VSOCK, &vsock_ops,
              (1ull << VIRTIO_RING_F_INDIRECT_DESC) | (1ull << VIRTIO_RING_F_EVENT_IDX), 3, VSOCK_QUEUE_MAX);
    v->cid = guest_cid;
    memcpy(v->d.config, &guest_cid, 8);
    v->d.config_len = 8;
    v->next_host_port = FIRST_HOST_PORT;
    v->listen_fd = v->epfd = v->stop_efd = -1;
    snprintf(v->path, sizeof(v->path), "%s", uds_path);
    if (vsock_listen(v, err, errlen) < 0)
        goto fail;
    v->epfd = epoll_create1(EPOLL_CLOEXEC);
    v->stop_efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (v->epfd < 0 || v->stop_efd < 0) {
        snprintf(err, errlen, "cannot create epoll/eventfd: %s", strerror(errno));
        goto fail;
    }
    struct epoll_event e1 = { .events = EPOLLIN, .data.u64 = TAG_STOP };
    struct epoll_event e2 = { .events = EPOLLIN, .data.u64 = TAG_LISTEN };
    epoll_ctl(v->epfd, EPOLL_CTL_ADD, v->stop_efd, &e1);
    epoll_ctl(v->epfd, EPOLL_CTL_ADD, v->listen_fd, &e2);
    if (pthread_create(&v->thread, NULL, vsock_thread, v) != 0) {
        snprintf(err, errlen, "cannot start the vsock thread");
        goto fail;
    }
    v->thread_started = true;
    return &v->d;
fail:
    vsock_destroy(&v->d);
    pthread_mutex_destroy(&v->d.lock);
    free(v);
    return NULL;
}
