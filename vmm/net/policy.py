"""The egress policy of a sandbox's NIC: scope + ordered rules -> the table the C device
enforces on every frame the guest transmits (csrc/virtio/net_policy.c).

Rules are `allow|deny@CIDR[:tcp|udp[:PORT[-PORT]]]`; an IPv6 CIDR has colons of its own,
so it needs its `/prefix` (or brackets, `[2001:db8::1]:tcp:22`) for the rest to be told
apart. The caller's rules come first, in the order given; then what the scope says; the
first rule that matches a frame's destination decides, and a frame none matches is denied.

Domain rules, `allow|deny@DOMAIN[:tcp|udp[:PORT[-PORT]]]`: DOMAIN is a name
(`registry.npmjs.org`) or `*.suffix`, which matches every name below suffix at any depth
but not suffix itself (`*.npmjs.org` covers `registry.npmjs.org`, not `npmjs.org`: add
both if both are meant). Names are ASCII (an internationalised name is written in its
punycode form, `xn--...`), case-insensitive, with an optional trailing dot. The device
learns a domain rule's addresses from the DNS answers the guest's resolver (the `dns`
servers below) sends it over UDP: the A/AAAA records answering a question whose name
matches, including those at the end of a CNAME chain, are recorded under the question's
name for their TTL clamped to 30 s .. 1 h (kept while the guest uses them). A frame to
such an address is then judged by the domain rule at its place in the order. What they
cannot see: a name the guest resolves some other way (DNS over HTTPS or TLS, DNS over
TCP, its own resolver, /etc/hosts), a hard-coded address, or a name resolved before the
sandbox started; those frames are judged by the other rules.

Scopes (as microsandbox names them):
- `none`: no NIC at all (nothing here is compiled; `Policy.has_nic` is False);
- `public` (default): the internet only. Denied: the gateway (the host's own services,
  reached through it), loopback, RFC 1918, 100.64/10 (CGNAT), link-local (169.254/16,
  which holds the cloud metadata address 169.254.169.254), 0/8, multicast, 240/4 and the
  broadcast address; IPv6 ::, ::1, IPv4-mapped ::ffff:0:0/96, ULA fc00::/7, link-local
  fe80::/10, site-local fec0::/10, multicast ff00::/8;
- `private`: `public` plus RFC 1918, 100.64/10 and ULA; the gateway, loopback,
  link-local (so the metadata address) and multicast stay denied;
- `host`: `private` plus the gateway addresses (passt maps them to the host's loopback);
- `all`: every destination.
The DNS servers given (normally the gateway, where passt answers DNS) are allowed on
port 53 in every scope with a NIC, ahead of the scope's own denials: a caller's `deny`
rule still overrides them, unless the caller has an `allow@DOMAIN` rule, which cannot work
without DNS: then they come first. ARP, DHCP and IPv6 neighbour discovery pass in C without rules.

Replies on published ports pass whatever the scope and rules say: the device records each
flow a remote side opens to a published guest port (a TCP SYN, a UDP datagram; passt
presents a client on the host's loopback as the gateway, which `public` denies) and lets
the guest's frames on exactly that flow's reversed addresses and ports through
(csrc/virtio/net_flows.c). Only the remote side opens a flow: a guest's own SYN is never a
reply, whichever source port it binds. At most 4096 flows: when full, the least recently
used flow the guest has not answered goes first (a flood of SYNs pushes out its own kind,
not live conversations), then the least recently used one. TCP flows end on an RST, 10 s
after FIN both ways or after 5 min idle; UDP flows after 60 s idle.
"""
from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Iterable, Sequence

from ..errors import ConfigError
from .ports import PublishedPort

SCOPES = ("none", "public", "private", "host", "all")
DEFAULT_SCOPE = "public"
PROTOCOLS = {"tcp": 6, "udp": 17}
MAX_RULES = 4096  # the C table's limit (net_policy.c)
MAX_FLOWS = 4096  # inbound flows tracked by default (net_flows.c)

