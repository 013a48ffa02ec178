/* The addresses the egress policy has learned from DNS, per domain pattern: a bounded
 * table of (pattern number, address) -> expiry, hashed for the transmit path's lookups.
 *
 * An entry lives for its record's TTL clamped to [ttl_min, ttl_max] (30 s .. 1 h by
 * default: a TTL of 0 would make the answer useless before the guest connects, and a
 * week-long one would keep an address allowed long after the name moved). A frame the
 * policy matches against an entry keeps it for at least ttl_min more: a download that
 * outlasts the TTL is not cut off mid-way, while an address nobody uses still expires.
 * When the table is full, expired entries go first, then the least recently used one
 * (counted in `evicted`): a flood of answers can push out old names but never grow us.
 *
 * Locking is the caller's (net_policy.c holds t->lock around a whole frame). */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "net_dns.h"

struct dns_entry {
    uint32_t domain;
    uint8_t family, live;
    uint8_t addr[16];
    int32_t next;        /* the bucket's chain, or the free list */
    int64_t expires_ms;
    uint64_t used;       /* t->tick when last learned or matched */
};

#define DEFAULT_TTL_MIN 30u
#define DEFAULT_TTL_MAX 3600u
#define TABLE_CAP_MAX (1u << 20)

static size_t alen(uint8_t family) { return family == 4 ? 4 : 16; }

/* The address alone: addr_refs[] counts entries per slot of this hash, so a frame to an
 * address no domain has learned (most frames) costs one lookup, not one per domain rule. */
static uint32_t addr_hash(uint8_t family, const uint8_t *addr)
{
    uint32_t h = 2166136261u ^ family;
    for (size_t i = 0; i < alen(family); i++)
        h = (h ^ addr[i]) * 16777619u;
    return h;
}

static uint32_t hash(uint32_t domain, uint8_t family, const uint8_t *addr)
{
    uint32_t h = 2166136261u;
    uint8_t key[4] = { (uint8_t)domain, (uint8_t)(domain >> 8), (uint8_t)(domain >> 16), family };
    for (size_t i = 0; i < 4; i++)
        h = (h ^ key[i]) * 16777619u;
    for (size_t i = 0; i < alen(family); i++)
        h = (h ^ addr[i]) * 16777619u;
    return h;
}

static int alloc(struct dns_table *t, size_t cap)
{
    size_t nb = 16;
    while (nb < cap * 2)
        nb *= 2;
    int32_t *b = malloc(nb * sizeof(*b));
    uint32_t *refs = calloc(nb, sizeof(*refs));
    struct dns_entry *e = calloc(cap, sizeof(*e));
    if (!b || !e || !refs) {
        free(b);
        free(e);
        free(refs);
        return -1;
    }
    free(t->buckets);
    free(t->entries);
    free(t->addr_refs);
    t->addr_refs = refs;
    t->buckets = b;
    t->entries = e;
    t->nbuckets = nb;
    t->cap = cap;
    t->count = 0;
    for (size_t i = 0; i < nb; i++)
        b[i] = -1;
    for (size_t i = 0; i < cap; i++)
        e[i].next = i + 1 < cap ? (int32_t)(i + 1) : -1;
    t->free_head = 0;
    return 0;
}

int dns_table_init(struct dns_table *t, size_t cap)
{
    memset(t, 0, sizeof(*t));
    t->ttl_min = DEFAULT_TTL_MIN;
    t->ttl_max = DEFAULT_TTL_MAX;
    t->manual_now_ms = -1;
    if (pthread_mutex_init(&t->lock, NULL) != 0)
        return -1;
    if (alloc(t, cap) < 0) {
        pthread_mutex_destroy(&t->lock);
        return -1;
    }
    return 0;
}

void dns_table_destroy(struct dns_table *t)
{
    free(t->addr_refs);
    free(t->buckets);
    free(t->entries);
    pthread_mutex_destroy(&t->lock);
}

