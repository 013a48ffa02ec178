/* DNS responses as the egress policy reads them to learn which addresses a domain rule's
 * names resolve to (RFC 1035 4.1). The guest cannot forge these (they arrive from passt,
 * on the receive path), but passt relays whatever the upstream server sent, so every byte
 * is hostile: each read is checked against the message's length, a name's labels are at
 * most 63 bytes and the whole name at most 255 on the wire, compression pointers must
 * point backwards (so they cannot loop) and at most DNS_MAX_JUMPS of them are followed,
 * and the question and answer counts must fit the bytes present. A message that breaks
 * any of this teaches us nothing; the caller still delivers it to the guest.
 *
 * CNAMEs: an answer for www.example.org may be a CNAME to a CDN's name followed by the
 * CDN name's A records. Those addresses are what the question's name resolves to, so they
 * are learned under the question's name (the guest connects to them believing it talks to
 * www.example.org). Only records on the chain that starts at the question count: an
 * A record for an unrelated owner name in the same answer is ignored. */
#include <string.h>

#include "net_dns.h"

#define DNS_HDR 12
#define DNS_MAX_JUMPS 16     /* compression pointers followed in one name */
#define DNS_MAX_CHAIN 8      /* CNAME hops followed from the question */
#define DNS_MAX_CNAMES 16    /* CNAME records considered in one answer */
#define DNS_MAX_ADDR_RRS 64  /* A/AAAA records considered in one answer */
#define T_A 1
#define T_CNAME 5
#define T_AAAA 28
#define C_IN 1

static uint16_t rd16(const uint8_t *p) { return (uint16_t)(p[0] << 8 | p[1]); }
static uint32_t rd32(const uint8_t *p) { return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3]; }

/* Reads the (possibly compressed) name at *off into out (lower case, dotted, no trailing
 * dot, "" for the root) and moves *off past its bytes in place. *matchable is cleared when
 * a label holds a byte outside [a-z0-9_-] after lower-casing: such a name can't equal a
 * rule's name, and a '.' or NUL inside a label must not let it pose as one. */
static int read_name(const uint8_t *msg, size_t len, size_t *off, char *out, int *matchable)
{
    size_t pos = *off, wire = 1, o = 0; /* wire: the root's zero byte counted up front */
    int jumps = 0, jumped = 0;
    *matchable = 1;
    for (;;) {
        if (pos >= len)
            return -1;
        uint8_t l = msg[pos];
        if ((l & 0xc0) == 0xc0) {
            if (pos + 1 >= len || ++jumps > DNS_MAX_JUMPS)
                return -1;
            size_t target = (size_t)(l & 0x3f) << 8 | msg[pos + 1];
            if (target >= pos) /* forward or self: the only way to loop */
                return -1;
            if (!jumped)
                *off = pos + 2;
            jumped = 1;
            pos = target;
            continue;
        }
        if (l & 0xc0)
            return -1; /* 0x40, 0x80: extended label types, obsolete */
        if (l == 0) {
            if (!jumped)
                *off = pos + 1;
            out[o] = 0;
            return 0;
        }
        wire += 1u + l;
        if (wire > 255 || pos + 1 + l > len)
            return -1;
        if (o) /* wire <= 255 keeps the text within DNS_NAME_MAX */
            out[o++] = '.';
        for (size_t i = 0; i < l; i++) {
            uint8_t c = msg[pos + 1 + i];
            if (c >= 'A' && c <= 'Z')
                c = (uint8_t)(c - 'A' + 'a');
            if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '_')) {
                *matchable = 0;
                c = '?';
            }
            out[o++] = (char)c;
        }
        pos += 1u + l;
    }
}

int dns_name_matches(const char *pattern, const char *name)
{
    if (pattern[0] == '*' && pattern[1] == '.') {
        size_t pl = strlen(pattern + 1), nl = strlen(name); /* ".suffix" */
        return nl > pl && strcmp(name + nl - pl, pattern + 1) == 0;
    }
    return strcmp(pattern, name) == 0;
}

struct rr_cname { char owner[DNS_NAME_MAX + 1], target[DNS_NAME_MAX + 1]; };
struct rr_addr { char owner[DNS_NAME_MAX + 1]; struct dns_addr a; };

struct answer_rrs {
    size_t ncnames, naddrs;
    struct rr_cname cnames[DNS_MAX_CNAMES];
    struct rr_addr addrs[DNS_MAX_ADDR_RRS];
};