# Verdicts of `PolicyEngine.check` (enum vmm_net_verdict).
PASS, DENIED, MALFORMED = 0, 1, 2

_NEVER = (  # denied in every scope but `all`
    "0.0.0.0/8", "127.0.0.0/8", "169.254.0.0/16", "224.0.0.0/4", "240.0.0.0/4",
    "::/128", "::1/128", "::ffff:0:0/96", "fe80::/10", "fec0::/10", "ff00::/8",
)
_PRIVATE = ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "fc00::/7")
_ANY = ("0.0.0.0/0", "::/0")

_RULE = re.compile(r"^(allow|deny)@(.+)$")
_LABEL = re.compile(r"^[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?$")
MAX_NAME = 253  # a name's length in text form, without the trailing dot (RFC 1035)
_PORTS = re.compile(r"^(\d{1,5})(?:-(\d{1,5}))?$")


@dataclass(frozen=True)
class Rule:
    """One row of the table: frames to `network` (with `protocol`, to a destination
    port in ports) get `action`. `source` is the rule as written, or what added it."""
    action: str                       # "allow" | "deny"
    network: ipaddress.IPv4Network | ipaddress.IPv6Network | None
    protocol: str | None = None       # None = any transport
    ports: tuple[int, int] = (0, 65535)
    source: str = ""
    domain: str | None = None         # a domain rule's name or *.suffix (network None)

    def __str__(self):
        s = f"{self.action}@{self.domain or self.network}"
        if self.protocol:
            s += f":{self.protocol}"
            if self.ports != (0, 65535):
                lo, hi = self.ports
                s += f":{lo}" if lo == hi else f":{lo}-{hi}"
        return s


def _split_cidr(rest: str, text: str) -> tuple[str, str]:
    """The CIDR part of a rule's target and what follows it (":tcp:443" or "")."""
    if rest.startswith("["):
        end = rest.find("]")
        if end < 0:
            raise ConfigError(f"policy rule {text!r}: unclosed '[' in the address")
        cidr, tail = rest[1:end], rest[end + 1:]
        if tail.startswith("/"):
            m = re.match(r"/\d*", tail)
            cidr, tail = cidr + m.group(0), tail[m.end():]
        return cidr, tail
    if "/" in rest:
        slash = rest.index("/")
        m = re.match(r"\d*", rest[slash + 1:])
        end = slash + 1 + m.end()
        return rest[:end], rest[end:]
    if rest.count(":") > 2 or "::" in rest:
        raise ConfigError(f"policy rule {text!r}: an IPv6 address needs a /prefix or [brackets] "
                          "to be told apart from :protocol:port")
    head, sep, tail = rest.partition(":")
    return head, sep + tail


def _is_domain(rest: str) -> bool:
    """Whether a rule's target is a name rather than a CIDR: no brackets or slash, not an
    IPv6 address's colons, and a letter, '*' or non-ASCII before the first colon that
    does not make an IPv4 address."""
    head = rest.partition(":")[0]
    if rest.startswith("[") or "/" in rest or rest.count(":") > 2 or "::" in rest:
        return False
    return any(c.isalpha() or c == "*" or not c.isascii() for c in head)


