/* virtio-vsock packets: the rx queue (packets to the guest: control packets a connection
 * owes, data read from host sockets as the guest's credit allows, resets for connections
 * we do not know) and the tx queue (packets from the guest, each checked, then handed to
 * its connection). See vsock.h. */
#define _GNU_SOURCE
#include <errno.h>
#include <limits.h>
#include <string.h>
#include <sys/uio.h>

#include "vsock.h"

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
void pump_rx(struct vsock *v)
{
    struct vq *q = &v->d.vq[Q_RX];
    if (!q->ready || q->broken)
        return;
    uint16_t start = q->used_idx;
    for (;;) {
        /* The work budget (VDEV_BUDGET_CHAINS packets per call, counted on the used ring):
         * the transport calls notify(Q_RX) again after serving what else is ready. */
        if (vdev_budget_spent(&v->d, Q_RX, (uint16_t)(q->used_idx - start), 0))
            break;
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

/* Guest REQUEST to host port P: a connection to "<path>_P" (vsock_host.c), answered with
 * RESPONSE once rx buffers allow. */
static void guest_connect(struct vsock *v, const struct vsock_hdr *h)
{
    struct conn *c = host_dial(v, h->dst_port, h->src_port);
    if (!c)
        return;
    c->peer_buf_alloc = h->buf_alloc;
    c->peer_fwd_cnt = h->fwd_cnt;
    c->pending |= P_RESPONSE;
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
    unsigned chains = 0;
    uint64_t bytes = 0;
    for (;;) {
        int rc = 0;
        while (!vdev_budget_spent(&v->d, Q_TX, chains, bytes) && (rc = vq_pop(q, &r)) == 1) {
            handle_packet(v, &r);
            vq_push(q, r.head, 0);
            chains++;
            bytes += r.rlen;
        }
        if (rc == 1)
            break; /* out of budget (VDEV_BUDGET_CHAINS): the transport calls us again */
        if (rc < 0) {
            vdev_note_broken(&v->d, Q_TX);
            break;
        }
        if (!vq_enable_notify(q))
            break;
    }
    vdev_signal(&v->d, Q_TX);
}

void vsock_notify(struct vdev *d, int qi)
{
    struct vsock *v = (struct vsock *)d;
    if (qi == Q_TX)
        process_tx(v);
    /* New rx buffers, or packets owed after tx processing. */
    pump_rx(v);
}
