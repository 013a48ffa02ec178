/* The inbound flows a remote side opened to a published guest port (see net_flows.h): a
 * bounded hash table of 5-tuples with a least-recently-used list.
 *
 * Bounds: at most `cap` flows (4096 by default). A flow lives while traffic on it goes
 * either way: TCP 5 min idle, 10 s after FIN both ways (the last ACKs still pass), ended at
 * once by an RST; UDP 60 s idle. When the table is full, expired flows at the old ends of
 * the lists go first, then the least recently used flow the guest has not answered yet,
 * and only when there is none the least recently used answered one (counted in
 * `evicted`): a peer flooding a published port with SYNs or datagrams pushes out its own
 * kind, not the conversations the guest is having, and never grows the table.
 *
 * What it trusts: receive-path frames come from passt, which relays what any network peer
 * sends to a published port, so an entry is only ever made for a published guest port, and
 * its remote address and port are exactly the frame's. The guest (hostile too) can only
 * match an entry, exactly, on its reversed tuple; it can never make one, and a SYN of its
 * own (a new connection) is never a reply, whichever source port it binds. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include "net_flows.h"

#define TCP_FIN 0x01
#define TCP_SYN 0x02
#define TCP_RST 0x04
#define TCP_ACK 0x10
#define P_TCP 6
#define P_UDP 17
#define FIN_REMOTE 1
#define FIN_GUEST 2

struct flow {
    uint8_t family, proto, live, fin;
    uint8_t answered;           /* the guest has replied: which LRU list it is on */
    uint16_t rport, gport;
    uint8_t raddr[16], gaddr[16];
    int32_t hnext;              /* the bucket's chain, or the free list */
    int32_t prev, next;         /* its LRU list */
    int64_t expires_ms;
};

static size_t alen(uint8_t family) { return family == 4 ? 4 : 16; }

/* Seeded per table: the remote side picks its address and port, and must not be able to
 * pile its flows into one chain. */
static uint32_t hash(const struct flow_table *t, const struct flow_tuple *k)
{
    uint32_t h = 2166136261u ^ t->seed;
    uint8_t head[6] = { k->family, k->proto, (uint8_t)(k->rport >> 8), (uint8_t)k->rport,
                        (uint8_t)(k->gport >> 8), (uint8_t)k->gport };
    for (size_t i = 0; i < sizeof(head); i++)
        h = (h ^ head[i]) * 16777619u;
    for (size_t i = 0; i < alen(k->family); i++)
        h = (h ^ k->raddr[i]) * 16777619u;
    for (size_t i = 0; i < alen(k->family); i++)
        h = (h ^ k->gaddr[i]) * 16777619u;
    return h;
}

static int same(const struct flow *f, const struct flow_tuple *k)
{
    return f->family == k->family && f->proto == k->proto && f->rport == k->rport &&
           f->gport == k->gport && memcmp(f->raddr, k->raddr, alen(k->family)) == 0 &&
           memcmp(f->gaddr, k->gaddr, alen(k->family)) == 0;
}

static int alloc(struct flow_table *t, size_t cap)
{
    size_t nb = 16;
    while (nb < cap * 2)
        nb *= 2;
    int32_t *b = malloc(nb * sizeof(*b));
    struct flow *e = calloc(cap, sizeof(*e));
    if (!b || !e) {
        free(b);
        free(e);
        return -1;
    }
    free(t->buckets);
    free(t->entries);
    t->buckets = b;
    t->entries = e;
    t->nbuckets = nb;
    t->cap = cap;
    t->count = 0;
    for (size_t i = 0; i < nb; i++)
        b[i] = -1;
    for (size_t i = 0; i < cap; i++)
        e[i].hnext = i + 1 < cap ? (int32_t)(i + 1) : -1;
    t->free_head = 0;
    t->lru_head[0] = t->lru_tail[0] = t->lru_head[1] = t->lru_tail[1] = -1;
    return 0;
}

int flows_init(struct flow_table *t)
{
    memset(t, 0, sizeof(*t));
    t->manual_now_ms = -1;
    if (getrandom(&t->seed, sizeof(t->seed), GRND_NONBLOCK) != (ssize_t)sizeof(t->seed)) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        t->seed = (uint32_t)ts.tv_nsec ^ (uint32_t)(uintptr_t)t;
    }
    if (pthread_mutex_init(&t->lock, NULL) != 0)
        return -1;
    if (alloc(t, 1) < 0) { /* no port published yet: nothing is ever recorded */
        pthread_mutex_destroy(&t->lock);
        return -1;
    }
    return 0;
}

void flows_destroy(struct flow_table *t)
{
    free(t->buckets);
    free(t->entries);
    pthread_mutex_destroy(&t->lock);
}