def parse_domain(name: str, text: str = "") -> str:
    """A domain rule's name, checked and normalised (lower case, no trailing dot)."""
    where = f"policy rule {text or name!r}"
    if not name.isascii():
        try:
            hint = f" ({name.encode('idna').decode()!r})"
        except UnicodeError:
            hint = ""
        raise ConfigError(f"{where}: {name!r} is not ASCII: write an internationalised name "
                          f"in its punycode form{hint}")
    d = name.lower()
    wildcard = d.startswith("*.")
    body = d[2:] if wildcard else d
    if body.endswith(".") and not body.endswith(".."):  # a fully qualified name's root
        body = body[:-1]
    d = "*." + body if wildcard else body
    if not body:
        raise ConfigError(f"{where}: {name!r} has no name after '*.'" if wildcard else
                          f"{where}: empty domain name")
    if len(d) > MAX_NAME:
        raise ConfigError(f"{where}: {name!r} is {len(d)} characters long; a domain name has "
                          f"at most {MAX_NAME}")
    labels = body.split(".")
    for label in labels:
        if "*" in label:
            raise ConfigError(f"{where}: {name!r}: '*' may only stand alone as the first label "
                              "('*.example.org' matches the names below example.org)")
        if not label:
            raise ConfigError(f"{where}: {name!r} has an empty label (two dots in a row, or a "
                              "leading dot)")
        if len(label) > 63:
            raise ConfigError(f"{where}: {name!r}: the label {label[:20]!r}... is {len(label)} "
                              "characters long; a label has at most 63")
        if not _LABEL.match(label):
            raise ConfigError(f"{where}: {name!r}: bad label {label!r} (letters, digits, '-' "
                              "and '_', not starting or ending with '-')")
    if not wildcard and len(labels) < 2:
        raise ConfigError(f"{where}: {name!r} is neither a CIDR nor a domain name with at "
                          "least two labels (name.example)")
    if labels[-1].isdigit():
        raise ConfigError(f"{where}: {name!r} is neither a CIDR nor a domain name (its last "
                          "label is all digits)")
    return d


def parse_rule(text: str) -> Rule:
    """`allow|deny@CIDR|DOMAIN[:tcp|udp[:PORT[-PORT]]]` -> Rule; ConfigError naming the rule."""
    if not isinstance(text, str):
        raise ConfigError(f"policy rule {text!r}: not a string")
    m = _RULE.match(text.strip())
    if not m:
        raise ConfigError(f"policy rule {text!r}: expected "
                          "allow|deny@CIDR|DOMAIN[:tcp|udp[:PORT[-PORT]]]")
    action, rest = m.groups()
    network = domain = None
    if _is_domain(rest):
        name, sep, tail = rest.partition(":")
        tail = sep + tail
        domain = parse_domain(name, text)
    else:
        cidr, tail = _split_cidr(rest, text)
        try:
            network = ipaddress.ip_network(cidr, strict=True)
        except ValueError as e:
            raise ConfigError(f"policy rule {text!r}: {cidr!r} is not a CIDR ({e})") from None
    protocol, ports = None, (0, 65535)
    if tail:
        parts = tail[1:].split(":") if tail.startswith(":") else None
        if not parts or len(parts) > 2 or parts[0] not in PROTOCOLS:
            raise ConfigError(f"policy rule {text!r}: after the {'domain' if domain else 'CIDR'} "
                              f"comes :tcp or :udp, optionally :PORT or :PORT-PORT (got {tail!r})")
        protocol = parts[0]
        if len(parts) == 2:
            pm = _PORTS.match(parts[1])
            lo = int(pm.group(1)) if pm else -1
            hi = int(pm.group(2) or lo) if pm else -1
            if not pm or not (0 <= lo <= hi <= 65535):
                raise ConfigError(f"policy rule {text!r}: {parts[1]!r} is not a port or "
                                  "port range within 0-65535 (low-high)")
            ports = (lo, hi)
    return Rule(action, network, protocol, ports, source=text, domain=domain)


def _addresses(values: Iterable[str], what: str) -> list:
    out = []
    for v in values:
        try:
            out.append(ipaddress.ip_address(v))
        except ValueError:
            raise ConfigError(f"{what} {v!r} is not an IP address") from None
    return out


def _host(addr) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    return ipaddress.ip_network(f"{addr}/{addr.max_prefixlen}")


