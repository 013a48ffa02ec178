/* Egress policy for frames the guest transmits: parse Ethernet (at most one 802.1Q tag),
 * IPv4 or IPv6 and the TCP/UDP destination port, then walk the rule table; first match
 * wins, no match is a denial. Guest frames are hostile input: every read is checked
 * against the bytes present (and, for IP, against the header's own length), and a frame
 * whose headers are truncated or inconsistent is dropped and counted, never guessed at.
 *
 * What passes without rules is what a guest needs to bring its link up: ARP, DHCP
 * (UDP 68 -> 67), DHCPv6 (UDP 546 -> 547) and ICMPv6 neighbour discovery (types 133-136,
 * hop limit 255).
 *
 * Fragments: a non-first fragment carries no ports. It is decided by its addresses and
 * protocol alone, and if the first rule whose address and protocol match it restricts
 * ports, it is denied (that rule cannot be evaluated). A first fragment must carry the
 * whole TCP/UDP header, and an IPv4 fragment at offset 8 bytes on TCP (which could rewrite
 * the flags of the first, RFC 1858) is malformed.
 *
 * A denied TCP segment (other than an RST) gets an RST back, built here, so the guest's
 * connect fails at once instead of timing out.
 *
 * Domain rules (`allow@*.npmjs.org`) have no addresses of their own: the device shows us
 * what the backend sends the guest (vmm_net_policy_observe), we parse DNS responses from
 * the configured resolvers (net_dns.c) and record the addresses a matching question
 * resolved to (net_dns_table.c). On transmit a domain rule then matches a destination
 * learned for its name, at its own place in the order, with its own protocol/port filter
 * and hit counter, exactly as a CIDR rule would.
 *
 * Replies on published ports: the same hook records the flows a remote side opens to a
 * published guest port (net_flows.c), and the guest's frames on such a flow's reversed
 * tuple pass before the rules are asked (passt presents a host client as the gateway,
 * which scope public denies). */
#include <stdlib.h>
#include <stdio.h>
#include <string.h>

#include "net_dns.h"
#include "net_flows.h"
#include "net_policy.h"

#define MAX_RULES 4096
#define DNS_DEFAULT_ENTRIES 4096
#define MAX_EXT_HEADERS 8 /* IPv6 extension headers walked before we give up */

#define ETH_ARP 0x0806
#define ETH_IP4 0x0800
#define ETH_IP6 0x86dd
#define ETH_VLAN 0x8100
#define ETH_QINQ 0x88a8
#define P_TCP 6
#define P_UDP 17
#define P_ICMP6 58
#define TCP_FIN 0x01
#define TCP_SYN 0x02
#define TCP_RST 0x04
#define TCP_ACK 0x10

struct net_policy_rule {
    struct vmm_net_rule r;  /* r.domain is not kept: see domain */
    int32_t domain;         /* index into domains[] for a domain rule, -1 for a CIDR rule */
    uint64_t hits;
};

struct vmm_net_policy {
    size_t n;
    struct vmm_net_policy_stats st;
    size_t ndomains;        /* distinct names of the domain rules, each learned once */
    char **domains;
    struct dns_table dns;   /* its lock: learning (rx) vs matching (tx) */
    struct flow_table flows;/* inbound flows to published ports, its own lock */
    size_t nres;
    uint8_t res_family[VMM_NET_MAX_RESOLVERS];
    uint8_t res_addr[VMM_NET_MAX_RESOLVERS][16];
    struct net_policy_rule rules[];
};

/* A rule's name as the parser writes names: LDH labels of 1..63 bytes, lower case, no
 * trailing dot, at most 253 bytes; "*." before it for a wildcard. (vmm/net/policy.py says
 * the same in words a user reads; this only keeps the C table sane.) */
