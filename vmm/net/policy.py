"""The egress policy of a sandbox's NIC: scope + ordered rules -> the table the C device
enforces on every frame the guest transmits (csrc/virtio/net_policy.c).

Rules are `allow|deny@CIDR[:tcp|udp[:PORT[-PORT]]]`; an IPv6 CIDR has colons of its own,
so it needs its `/prefix` (or brackets, `[2001:db8::1]:tcp:22`) for the rest to be told
apart. The caller's rules come first, in the order given; then what the scope says; the
first rule that matches a frame's destination decides, and a frame none matches is denied.

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
rule still overrides them. ARP, DHCP and IPv6 neighbour discovery pass in C without rules.
"""
from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Iterable, Sequence

from ..errors import ConfigError

SCOPES = ("none", "public", "private", "host", "all")
DEFAULT_SCOPE = "public"
PROTOCOLS = {"tcp": 6, "udp": 17}
MAX_RULES = 4096  # the C table's limit (net_policy.c)

# Verdicts of `PolicyEngine.check` (enum vmm_net_verdict).
PASS, DENIED, MALFORMED = 0, 1, 2

_NEVER = (  # denied in every scope but `all`
    "0.0.0.0/8", "127.0.0.0/8", "169.254.0.0/16", "224.0.0.0/4", "240.0.0.0/4",
    "::/128", "::1/128", "::ffff:0:0/96", "fe80::/10", "fec0::/10", "ff00::/8",
)
_PRIVATE = ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "fc00::/7")
_ANY = ("0.0.0.0/0", "::/0")

_RULE = re.compile(r"^(allow|deny)@(.+)$")
_PORTS = re.compile(r"^(\d{1,5})(?:-(\d{1,5}))?$")


@dataclass(frozen=True)
class Rule:
    """One row of the table: frames to `network` (with `protocol`, to a destination
    port in ports) get `action`. `source` is the rule as written, or what added it."""
    action: str                       # "allow" | "deny"
    network: ipaddress.IPv4Network | ipaddress.IPv6Network
    protocol: str | None = None       # None = any transport
    ports: tuple[int, int] = (0, 65535)
    source: str = ""

    def __str__(self):
        s = f"{self.action}@{self.network}"
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


def parse_rule(text: str) -> Rule:
    """`allow|deny@CIDR[:tcp|udp[:PORT[-PORT]]]` -> Rule; ConfigError naming the rule."""
    if not isinstance(text, str):
        raise ConfigError(f"policy rule {text!r}: not a string")
    m = _RULE.match(text.strip())
    if not m:
        raise ConfigError(f"policy rule {text!r}: expected allow|deny@CIDR[:tcp|udp[:PORT[-PORT]]]")
    action, rest = m.groups()
    cidr, tail = _split_cidr(rest, text)
    try:
        network = ipaddress.ip_network(cidr, strict=True)
    except ValueError as e:
        raise ConfigError(f"policy rule {text!r}: {cidr!r} is not a CIDR ({e})") from None
    protocol, ports = None, (0, 65535)
    if tail:
        parts = tail[1:].split(":") if tail.startswith(":") else None
        if not parts or len(parts) > 2 or parts[0] not in PROTOCOLS:
            raise ConfigError(f"policy rule {text!r}: after the CIDR comes :tcp or :udp, "
                              f"optionally :PORT or :PORT-PORT (got {tail!r})")
        protocol = parts[0]
        if len(parts) == 2:
            pm = _PORTS.match(parts[1])
            lo = int(pm.group(1)) if pm else -1
            hi = int(pm.group(2) or lo) if pm else -1
            if not pm or not (0 <= lo <= hi <= 65535):
                raise ConfigError(f"policy rule {text!r}: {parts[1]!r} is not a port or "
                                  "port range within 0-65535 (low-high)")
            ports = (lo, hi)
    return Rule(action, network, protocol, ports, source=text)


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
    dns: DNS servers allowed on port 53 whatever the scope."""
    scope: str = DEFAULT_SCOPE
    rules: tuple[Rule, ...] = ()
    gateways: tuple = ()
    dns: tuple = ()

    @classmethod
    def parse(cls, scope: str = DEFAULT_SCOPE, rules: Sequence[str] = (),
              gateways: Iterable[str] = (), dns: Iterable[str] = ()) -> "Policy":
        if scope not in SCOPES:
            raise ConfigError(f"network scope {scope!r}: expected one of {', '.join(SCOPES)}")
        if isinstance(rules, str):
            rules = [rules]
        parsed = tuple(parse_rule(r) for r in rules)
        if scope == "none" and parsed:
            raise ConfigError("network scope 'none' has no NIC: policy rules make no sense with it")
        return cls(scope, parsed, tuple(_addresses(gateways, "gateway address")),
                   tuple(_addresses(dns, "DNS server")))

    @property
    def has_nic(self) -> bool:
        return self.scope != "none"

    def table(self) -> list[Rule]:
        """The ordered table: the caller's rules, DNS, then the scope's."""
        if not self.has_nic:
            return []
        out = list(self.rules)

        def add(action, cidr, why, protocol=None, ports=(0, 65535)):
            net = cidr if not isinstance(cidr, str) else ipaddress.ip_network(cidr)
            out.append(Rule(action, net, protocol, ports, source=why))

        for d in self.dns:
            for proto in ("udp", "tcp"):
                add("allow", _host(d), f"dns {d}", proto, (53, 53))
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


class PolicyEngine:
    """The C policy object built from a Policy's table: `check(frame)`, counters.

    The virtio-net device will own one on its transmit path; on its own (tests, tools)
    it decides frames handed to it from Python."""

    def __init__(self, policy: Policy):
        from .. import _binding
        if not policy.has_nic:
            raise ConfigError("network scope 'none' has no NIC and so no policy to enforce")
        self._b = _binding
        self.table = policy.table()
        ffi = _binding.ffi
        rows = ffi.new("struct vmm_net_rule[]", max(1, len(self.table)))
        for row, rule in zip(rows, self.table):
            row.action = 1 if rule.action == "allow" else 0
            row.family = rule.network.version
            row.prefix = rule.network.prefixlen
            row.proto = PROTOCOLS.get(rule.protocol, 0)
            packed = rule.network.network_address.packed
            row.addr[0:len(packed)] = packed
            row.port_lo, row.port_hi = rule.ports
        ptr = _binding.check(_binding.lib.vmm_net_policy_new, rows, len(self.table),
                             context="network policy")
        self._ptr = ffi.gc(ptr, _binding.lib.vmm_net_policy_free)
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
