/* What the egress policy learns from DNS: net_dns.c parses a DNS response (hostile input)
 * into the question's name and the addresses it resolved to; net_dns_table.c keeps those
 * addresses, per domain pattern, for as long as their TTL (clamped) says. */
#ifndef VMM_NET_DNS_H
#define VMM_NET_DNS_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#define DNS_NAME_MAX 253   /* presentation form without the trailing dot (RFC 1035 2.3.4) */
#define DNS_MAX_ADDRS 32   /* addresses taken from one response; the rest are ignored */

struct dns_addr {
    uint8_t family;        /* 4 or 6 */
    uint8_t addr[16];
    uint32_t ttl;          /* seconds, as the record says (clamped by the table) */
};

/* A response we can learn from: its question (lower case, dotted, no trailing dot) and
 * the A/AAAA records that answer it, directly or at the end of its CNAME chain. */
struct dns_answer {
    char qname[DNS_NAME_MAX + 1];
    size_t naddrs;
    struct dns_addr addrs[DNS_MAX_ADDRS];
};

enum { DNS_IGNORED = 0, DNS_LEARNED = 1, DNS_MALFORMED = -1 };

/* Parses one DNS message (a UDP payload of len bytes). DNS_LEARNED: out holds a question
 * and at least one address. DNS_IGNORED: well formed, nothing to learn (a query, an error
 * rcode, no addresses, a name we do not match on). DNS_MALFORMED: truncated or
 * inconsistent (bad counts, label lengths, compression pointers). */
int dns_parse_response(const uint8_t *msg, size_t len, struct dns_answer *out);

/* Does name (lower case, dotted) match pattern: an exact name, or "*.suffix", which
 * matches names below suffix at any depth but not suffix itself. */
int dns_name_matches(const char *pattern, const char *name);

/* ---- the learned-address table (net_dns_table.c) ---- */

struct dns_entry;

struct dns_table {
    pthread_mutex_t lock;   /* learning (rx) and lookups (tx) may run on different threads */
    size_t cap, count;
    uint32_t ttl_min, ttl_max; /* seconds */
    int64_t manual_now_ms;  /* >= 0: a clock tests drive; -1: CLOCK_MONOTONIC */
    uint64_t tick;          /* a use counter: the least recently used entry is evicted */
    size_t nbuckets;        /* a power of two */
    int32_t *buckets;       /* entry index chains by hash of (domain, family, addr), -1 ends */
    uint32_t *addr_refs;    /* entries per slot of the address's own hash */
    struct dns_entry *entries;
    int32_t free_head;
    uint64_t evicted, expired;
};

int dns_table_init(struct dns_table *t, size_t cap);
void dns_table_destroy(struct dns_table *t);
/* New limits: the table is emptied. -1 on a bad value. */
int dns_table_configure(struct dns_table *t, size_t cap, uint32_t ttl_min, uint32_t ttl_max);
int64_t dns_table_now(struct dns_table *t);
/* Records addr for domain pattern number `domain` (lock held by the caller). */
void dns_table_learn(struct dns_table *t, uint32_t domain, const struct dns_addr *a, int64_t now);
/* 0: no domain has learned addr (so dns_table_has is 0 for every domain); else maybe. */
int dns_table_may_have(struct dns_table *t, uint8_t family, const uint8_t *addr);
/* Is addr learned (and not expired) for `domain`? A hit marks the entry used and keeps it
 * for at least ttl_min more seconds (lock held by the caller). */
int dns_table_has(struct dns_table *t, uint32_t domain, uint8_t family, const uint8_t *addr, int64_t now);
/* Drops expired entries; returns how many are left (lock held by the caller). */
size_t dns_table_sweep(struct dns_table *t, int64_t now);

#endif