/* One resource record at *off: checked whole; a CNAME, A or AAAA of class IN is kept. */
static int read_rr(const uint8_t *msg, size_t len, size_t *off, struct answer_rrs *rrs)
{
    char owner[DNS_NAME_MAX + 1];
    int owner_ok, target_ok;
    if (read_name(msg, len, off, owner, &owner_ok) < 0 || len - *off < 10)
        return -1;
    const uint8_t *p = msg + *off;
    uint16_t type = rd16(p), class = rd16(p + 2), rdlen = rd16(p + 8);
    uint32_t ttl = rd32(p + 4);
    size_t rdata = *off + 10;
    if (rdlen > len - rdata)
        return -1;
    *off = rdata + rdlen;
    if (class != C_IN || !owner_ok)
        return 0;
    if (type == T_A || type == T_AAAA) {
        size_t alen = type == T_A ? 4 : 16;
        if (rdlen != alen)
            return -1;
        if (rrs->naddrs == DNS_MAX_ADDR_RRS)
            return 0;
        struct rr_addr *r = &rrs->addrs[rrs->naddrs++];
        memcpy(r->owner, owner, sizeof(owner));
        memset(&r->a, 0, sizeof(r->a));
        r->a.family = type == T_A ? 4 : 6;
        memcpy(r->a.addr, msg + rdata, alen);
        r->a.ttl = ttl & 0x80000000u ? 0 : ttl; /* RFC 2181 8: a set top bit means 0 */
    } else if (type == T_CNAME) {
        size_t t = rdata;
        char target[DNS_NAME_MAX + 1];
        if (read_name(msg, len, &t, target, &target_ok) < 0 || t != rdata + rdlen)
            return -1;
        if (!target_ok || rrs->ncnames == DNS_MAX_CNAMES)
            return 0;
        struct rr_cname *c = &rrs->cnames[rrs->ncnames++];
        memcpy(c->owner, owner, sizeof(owner));
        memcpy(c->target, target, sizeof(target));
    }
    return 0;
}

static int in_chain(char chain[][DNS_NAME_MAX + 1], size_t n, const char *name)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(chain[i], name) == 0)
            return 1;
    return 0;
}

int dns_parse_response(const uint8_t *msg, size_t len, struct dns_answer *out)
{
    out->qname[0] = 0;
    out->naddrs = 0;
    if (!msg || len < DNS_HDR)
        return DNS_MALFORMED;
    uint16_t flags = rd16(msg + 2), qd = rd16(msg + 4), an = rd16(msg + 6);
    /* The smallest question is 5 bytes (root name, type, class), the smallest record 11:
     * counts the message cannot hold are a lie, whatever else it says. */
    if ((size_t)qd * 5 + (size_t)an * 11 > len - DNS_HDR)
        return DNS_MALFORMED;
    if (!(flags & 0x8000) || (flags >> 11 & 15) != 0 || (flags & 15) != 0 || qd != 1)
        return DNS_IGNORED; /* a query, not opcode QUERY, an error rcode, or no one question */
    size_t off = DNS_HDR;
    int q_ok;
    if (read_name(msg, len, &off, out->qname, &q_ok) < 0 || len - off < 4)
        return DNS_MALFORMED;
    off += 4; /* qtype, qclass: any; only the answer's records matter */
    struct answer_rrs rrs; /* ~24 KiB of stack, only while a response is parsed */
    rrs.ncnames = rrs.naddrs = 0;
    for (unsigned i = 0; i < an; i++)
        if (read_rr(msg, len, &off, &rrs) < 0)
            return DNS_MALFORMED;
    if (!q_ok || !out->qname[0])
        return DNS_IGNORED;
    /* The question's chain: its name, then each CNAME target reached from a name on it. */
    char chain[DNS_MAX_CHAIN + 1][DNS_NAME_MAX + 1];
    size_t nchain = 1;
    memcpy(chain[0], out->qname, sizeof(out->qname));
    for (int grew = 1; grew && nchain <= DNS_MAX_CHAIN;) {
        grew = 0;
        for (size_t i = 0; i < rrs.ncnames && nchain <= DNS_MAX_CHAIN; i++) {
            struct rr_cname *c = &rrs.cnames[i];
            if (in_chain(chain, nchain, c->owner) && !in_chain(chain, nchain, c->target)) {
                memcpy(chain[nchain++], c->target, sizeof(c->target));
                grew = 1;
            }
        }
    }
    for (size_t i = 0; i < rrs.naddrs && out->naddrs < DNS_MAX_ADDRS; i++)
        if (in_chain(chain, nchain, rrs.addrs[i].owner))
            out->addrs[out->naddrs++] = rrs.addrs[i].a;
    return out->naddrs ? DNS_LEARNED : DNS_IGNORED;
}