int flows_configure(struct flow_table *t, const struct vmm_net_inbound_port *ports, size_t n,
                    uint32_t cap, char *err, size_t errlen)
{
    if (cap == 0)
        cap = FLOWS_DEFAULT_MAX;
    if (cap > FLOWS_MAX) {
        snprintf(err, errlen, "%u inbound flows; at most %u", cap, FLOWS_MAX);
        return -1;
    }
    for (size_t i = 0; i < n; i++)
        if ((ports[i].proto != P_TCP && ports[i].proto != P_UDP) || ports[i].port == 0) {
            snprintf(err, errlen, "published port %zu is not TCP or UDP 1..65535", i);
            return -1;
        }
    pthread_mutex_lock(&t->lock);
    int rc = alloc(t, n ? cap : 1);
    if (rc == 0) {
        memset(t->tcp_ports, 0, sizeof(t->tcp_ports));
        memset(t->udp_ports, 0, sizeof(t->udp_ports));
        for (size_t i = 0; i < n; i++) {
            uint8_t *bits = ports[i].proto == P_TCP ? t->tcp_ports : t->udp_ports;
            bits[ports[i].port >> 3] |= (uint8_t)(1u << (ports[i].port & 7));
        }
        t->enabled = n > 0;
    }
    pthread_mutex_unlock(&t->lock);
    if (rc < 0)
        snprintf(err, errlen, "out of memory");
    return rc;
}

void flows_set_clock(struct flow_table *t, int64_t now_ms)
{
    pthread_mutex_lock(&t->lock);
    t->manual_now_ms = now_ms < 0 ? -1 : now_ms;
    pthread_mutex_unlock(&t->lock);
}

