/* Connection tracking of inbound flows for the egress policy (net_flows.c).
 *
 * A published port is reached from outside: passt hands the guest a TCP SYN or a UDP
 * datagram from a remote address (for a client on the host's loopback, the gateway), and
 * the guest's answers go back to that address, which the scope may deny (scope public
 * denies the gateway). The policy records such a flow when it sees the remote side open it
 * on the receive path, and lets the guest's frames on exactly that flow's reversed tuple
 * through on the transmit path, whatever the rules say. Only the remote side opens a flow;
 * the guest cannot: nothing the guest sends adds an entry. */
#ifndef VMM_NET_FLOWS_H
#define VMM_NET_FLOWS_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#include "core_api.h"

#define FLOWS_DEFAULT_MAX 4096u
#define FLOWS_MAX 1048576u
#define FLOW_TCP_IDLE_MS (300 * 1000)   /* an established TCP flow nobody uses */
#define FLOW_TCP_CLOSING_MS (10 * 1000) /* after FIN both ways: room for the last ACKs */
#define FLOW_UDP_IDLE_MS (60 * 1000)

/* One frame's tuple, oriented as the flow is: remote = the side that opened it. */
struct flow_tuple {
    uint8_t family;             /* 4 or 6 */
    uint8_t proto;              /* 6 or 17 */
    uint16_t rport, gport;      /* remote port, guest port */
    const uint8_t *raddr, *gaddr;
};

struct flow;

struct flow_table {
    pthread_mutex_t lock;       /* rx (recording) and tx (matching) may be different threads */
    int64_t manual_now_ms;      /* >= 0: a clock tests drive; -1: CLOCK_MONOTONIC */
    size_t cap, count, nbuckets;
    int32_t *buckets;           /* chains by hash of the tuple, -1 ends */
    struct flow *entries;
    int32_t free_head;
    int32_t lru_head[2], lru_tail[2]; /* least recently used first: [0] flows the guest
                                       * has not answered, [1] those it has */
    int enabled;                /* some port is published: else nothing is looked at */
    uint32_t seed;              /* of the hash */
    uint8_t tcp_ports[8192], udp_ports[8192]; /* published guest ports, one bit each */
    uint64_t opened, closed, expired, evicted;
};

int flows_init(struct flow_table *t);
void flows_destroy(struct flow_table *t);
/* The guest ports remote sides may open flows to and the table's size (0: the default);
 * the table is emptied. Before the policy is in use: the port bitmaps are read without
 * the lock. -1 and err on a bad value. */
int flows_configure(struct flow_table *t, const struct vmm_net_inbound_port *ports, size_t n,
                    uint32_t cap, char *err, size_t errlen);
/* now_ms >= 0: the table's clock reads it from now on; -1: the monotonic clock again. */
void flows_set_clock(struct flow_table *t, int64_t now_ms);
/* The flows_* counters of out, and `flows` after dropping the expired ones. */
void flows_stats(struct flow_table *t, struct vmm_net_policy_stats *out);
/* Is guest port `port` of proto published? (No lock: what both paths ask first.) */
int flows_published(const struct flow_table *t, uint8_t proto, uint16_t port);
/* The receive path: a frame from the remote side (tcp_flags 0 for UDP). An inbound SYN
 * without ACK, or a UDP datagram, to a published port opens (or renews) a flow; other
 * segments of a known flow refresh it, a FIN is noted, an RST ends it. */
void flows_rx(struct flow_table *t, const struct flow_tuple *k, uint8_t tcp_flags);
/* The transmit path: is this guest frame (its tuple already reversed into the flow's
 * orientation) a reply on a tracked flow? A TCP SYN without ACK never is. A reply
 * refreshes the flow; a FIN is noted, an RST ends the flow after it has passed. */
int flows_tx_reply(struct flow_table *t, const struct flow_tuple *k, uint8_t tcp_flags);

#endif