@dataclass(frozen=True)
class Policy:
    """A scope and the caller's rules, checked; `table()` is what the device enforces.

    gateways: the addresses the guest reaches the host through (IPv4 and/or IPv6);
    dns: DNS servers allowed on port 53 whatever the scope;
    published: the guest ports published to the outside, as (protocol, guest port):
    only to these may a remote side open a flow the guest can reply on."""
    scope: str = DEFAULT_SCOPE
    rules: tuple[Rule, ...] = ()
    gateways: tuple = ()
    dns: tuple = ()
    published: tuple[tuple[str, int], ...] = ()

    @classmethod
    def parse(cls, scope: str = DEFAULT_SCOPE, rules: Sequence[str] = (),
              gateways: Iterable[str] = (), dns: Iterable[str] = (),
              published: Iterable[PublishedPort] = ()) -> "Policy":
        if scope not in SCOPES:
            raise ConfigError(f"network scope {scope!r}: expected one of {', '.join(SCOPES)}")
        if isinstance(rules, str):
            rules = [rules]
        parsed = tuple(parse_rule(r) for r in rules)
        if scope == "none" and parsed:
            raise ConfigError("network scope 'none' has no NIC: policy rules make no sense with it")
        return cls(scope, parsed, tuple(_addresses(gateways, "gateway address")),
                   tuple(_addresses(dns, "DNS server")),
                   tuple(sorted({(p.protocol, p.guest) for p in published})))

    @property
    def has_nic(self) -> bool:
        return self.scope != "none"

    def table(self) -> list[Rule]:
        """The ordered table: the caller's rules, DNS, then the scope's; DNS first when an
        `allow@DOMAIN` rule needs it (so `allow@*.x.org`, `deny@0.0.0.0/0` works)."""
        if not self.has_nic:
            return []
        out = []

        def add(action, cidr, why, protocol=None, ports=(0, 65535)):
            net = cidr if not isinstance(cidr, str) else ipaddress.ip_network(cidr)
            out.append(Rule(action, net, protocol, ports, source=why))

        dns_first = any(r.domain and r.action == "allow" for r in self.rules)
        if not dns_first:
            out.extend(self.rules)
        for d in self.dns:
            for proto in ("udp", "tcp"):
                add("allow", _host(d), f"dns {d}", proto, (53, 53))
        if dns_first:
            out.extend(self.rules)
        scope = self.scope
        if scope == "all":
            for c in _ANY:
                add("allow", c, "scope all")
        else:
            for g in self.gateways:
                add("allow" if scope == "host" else "deny", _host(g), f"scope {scope}: gateway {g}")
            for c in _NEVER:
                add("deny", c, f"scope {scope}")
            for c in _PRIVATE:
                add("allow" if scope in ("private", "host") else "deny", c, f"scope {scope}")
            for c in _ANY:
                add("allow", c, f"scope {scope}")
        if len(out) > MAX_RULES:
            raise ConfigError(f"{len(self.rules)} policy rules: with the scope's "
                              f"{len(out) - len(self.rules)} that exceeds the table's {MAX_RULES}")
        return out


@dataclass(frozen=True)
class DnsLimits:
    """The learned-address table of domain rules: at most `entries` addresses, each kept
    for its record's TTL clamped to [ttl_min, ttl_max] seconds."""
    entries: int = 4096
    ttl_min: int = 30
    ttl_max: int = 3600