static int64_t flows_now(struct flow_table *t)
{
    if (t->manual_now_ms >= 0)
        return t->manual_now_ms;
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int flows_published(const struct flow_table *t, uint8_t proto, uint16_t port)
{
    if (!t->enabled || (proto != P_TCP && proto != P_UDP))
        return 0;
    const uint8_t *bits = proto == P_TCP ? t->tcp_ports : t->udp_ports;
    return bits[port >> 3] >> (port & 7) & 1;
}

/* ---- the LRU list and the chains ---- */

static void lru_unlink(struct flow_table *t, int32_t i)
{
    struct flow *f = &t->entries[i];
    if (f->prev >= 0)
        t->entries[f->prev].next = f->next;
    else
        t->lru_head[f->answered] = f->next;
    if (f->next >= 0)
        t->entries[f->next].prev = f->prev;
    else
        t->lru_tail[f->answered] = f->prev;
}

static void lru_append(struct flow_table *t, int32_t i)
{
    struct flow *f = &t->entries[i];
    int32_t *tail = &t->lru_tail[f->answered];
    f->prev = *tail;
    f->next = -1;
    if (*tail >= 0)
        t->entries[*tail].next = i;
    else
        t->lru_head[f->answered] = i;
    *tail = i;
}

/* Moves flow i to the list of answered (1) or unanswered (0) flows. */
static void set_answered(struct flow_table *t, int32_t i, uint8_t answered)
{
    if (t->entries[i].answered == answered)
        return;
    lru_unlink(t, i);
    t->entries[i].answered = answered;
    lru_append(t, i);
}

/* The flow for k, or -1; *link is where its index is stored (to unlink it). */
static int32_t find(struct flow_table *t, const struct flow_tuple *k, int32_t **link)
{
    int32_t *l = &t->buckets[hash(t, k) & (t->nbuckets - 1)];
    while (*l >= 0 && !same(&t->entries[*l], k))
        l = &t->entries[*l].hnext;
    *link = l;
    return *l;
}

static void drop(struct flow_table *t, int32_t i)
{
    struct flow *f = &t->entries[i];
    struct flow_tuple k = { f->family, f->proto, f->rport, f->gport, f->raddr, f->gaddr };
    int32_t *l;
    find(t, &k, &l); /* the link that points at i */
    *l = f->hnext;
    lru_unlink(t, i);
    f->live = 0;
    f->hnext = t->free_head;
    t->free_head = i;
    t->count--;
}

/* Used now: to the young end of the list, with the timeout its state has. */
static void touch(struct flow_table *t, int32_t i, int64_t now)
{
    struct flow *f = &t->entries[i];
    int64_t idle = f->proto == P_UDP ? FLOW_UDP_IDLE_MS
                 : f->fin == (FIN_REMOTE | FIN_GUEST) ? FLOW_TCP_CLOSING_MS : FLOW_TCP_IDLE_MS;
    f->expires_ms = now + idle;
    lru_unlink(t, i);
    lru_append(t, i);
}

/* A flow whose time ran out: one that closed (FIN both ways) counts as closed. */
static void expire(struct flow_table *t, int32_t i)
{
    if (t->entries[i].fin == (FIN_REMOTE | FIN_GUEST))
        t->closed++;
    else
        t->expired++;
    drop(t, i);
}

void flows_stats(struct flow_table *t, struct vmm_net_policy_stats *out)
{
    pthread_mutex_lock(&t->lock);
    int64_t now = flows_now(t);
    for (size_t i = 0; i < t->cap; i++)
        if (t->entries[i].live && t->entries[i].expires_ms <= now)
            expire(t, (int32_t)i);
    out->flows = t->count;
    out->flows_opened = t->opened;
    out->flows_closed = t->closed;
    out->flows_expired = t->expired;
    out->flows_evicted = t->evicted;
    pthread_mutex_unlock(&t->lock);
}

/* A live, unexpired flow for k (an expired one is dropped on the way), or -1. */
static int32_t lookup(struct flow_table *t, const struct flow_tuple *k, int64_t now)
{
    int32_t *l;
    int32_t i = find(t, k, &l);
    if (i >= 0 && t->entries[i].expires_ms <= now) {
        expire(t, i);
        return -1;
    }
    return i;
}

static int32_t insert(struct flow_table *t, const struct flow_tuple *k, int64_t now)
{
    /* Expired flows at the old ends make room first (O(1) each); then, if the table is
     * still full, the least recently used unanswered flow goes, else an answered one. */
    for (int a = 0; a < 2; a++)
        while (t->lru_head[a] >= 0 && t->entries[t->lru_head[a]].expires_ms <= now)
            expire(t, t->lru_head[a]);
    if (t->free_head < 0) {
        drop(t, t->lru_head[0] >= 0 ? t->lru_head[0] : t->lru_head[1]);
        t->evicted++;
    }
    int32_t i = t->free_head;
    struct flow *f = &t->entries[i];
    t->free_head = f->hnext;
    memset(f, 0, sizeof(*f));
    f->family = k->family;
    f->proto = k->proto;
    f->rport = k->rport;
    f->gport = k->gport;
    memcpy(f->raddr, k->raddr, alen(k->family));
    memcpy(f->gaddr, k->gaddr, alen(k->family));
    f->live = 1;
    int32_t *l;
    find(t, k, &l); /* the chain's end (k is not in it) */
    f->hnext = -1;
    *l = i;
    f->prev = f->next = -1;
    lru_append(t, i);
    t->count++;
    t->opened++;
    return i;
}

void flows_rx(struct flow_table *t, const struct flow_tuple *k, uint8_t tcp_flags)
{
    if (!flows_published(t, k->proto, k->gport))
        return;
    int opens = k->proto == P_UDP || (tcp_flags & (TCP_SYN | TCP_ACK | TCP_RST)) == TCP_SYN;
    pthread_mutex_lock(&t->lock);
    int64_t now = flows_now(t);
    int32_t i = lookup(t, k, now);
    if (i < 0 && opens)
        i = insert(t, k, now);
    if (i >= 0) {
        struct flow *f = &t->entries[i];
        if (k->proto == P_TCP && (tcp_flags & TCP_RST)) {
            drop(t, i);
            t->closed++;
        } else {
            if (opens && k->proto == P_TCP) {
                f->fin = 0; /* a new connection on a tuple whose old one was closing */
                set_answered(t, i, 0);
            }
            if (k->proto == P_TCP && (tcp_flags & TCP_FIN))
                f->fin |= FIN_REMOTE;
            touch(t, i, now);
        }
    }
    pthread_mutex_unlock(&t->lock);
}

int flows_tx_reply(struct flow_table *t, const struct flow_tuple *k, uint8_t tcp_flags)
{
    if (!flows_published(t, k->proto, k->gport))
        return 0;
    if (k->proto == P_TCP && (tcp_flags & (TCP_SYN | TCP_ACK)) == TCP_SYN)
        return 0; /* the guest opening a connection of its own: for the rules to judge */
    pthread_mutex_lock(&t->lock);
    int64_t now = flows_now(t);
    int32_t i = lookup(t, k, now);
    if (i >= 0) {
        struct flow *f = &t->entries[i];
        if (k->proto == P_TCP && (tcp_flags & TCP_RST)) {
            drop(t, i);
            t->closed++;
        } else {
            if (k->proto == P_TCP && (tcp_flags & TCP_FIN))
                f->fin |= FIN_GUEST;
            set_answered(t, i, 1);
            touch(t, i, now);
        }
    }
    pthread_mutex_unlock(&t->lock);
    return i >= 0;
}