static int domain_ok(const char *d)
{
    if (d[0] == '*' && d[1] == '.')
        d += 2;
    size_t n = strnlen(d, DNS_NAME_MAX + 1), label = 0;
    if (n == 0 || n > DNS_NAME_MAX)
        return 0;
    for (size_t i = 0; i <= n; i++) {
        char c = d[i];
        if (c == '.' || c == 0) {
            if (label == 0 || label > 63)
                return 0;
            label = 0;
        } else if ((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '_') {
            label++;
        } else {
            return 0;
        }
    }
    return 1;
}

static void policy_free(struct vmm_net_policy *p)
{
    for (size_t i = 0; i < p->ndomains; i++)
        free(p->domains[i]);
    free(p->domains);
    dns_table_destroy(&p->dns);
    flows_destroy(&p->flows);
    free(p);
}

/* What the parser learned of a frame: enough to match rules and to answer a TCP segment. */
struct pkt {
    const uint8_t *eth;      /* the frame */
    size_t l2len;            /* Ethernet header incl. the tag */
    int family;              /* 4 or 6 */
    const uint8_t *src, *dst;/* addresses inside the frame */
    uint8_t proto;           /* upper-layer protocol */
    uint8_t hop_limit;       /* IPv6 */
    int has_ports;           /* 0 for a non-first fragment */
    uint16_t sport, dport;
    const uint8_t *l4;       /* TCP header (has_ports and proto TCP) */
    size_t l4len;            /* bytes of the IP payload from l4 on */
};

#define bump(field) __atomic_fetch_add(&(field), 1, __ATOMIC_RELAXED)

static uint16_t be16(const uint8_t *p) { return (uint16_t)(p[0] << 8 | p[1]); }
static uint32_t be32(const uint8_t *p) { return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3]; }
static void put16(uint8_t *p, uint16_t v) { p[0] = (uint8_t)(v >> 8); p[1] = (uint8_t)v; }
static void put32(uint8_t *p, uint32_t v) { put16(p, (uint16_t)(v >> 16)); put16(p + 2, (uint16_t)v); }