class PolicyEngine:
    """The C policy object built from a Policy's table: `check(frame)`, counters, and
    `observe(frame)` for what the backend sends the guest (domain rules learn from DNS).

    The virtio-net device owns one on its transmit path and shows it every received
    frame; on its own (tests, tools) it decides and observes frames handed to it."""

    def __init__(self, policy: Policy, dns_limits: DnsLimits = DnsLimits(),
                 max_flows: int = MAX_FLOWS):
        from .. import _binding
        if not policy.has_nic:
            raise ConfigError("network scope 'none' has no NIC and so no policy to enforce")
        self._b = _binding
        self.table = policy.table()
        ffi = _binding.ffi
        rows = ffi.new("struct vmm_net_rule[]", max(1, len(self.table)))
        names = []  # alive until vmm_net_policy_new has copied them
        for row, rule in zip(rows, self.table):
            row.action = 1 if rule.action == "allow" else 0
            row.proto = PROTOCOLS.get(rule.protocol, 0)
            row.port_lo, row.port_hi = rule.ports
            if rule.domain:
                names.append(ffi.new("char[]", rule.domain.encode()))
                row.domain = names[-1]
                continue
            row.family = rule.network.version
            row.prefix = rule.network.prefixlen
            packed = rule.network.network_address.packed
            row.addr[0:len(packed)] = packed
        ptr = _binding.check(_binding.lib.vmm_net_policy_new, rows, len(self.table),
                             context="network policy")
        self._ptr = ffi.gc(ptr, _binding.lib.vmm_net_policy_free)
        cfg = ffi.new("struct vmm_net_dns_config *")
        resolvers = list(policy.dns)[:_binding.lib.VMM_NET_MAX_RESOLVERS]
        cfg.nresolvers = len(resolvers)
        for i, r in enumerate(resolvers):
            cfg.family[i] = r.version
            cfg.addr[i][0:len(r.packed)] = r.packed
        cfg.max_entries, cfg.ttl_min, cfg.ttl_max = (dns_limits.entries, dns_limits.ttl_min,
                                                     dns_limits.ttl_max)
        _binding.check(_binding.lib.vmm_net_policy_set_dns, self._ptr, cfg,
                       context="network policy DNS table")
        ports = ffi.new("struct vmm_net_inbound_port[]", max(1, len(policy.published)))
        for row, (protocol, port) in zip(ports, policy.published):
            row.proto, row.port = PROTOCOLS[protocol], port
        _binding.check(_binding.lib.vmm_net_policy_set_inbound, self._ptr, ports,
                       len(policy.published), max_flows, context="network policy inbound flows")
        self._reply = ffi.new("uint8_t[]", 128)
        self._reply_len = ffi.new("size_t *")

    @property
    def handle(self):
        """The `struct vmm_net_policy *` (for the device that will enforce it)."""
        return self._ptr

    def check(self, frame: bytes) -> tuple[int, bytes]:
        """(PASS | DENIED | MALFORMED, the RST frame for the guest or b"")."""
        self._reply_len[0] = 128
        verdict = self._b.lib.vmm_net_policy_check(self._ptr, frame, len(frame),
                                                   self._reply, self._reply_len)
        return verdict, bytes(self._b.ffi.buffer(self._reply, self._reply_len[0]))

    def observe(self, frame: bytes) -> int:
        """Shows the policy a frame on its way to the guest: the addresses it learned from
        it (a DNS answer for a domain rule's name), 0, or -1 for a DNS answer it could not
        parse; a SYN or datagram to a published port opens an inbound flow. The device
        does this for every received frame."""
        return self._b.lib.vmm_net_policy_observe(self._ptr, frame, len(frame))

    def set_clock(self, now_ms: int | None):
        """Tests: the policy's clock reads now_ms (milliseconds) until set again; None
        returns it to the monotonic clock."""
        self._b.lib.vmm_net_policy_set_clock(self._ptr, -1 if now_ms is None else now_ms)

    def stats(self) -> dict:
        """The engine's counters, and each rule's hits keyed by the rule (in table order)."""
        ffi, lib = self._b.ffi, self._b.lib
        st = ffi.new("struct vmm_net_policy_stats *")
        lib.vmm_net_policy_stats(self._ptr, st)
        n = len(self.table)
        hits = ffi.new("uint64_t[]", max(1, n))
        lib.vmm_net_policy_hits(self._ptr, hits, n)
        out = {name: getattr(st, name) for name, _ in ffi.typeof("struct vmm_net_policy_stats").fields}
        out["rules"] = [{"rule": str(rule), "source": rule.source, "hits": hits[i]}
                        for i, rule in enumerate(self.table)]
        return out