int dns_table_configure(struct dns_table *t, size_t cap, uint32_t ttl_min, uint32_t ttl_max)
{
    if (cap < 1 || cap > TABLE_CAP_MAX || ttl_min > ttl_max || ttl_max > 7 * 86400u)
        return -1;
    if (alloc(t, cap) < 0)
        return -1;
    t->ttl_min = ttl_min;
    t->ttl_max = ttl_max;
    return 0;
}

int64_t dns_table_now(struct dns_table *t)
{
    if (t->manual_now_ms >= 0)
        return t->manual_now_ms;
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* The entry for the key, or -1; *link is where its index is stored (to unlink it). */
static int32_t find(struct dns_table *t, uint32_t domain, uint8_t family, const uint8_t *addr,
                    int32_t **link)
{
    int32_t *l = &t->buckets[hash(domain, family, addr) & (t->nbuckets - 1)];
    while (*l >= 0) {
        struct dns_entry *e = &t->entries[*l];
        if (e->domain == domain && e->family == family && memcmp(e->addr, addr, alen(family)) == 0)
            break;
        l = &e->next;
    }
    *link = l;
    return *l;
}

static void drop(struct dns_table *t, int32_t i)
{
    struct dns_entry *e = &t->entries[i];
    int32_t *l;
    find(t, e->domain, e->family, e->addr, &l); /* the link that points at i */
    *l = e->next;
    t->addr_refs[addr_hash(e->family, e->addr) & (t->nbuckets - 1)]--;
    e->live = 0;
    e->next = t->free_head;
    t->free_head = i;
    t->count--;
}

size_t dns_table_sweep(struct dns_table *t, int64_t now)
{
    for (size_t i = 0; i < t->cap; i++)
        if (t->entries[i].live && t->entries[i].expires_ms <= now) {
            drop(t, (int32_t)i);
            t->expired++;
        }
    return t->count;
}

void dns_table_learn(struct dns_table *t, uint32_t domain, const struct dns_addr *a, int64_t now)
{
    uint32_t ttl = a->ttl < t->ttl_min ? t->ttl_min : a->ttl > t->ttl_max ? t->ttl_max : a->ttl;
    int32_t *l;
    int32_t i = find(t, domain, a->family, a->addr, &l);
    if (i < 0) {
        if (t->free_head < 0)
            dns_table_sweep(t, now);
        if (t->free_head < 0) { /* full of live entries: the least recently used goes */
            size_t lru = 0;
            for (size_t j = 1; j < t->cap; j++)
                if (t->entries[j].used < t->entries[lru].used)
                    lru = j;
            drop(t, (int32_t)lru);
            t->evicted++;
        }
        i = t->free_head;
        struct dns_entry *e = &t->entries[i];
        t->free_head = e->next;
        memset(e, 0, sizeof(*e));
        e->domain = domain;
        e->family = a->family;
        memcpy(e->addr, a->addr, alen(a->family));
        e->live = 1;
        find(t, domain, a->family, a->addr, &l); /* the chain's end, after any drop */
        e->next = -1;
        *l = i;
        t->addr_refs[addr_hash(a->family, a->addr) & (t->nbuckets - 1)]++;
        t->count++;
    }
    struct dns_entry *e = &t->entries[i];
    e->expires_ms = now + (int64_t)ttl * 1000; /* the latest answer is the one that holds */
    e->used = ++t->tick;
}

int dns_table_may_have(struct dns_table *t, uint8_t family, const uint8_t *addr)
{
    return t->addr_refs[addr_hash(family, addr) & (t->nbuckets - 1)] != 0;
}

int dns_table_has(struct dns_table *t, uint32_t domain, uint8_t family, const uint8_t *addr, int64_t now)
{
    int32_t *l;
    int32_t i = find(t, domain, family, addr, &l);
    if (i < 0)
        return 0;
    struct dns_entry *e = &t->entries[i];
    if (e->expires_ms <= now) {
        drop(t, i);
        t->expired++;
        return 0;
    }
    e->used = ++t->tick;
    int64_t keep = now + (int64_t)t->ttl_min * 1000;
    if (e->expires_ms < keep)
        e->expires_ms = keep;
    return 1;
}