struct vmm_net_policy *vmm_net_policy_new(const struct vmm_net_rule *rules, size_t nrules,
                                          char *err, size_t errlen)
{
    if (nrules > MAX_RULES) {
        snprintf(err, errlen, "%zu policy rules; at most %d", nrules, MAX_RULES);
        return NULL;
    }
    for (size_t i = 0; i < nrules; i++) {
        const struct vmm_net_rule *r = &rules[i];
        const char *bad = r->action > VMM_NET_ALLOW ? "action"
                        : r->domain && !domain_ok(r->domain) ? "domain"
                        : !r->domain && r->family != 4 && r->family != 6 ? "family"
                        : !r->domain && r->prefix > (r->family == 4 ? 32 : 128) ? "prefix"
                        : r->proto != 0 && r->proto != P_TCP && r->proto != P_UDP ? "protocol"
                        : r->port_lo > r->port_hi ? "port range" : NULL;
        if (bad) {
            snprintf(err, errlen, "policy rule %zu has a bad %s", i, bad);
            return NULL;
        }
    }
    struct vmm_net_policy *p = calloc(1, sizeof(*p) + nrules * sizeof(p->rules[0]));
    if (!p) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    size_t ndomain_rules = 0;
    for (size_t i = 0; i < nrules; i++)
        ndomain_rules += rules[i].domain != NULL;
    if (flows_init(&p->flows) < 0) {
        free(p);
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    if (dns_table_init(&p->dns, ndomain_rules ? DNS_DEFAULT_ENTRIES : 1) < 0) {
        flows_destroy(&p->flows);
        free(p);
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    p->domains = calloc(ndomain_rules ? ndomain_rules : 1, sizeof(char *));
    if (!p->domains)
        goto oom;
    p->n = nrules;
    for (size_t i = 0; i < nrules; i++) {
        p->rules[i].r = rules[i];
        p->rules[i].r.domain = NULL;
        p->rules[i].domain = -1;
        if (!rules[i].domain)
            continue;
        size_t d = 0;
        while (d < p->ndomains && strcmp(p->domains[d], rules[i].domain) != 0)
            d++;
        if (d == p->ndomains) {
            if (!(p->domains[d] = strdup(rules[i].domain)))
                goto oom;
            p->ndomains++;
        }
        p->rules[i].domain = (int32_t)d;
    }
    return p;
oom:
    policy_free(p);
    snprintf(err, errlen, "out of memory");
    return NULL;
}

void vmm_net_policy_free(struct vmm_net_policy *p)
{
    if (p)
        policy_free(p);
}

int vmm_net_policy_set_dns(struct vmm_net_policy *p, const struct vmm_net_dns_config *cfg,
                           char *err, size_t errlen)
{
    if (cfg->nresolvers > VMM_NET_MAX_RESOLVERS) {
        snprintf(err, errlen, "%u DNS resolvers; at most %d", cfg->nresolvers, VMM_NET_MAX_RESOLVERS);
        return -1;
    }
    for (size_t i = 0; i < cfg->nresolvers; i++)
        if (cfg->family[i] != 4 && cfg->family[i] != 6) {
            snprintf(err, errlen, "DNS resolver %zu has a bad family", i);
            return -1;
        }
    uint32_t cap = cfg->max_entries ? cfg->max_entries : DNS_DEFAULT_ENTRIES;
    uint32_t lo = cfg->ttl_min, hi = cfg->ttl_max;
    if (!lo && !hi) {
        lo = 30;
        hi = 3600;
    }
    pthread_mutex_lock(&p->dns.lock);
    int rc = dns_table_configure(&p->dns, p->ndomains ? cap : 1, lo, hi);
    if (rc == 0) {
        p->nres = cfg->nresolvers;
        memcpy(p->res_family, cfg->family, sizeof(p->res_family));
        memcpy(p->res_addr, cfg->addr, sizeof(p->res_addr));
    }
    pthread_mutex_unlock(&p->dns.lock);
    if (rc < 0)
        snprintf(err, errlen, "bad DNS table limits: %u entries (1..1048576), TTL %u..%u s "
                 "(min <= max <= 604800), or out of memory", cap, lo, hi);
    return rc;
}

int vmm_net_policy_set_inbound(struct vmm_net_policy *p, const struct vmm_net_inbound_port *ports,
                               size_t nports, uint32_t max_flows, char *err, size_t errlen)
{
    return flows_configure(&p->flows, ports, nports, max_flows, err, errlen);
}

void vmm_net_policy_set_clock(struct vmm_net_policy *p, int64_t now_ms)
{
    pthread_mutex_lock(&p->dns.lock);
    p->dns.manual_now_ms = now_ms < 0 ? -1 : now_ms;
    pthread_mutex_unlock(&p->dns.lock);
    flows_set_clock(&p->flows, now_ms);
}

void vmm_net_policy_stats(struct vmm_net_policy *p, struct vmm_net_policy_stats *out)
{
    uint64_t *dst = (uint64_t *)out, *src = (uint64_t *)&p->st;
    for (size_t i = 0; i < sizeof(*out) / sizeof(uint64_t); i++)
        dst[i] = __atomic_load_n(&src[i], __ATOMIC_RELAXED);
    pthread_mutex_lock(&p->dns.lock);
    out->dns_evicted = p->dns.evicted;
    out->dns_expired = p->dns.expired;
    out->dns_entries = p->dns.count;
    pthread_mutex_unlock(&p->dns.lock);
    flows_stats(&p->flows, out);
}

size_t vmm_net_policy_hits(struct vmm_net_policy *p, uint64_t *hits, size_t n)
{
    for (size_t i = 0; i < n && i < p->n; i++)
        hits[i] = __atomic_load_n(&p->rules[i].hits, __ATOMIC_RELAXED);
    return p->n;
}

/* ---- parsing: each returns 0, or -1 for a malformed frame ---- */

/* The transport header at l4 (len bytes of IP payload): the ports, and for TCP its header. */
static int parse_l4(struct pkt *k, const uint8_t *l4, size_t len)
{
    k->l4 = l4;
    k->l4len = len;
    if (k->proto == P_TCP) {
        if (len < 20 || (size_t)(l4[12] >> 4) * 4 < 20 || (size_t)(l4[12] >> 4) * 4 > len)
            return -1;
    } else if (k->proto == P_UDP) {
        if (len < 8)
            return -1;
    } else if (k->proto == P_ICMP6) {
        if (len < 4)
            return -1;
        return 0;
    } else {
        return 0;
    }
    k->has_ports = 1;
    k->sport = be16(l4);
    k->dport = be16(l4 + 2);
    return 0;
}

static int parse_ip4(struct pkt *k, const uint8_t *ip, size_t len)
{
    if (len < 20 || ip[0] >> 4 != 4)
        return -1;
    size_t ihl = (size_t)(ip[0] & 15) * 4, total = be16(ip + 2);
    if (ihl < 20 || total < ihl || total > len)
        return -1; /* bytes beyond total are Ethernet padding */
    /* Options: only checked for consistency, and source routes refused (they would send
     * the packet somewhere other than the destination we judge). */
    for (size_t o = 20; o < ihl;) {
        uint8_t t = ip[o];
        if (t == 0)
            break;
        if (t == 1) {
            o++;
            continue;
        }
        if (o + 1 >= ihl || ip[o + 1] < 2 || o + ip[o + 1] > ihl)
            return -1;
        if (t == 131 || t == 137) /* LSRR, SSRR */
            return -1;
        o += ip[o + 1];
    }
    k->family = 4;
    k->src = ip + 12;
    k->dst = ip + 16;
    k->proto = ip[9];
    uint16_t frag = be16(ip + 6);
    if (frag & 0x8000)
        return -1; /* the reserved bit */
    uint16_t off = frag & 0x1fff;
    if (off != 0) {
        if (off == 1 && k->proto == P_TCP)
            return -1;
        return 0; /* non-first fragment: no ports */
    }
    return parse_l4(k, ip + ihl, total - ihl);
}

static int parse_ip6(struct pkt *k, const uint8_t *ip, size_t len)
{
    if (len < 40 || ip[0] >> 4 != 6)
        return -1;
    size_t plen = be16(ip + 4);
    if (40 + plen > len)
        return -1; /* (jumbograms have payload length 0 and never fit our MTU) */
    k->family = 6;
    k->hop_limit = ip[7];
    k->src = ip + 8;
    k->dst = ip + 24;
    uint8_t nh = ip[6];
    const uint8_t *p = ip + 40;
    size_t left = plen;
    for (int i = 0;; i++) {
        switch (nh) {
        case 0:  /* hop-by-hop */
        case 60: /* destination options */
        case 43: /* routing */
        case 51: { /* AH: length in 4-byte units, the others in 8-byte units */
            if (i >= MAX_EXT_HEADERS || left < 8)
                return -1;
            size_t hl = nh == 51 ? ((size_t)p[1] + 2) * 4 : ((size_t)p[1] + 1) * 8;
            if (hl > left)
                return -1;
            if (nh == 43 && p[3] != 0)
                return -1; /* segments left: the packet would go on to another address */
            nh = p[0];
            p += hl;
            left -= hl;
            continue;
        }
        case 44: { /* fragment */
            if (i >= MAX_EXT_HEADERS || left < 8)
                return -1;
            uint16_t off = be16(p + 2) >> 3;
            nh = p[0];
            p += 8;
            left -= 8;
            if (off != 0) {
                k->proto = nh;
                return 0; /* non-first fragment: no ports */
            }
            continue;
        }
        default:
            k->proto = nh; /* 59 (no next header), ESP and the rest: no ports */
            return parse_l4(k, p, left);
        }
    }
}

static int parse(struct pkt *k, const uint8_t *f, size_t len, uint16_t *ethertype)
{
    memset(k, 0, sizeof(*k));
    k->eth = f;
    if (len < 14)
        return -1;
    size_t l2 = 14;
    uint16_t et = be16(f + 12);
    if (et == ETH_VLAN || et == ETH_QINQ) {
        if (len < 18)
            return -1;
        et = be16(f + 16);
        l2 = 18;
        if (et == ETH_VLAN || et == ETH_QINQ)
            return -1; /* one tag at most */
    }
    k->l2len = l2;
    *ethertype = et;
    if (et == ETH_IP4)
        return parse_ip4(k, f + l2, len - l2);
    if (et == ETH_IP6)
        return parse_ip6(k, f + l2, len - l2);
    return 0;
}

/* ---- the decision ---- */

static int infrastructure(const struct pkt *k)
{
    if (k->proto == P_UDP && k->has_ports)
        return (k->family == 4 && k->sport == 68 && k->dport == 67) ||
               (k->family == 6 && k->sport == 546 && k->dport == 547);
    /* ND is link-local by construction: receivers drop it unless the hop limit is 255
     * (RFC 4861), so anything else is not ND and goes to the rules. */
    if (k->family == 6 && k->proto == P_ICMP6 && k->l4 && k->hop_limit == 255)
        return k->l4[0] >= 133 && k->l4[0] <= 136;
    return 0;
}

static int addr_in(const struct vmm_net_rule *r, const struct pkt *k)
{
    if (r->family != k->family)
        return 0;
    unsigned bits = r->prefix, whole = bits / 8, rest = bits % 8;
    if (memcmp(r->addr, k->dst, whole) != 0)
        return 0;
    if (rest == 0)
        return 1;
    uint8_t mask = (uint8_t)(0xff << (8 - rest));
    return ((r->addr[whole] ^ k->dst[whole]) & mask) == 0;
}

/* The first rule that decides k: its index, -1 when none matches, -2 when the first
 * candidate needs ports that k (a non-first fragment) does not carry. With domain rules
 * the caller holds p->dns.lock and passes the time. */
static long match(struct vmm_net_policy *p, const struct pkt *k, int64_t now)
{
    int learned = p->ndomains && dns_table_may_have(&p->dns, (uint8_t)k->family, k->dst);
    for (size_t i = 0; i < p->n; i++) {
        const struct vmm_net_rule *r = &p->rules[i].r;
        if (r->proto && r->proto != k->proto)
            continue;
        int32_t d = p->rules[i].domain;
        if (d >= 0 ? !learned || !dns_table_has(&p->dns, (uint32_t)d, (uint8_t)k->family, k->dst, now)
                   : !addr_in(r, k))
            continue;
        if (r->proto && !(r->port_lo == 0 && r->port_hi == 65535)) {
            if (!k->has_ports)
                return -2;
            if (k->dport < r->port_lo || k->dport > r->port_hi)
                continue;
        }
        return (long)i;
    }
    return -1;
}

/* Internet checksum of a pseudo-header sum plus data, folded and complemented. */
static uint16_t csum(uint32_t sum, const uint8_t *d, size_t n)
{
    for (size_t i = 0; i + 1 < n; i += 2)
        sum += be16(d + i);
    if (n & 1)
        sum += (uint32_t)d[n - 1] << 8;
    while (sum >> 16)
        sum = (sum & 0xffff) + (sum >> 16);
    return (uint16_t)~sum;
}

/* An RST for the denied TCP segment k, as the peer would send it (RFC 9293 3.10.7.1):
 * to a segment with ACK, seq = its ack; else ack = its seq + its length (of a first
 * fragment, only the bytes it carries: the guest then ignores the RST and times out,
 * which for a fragmented SYN, something no stack sends, is acceptable). Returns bytes. */
static size_t build_rst(const struct pkt *k, uint8_t *out, size_t cap)
{
    size_t iplen = k->family == 4 ? 20 : 40, n = k->l2len + iplen + 20;
    if (!out || cap < n)
        return 0;
    const uint8_t *t = k->l4;
    uint8_t flags = t[13];
    memset(out, 0, n);
    memcpy(out, k->eth + 6, 6); /* back to the sender, from the MAC it addressed */
    memcpy(out + 6, k->eth, 6);
    memcpy(out + 12, k->eth + 12, k->l2len - 12); /* the tag, if any, and the ethertype */
    uint8_t *ip = out + k->l2len, *tcp = ip + iplen;
    size_t alen = k->family == 4 ? 4 : 16;
    uint32_t sum = 0;
    if (k->family == 4) {
        ip[0] = 0x45;
        put16(ip + 2, 40);
        ip[6] = 0x40; /* DF */
        ip[8] = 64;
        ip[9] = P_TCP;
        memcpy(ip + 12, k->dst, 4);
        memcpy(ip + 16, k->src, 4);
        put16(ip + 10, csum(0, ip, 20));
    } else {
        ip[0] = 0x60;
        put16(ip + 4, 20);
        ip[6] = P_TCP;
        ip[7] = 64;
        memcpy(ip + 8, k->dst, 16);
        memcpy(ip + 24, k->src, 16);
    }
    for (size_t i = 0; i < 2 * alen; i += 2)
        sum += be16(ip + (k->family == 4 ? 12 : 8) + i);
    sum += P_TCP + 20;
    put16(tcp, k->dport);
    put16(tcp + 2, k->sport);
    if (flags & TCP_ACK) {
        memcpy(tcp + 4, t + 8, 4);
        tcp[13] = TCP_RST;
    } else {
        size_t dlen = k->l4len - (size_t)(t[12] >> 4) * 4;
        uint32_t seglen = (uint32_t)dlen + !!(flags & TCP_SYN) + !!(flags & TCP_FIN);
        put32(tcp + 8, be32(t + 4) + seglen);
        tcp[13] = TCP_RST | TCP_ACK;
    }
    tcp[12] = 5 << 4;
    put16(tcp + 16, csum(sum, tcp, 20));
    return n;
}

int vmm_net_policy_check(struct vmm_net_policy *p, const uint8_t *frame, size_t len,
                         uint8_t *reply, size_t *reply_len)
{
    size_t cap = reply_len ? *reply_len : 0;
    if (reply_len)
        *reply_len = 0;
    struct pkt k;
    uint16_t et = 0;
    if (!frame || parse(&k, frame, len, &et) < 0) {
        bump(p->st.malformed);
        return VMM_NET_MALFORMED;
    }
    if (et == ETH_ARP || (k.family && infrastructure(&k))) {
        bump(p->st.infra);
        return VMM_NET_PASS;
    }
    if (!k.family) { /* nothing a guest on our link needs, and nothing rules can judge */
        bump(p->st.denied);
        bump(p->st.other_ethertype);
        return VMM_NET_DENIED;
    }
    if (k.has_ports && flows_published(&p->flows, k.proto, k.sport)) {
        struct flow_tuple t = { (uint8_t)k.family, k.proto, k.dport, k.sport, k.dst, k.src };
        if (flows_tx_reply(&p->flows, &t, k.proto == P_TCP ? k.l4[13] : 0)) {
            bump(p->st.replies);
            return VMM_NET_PASS;
        }
    }
    long i;
    if (p->ndomains) {
        pthread_mutex_lock(&p->dns.lock);
        i = match(p, &k, dns_table_now(&p->dns));
        pthread_mutex_unlock(&p->dns.lock);
    } else {
        i = match(p, &k, 0);
    }
    if (i >= 0)
        bump(p->rules[i].hits);
    if (i >= 0 && p->rules[i].r.action == VMM_NET_ALLOW) {
        bump(p->st.passed);
        return VMM_NET_PASS;
    }
    bump(p->st.denied);
    if (i == -1)
        bump(p->st.default_denied);
    if (i == -2)
        bump(p->st.port_unknown);
    if (k.proto == P_TCP && k.has_ports && !(k.l4[13] & TCP_RST)) {
        size_t n = build_rst(&k, reply, cap);
        if (n) {
            bump(p->st.resets);
            if (reply_len)
                *reply_len = n;
        }
    }
    return VMM_NET_DENIED;
}

/* ---- learning from DNS (receive path) ---- */

static int from_resolver(const struct vmm_net_policy *p, const struct pkt *k)
{
    for (size_t i = 0; i < p->nres; i++)
        if (p->res_family[i] == k->family && memcmp(p->res_addr[i], k->src, k->family == 4 ? 4 : 16) == 0)
            return 1;
    return 0;
}

int vmm_net_policy_observe(struct vmm_net_policy *p, const uint8_t *frame, size_t len)
{
    struct pkt k;
    uint16_t et;
    int dns = p && p->ndomains && p->nres;
    if (!p || !frame || (!dns && !p->flows.enabled) || parse(&k, frame, len, &et) < 0 || !k.family)
        return 0; /* a frame parse() rejects opens no flow and is no DNS answer we could read */
    if (k.has_ports && flows_published(&p->flows, k.proto, k.dport)) {
        struct flow_tuple t = { (uint8_t)k.family, k.proto, k.sport, k.dport, k.src, k.dst };
        flows_rx(&p->flows, &t, k.proto == P_TCP ? k.l4[13] : 0);
    }
    /* DNS: only UDP (TCP DNS is not followed: a name the guest resolves over TCP teaches
     * us nothing). */
    if (!dns || k.proto != P_UDP || !k.has_ports || k.sport != 53 || !from_resolver(p, &k))
        return 0;
    bump(p->st.dns_answers);
    size_t ulen = be16(k.l4 + 4);
    struct dns_answer a;
    int rc = ulen < 8 || ulen > k.l4len ? DNS_MALFORMED /* a first fragment lands here too */
           : dns_parse_response(k.l4 + 8, ulen - 8, &a);
    if (rc == DNS_MALFORMED) {
        bump(p->st.dns_malformed);
        return -1;
    }
    if (rc != DNS_LEARNED)
        return 0;
    int learned = 0;
    pthread_mutex_lock(&p->dns.lock);
    int64_t now = dns_table_now(&p->dns);
    for (size_t d = 0; d < p->ndomains; d++) {
        if (!dns_name_matches(p->domains[d], a.qname))
            continue;
        for (size_t i = 0; i < a.naddrs; i++, learned++)
            dns_table_learn(&p->dns, (uint32_t)d, &a.addrs[i], now);
    }
    pthread_mutex_unlock(&p->dns.lock);
    __atomic_fetch_add(&p->st.dns_learned, (uint64_t)learned, __ATOMIC_RELAXED);
    return learned;
}
