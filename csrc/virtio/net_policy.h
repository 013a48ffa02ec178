/* The egress policy of virtio-net's transmit path (net_policy.c): an ordered rule table,
 * first match wins, anything unmatched is denied. The Python-visible API (struct
 * vmm_net_rule, vmm_net_policy_*) is declared in core_api.h; this header is what the
 * device includes, and names the sizes it needs. */
#ifndef VMM_NET_POLICY_H
#define VMM_NET_POLICY_H

#include "core_api.h"

/* Room for the largest reply the policy builds: Ethernet + 802.1Q + IPv6 + TCP. */
#define NET_POLICY_REPLY_MAX 96u

#endif
