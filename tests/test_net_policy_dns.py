"""Domain rules of the egress policy (vmm/net/policy.py -> csrc/virtio/net_policy.c,
net_dns.c, net_dns_table.c): parsing, learning from synthetic DNS answers, judging frames
to learned addresses, TTLs, table limits, hostile messages, and a replayable fuzz run.

Every address here is only bytes in a frame built by tests/support: nothing is sent."""
import random
import socket
import struct
import threading
import time

import pytest

from vmm.errors import ConfigError
from vmm.net.policy import DENIED, PASS, DnsLimits, Policy, PolicyEngine, parse_rule
from support import fuzz_run
from support.dns_frames import (AAAA, CNAME, RESOLVER4, RESOLVER6, TXT, a, aaaa, cname,
                                compressed_response, dns_frame, header, name, pointer,
                                question, response, rr)
from support.net_frames import (ACK, GATEWAY4, GATEWAY6, RST, SYN, UDP, frame4, frame6,
                                parse_rst, tcp, udp)

NPM = "104.16.1.34"        # documentation-free but never contacted: only bytes in frames
CDN = "151.101.0.1"
OTHER = "198.51.100.7"


def engine(rules, scope="public", dns=(RESOLVER4, RESOLVER6), limits=DnsLimits()):
    return PolicyEngine(Policy.parse(scope, rules, gateways=(GATEWAY4, GATEWAY6), dns=dns), limits)


def learn(e, qname, *addrs, ttl=300, src=RESOLVER4):
    recs = [(aaaa if ":" in x else a)(qname, x, ttl) for x in addrs]
    return e.observe(dns_frame(response(qname, recs), src=src))


def hits(e, rule):
    return next(r["hits"] for r in e.stats()["rules"] if r["rule"] == rule)


# ---- parsing --------------------------------------------------------------------------

@pytest.mark.parametrize("text,domain,proto,ports", [
    ("allow@*.npmjs.org", "*.npmjs.org", None, (0, 65535)),
    ("deny@Example.COM.", "example.com", None, (0, 65535)),
    ("allow@registry.npmjs.org:tcp:443", "registry.npmjs.org", "tcp", (443, 443)),
    ("deny@x.org:udp:1000-2000", "x.org", "udp", (1000, 2000)),
    ("allow@xn--bcher-kva.de", "xn--bcher-kva.de", None, (0, 65535)),
    ("allow@*.com", "*.com", None, (0, 65535)),
    ("allow@_dmarc.a-b.example", "_dmarc.a-b.example", None, (0, 65535)),
])
def test_parse_domain_rule(text, domain, proto, ports):
    r = parse_rule(text)
    assert (r.domain, r.network, r.protocol, r.ports) == (domain, None, proto, ports)
    assert str(r) == f"{r.action}@{domain}" + (f":{proto}" if proto else "") + \
        (f":{ports[0]}" if ports[0] == ports[1] else f":{ports[0]}-{ports[1]}" if proto and ports != (0, 65535) else "")


@pytest.mark.parametrize("text,words", [
    ("allow@*.", "no name after"),
    ("allow@a..b.org", "empty label"),
    ("allow@.a.org", "empty label"),
    ("allow@-a.org", "bad label '-a'"),
    ("allow@a-.org", "bad label 'a-'"),
    ("allow@a!b.org", "bad label 'a!b'"),
    ("allow@bücher.de", "punycode form ('xn--bcher-kva.de')"),
    ("allow@" + "a" * 64 + ".org", "at most 63"),
    ("allow@" + ".".join(["abcdefg"] * 32) + ".org", "at most 253"),
    ("allow@*foo.org", "'*' may only stand alone"),
    ("allow@a.*.org", "'*' may only stand alone"),
    ("allow@*", "'*' may only stand alone"),
    ("allow@localhost", "at least two labels"),
    ("allow@x.org:icmp", "after the domain comes :tcp or :udp"),
    ("allow@x.org:tcp:99999", "not a port"),
    ("allow@x.123", "last label is all digits"),
])
def test_bad_domain_rule_is_a_config_error_naming_it(text, words):
    with pytest.raises(ConfigError) as e:
        Policy.parse("public", ["allow@1.1.1.1/32", text])
    assert repr(text) in str(e.value) and words in str(e.value)


def test_cidr_rules_still_parse_as_cidrs():
    assert str(parse_rule("allow@fe80::/10").network) == "fe80::/10"
    assert str(parse_rule("deny@10.0.0.1:tcp:22").network) == "10.0.0.1/32"
    with pytest.raises(ConfigError, match="not a CIDR"):
        parse_rule("allow@300.1.1.1")


# ---- learning and judging -------------------------------------------------------------

def test_allow_rule_opens_only_learned_addresses():
    e = engine(["allow@registry.npmjs.org:tcp:443", "deny@0.0.0.0/0"])
    assert e.check(frame4(NPM, tcp(dport=443)))[0] == DENIED
    assert hits(e, "deny@0.0.0.0/0") == 1 and hits(e, "allow@registry.npmjs.org:tcp:443") == 0
    assert learn(e, "registry.npmjs.org", NPM) == 1
    assert e.check(frame4(NPM, tcp(dport=443)))[0] == PASS
    assert hits(e, "allow@registry.npmjs.org:tcp:443") == 1
    # The rule's protocol/port filter holds: port 80 falls through to the deny.
    verdict, reply = e.check(frame4(NPM, tcp(dport=80)))
    assert verdict == DENIED and parse_rst(reply, 4)[1][4] & RST
    assert e.check(frame4(NPM, udp(dport=443), UDP))[0] == DENIED
    assert e.check(frame4(OTHER, tcp(dport=443)))[0] == DENIED   # never learned
    st = e.stats()
    assert (st["dns_answers"], st["dns_learned"], st["dns_entries"]) == (1, 1, 1)


def test_allow_domain_rule_puts_dns_ahead_of_a_catch_all_deny():
    e = engine(["allow@*.npmjs.org", "deny@0.0.0.0/0"], dns=(RESOLVER4,))
    assert [r.source for r in e.table[:3]] == [f"dns {RESOLVER4}"] * 2 + ["allow@*.npmjs.org"]
    assert e.check(frame4(RESOLVER4, udp(dport=53), UDP))[0] == PASS
    assert e.check(frame4(RESOLVER4, udp(dport=54), UDP))[0] == DENIED
    # Without an allow@ domain rule a caller's deny still overrides DNS.
    e = engine(["deny@*.npmjs.org", "deny@0.0.0.0/0"], dns=(RESOLVER4,))
    assert e.check(frame4(RESOLVER4, udp(dport=53), UDP))[0] == DENIED


def test_deny_rule_blocks_learned_address_with_rst():
    e = engine(["deny@example.com"])
    assert e.check(frame4(OTHER))[0] == PASS                     # public scope
    learn(e, "example.com", OTHER)
    verdict, reply = e.check(frame4(OTHER, tcp(flags=SYN, seq=7)))
    assert verdict == DENIED
    (src, dst), (sport, dport, seq, ack, flags) = parse_rst(reply, 4)
    assert str(src) == OTHER and flags == RST | ACK and ack == 8
    assert hits(e, "deny@example.com") == 1 and e.stats()["resets"] == 1


def test_first_match_order_holds_for_domain_rules():
    e = engine(["allow@203.0.113.0/24", "deny@*.example.org", "allow@a.example.org"])
    learn(e, "a.example.org", "203.0.113.5", "192.0.2.9")
    assert e.check(frame4("203.0.113.5"))[0] == PASS             # the CIDR rule comes first
    assert e.check(frame4("192.0.2.9"))[0] == DENIED             # the wildcard deny before the allow
    assert [hits(e, r) for r in ("allow@203.0.113.0/24", "deny@*.example.org", "allow@a.example.org")] == [1, 1, 0]


@pytest.mark.parametrize("qname,learned", [
    ("a.npmjs.org", True), ("a.b.npmjs.org", True), ("A.NPMJS.ORG", True),
    ("npmjs.org", False), ("evilnpmjs.org", False), ("npmjs.org.evil.com", False),
])
def test_wildcard_matches_subdomains_only(qname, learned):
    e = engine(["deny@*.npmjs.org"])
    assert learn(e, qname, NPM) == (1 if learned else 0)
    assert e.check(frame4(NPM))[0] == (DENIED if learned else PASS)


def test_one_answer_feeds_every_matching_rule():
    e = engine(["deny@registry.npmjs.org:tcp:22", "allow@*.npmjs.org:tcp:443", "deny@*.npmjs.org"])
    assert learn(e, "registry.npmjs.org", NPM) == 2               # two distinct names match
    assert e.check(frame4(NPM, tcp(dport=22)))[0] == DENIED
    assert e.check(frame4(NPM, tcp(dport=443)))[0] == PASS
    assert e.check(frame4(NPM, tcp(dport=80)))[0] == DENIED
    assert [hits(e, r) for r in ("deny@registry.npmjs.org:tcp:22", "allow@*.npmjs.org:tcp:443",
                                 "deny@*.npmjs.org")] == [1, 1, 1]


def test_ipv6_answers_and_resolver():
    e = engine(["deny@v6.example.org"])
    assert learn(e, "v6.example.org", "2001:db8::80", src=RESOLVER6) == 1
    assert e.check(frame6("2001:db8::80"))[0] == DENIED
    assert e.check(frame4(OTHER))[0] == PASS


def test_only_the_resolver_teaches():
    e = engine(["deny@example.com"], dns=(RESOLVER4,))
    msg = response("example.com", [a("example.com", OTHER)])
    assert e.observe(dns_frame(msg, src="8.8.8.8")) == 0          # some other server
    assert e.observe(dns_frame(msg, sport=5353)) == 0             # not from port 53
    assert e.observe(frame4(RESOLVER4, udp(sport=53), UDP)) == 0  # the guest's own frame shape
    assert e.stats()["dns_answers"] == 0 and e.check(frame4(OTHER))[0] == PASS
    assert engine([], dns=(RESOLVER4,)).observe(dns_frame(msg)) == 0   # no domain rules


def test_cname_chain_is_learned_under_the_question():
    e = engine(["deny@www.npmjs.org", "deny@cdn.example.net"])
    msg = response("www.npmjs.org", [cname("www.npmjs.org", "npm.edge.example"),
                                      cname("npm.edge.example", "x.cdn.example.net"),
                                      a("x.cdn.example.net", CDN),
                                      a("unrelated.example", OTHER)])
    assert e.observe(dns_frame(msg)) == 1
    assert e.check(frame4(CDN))[0] == DENIED and hits(e, "deny@www.npmjs.org") == 1
    assert e.check(frame4(OTHER))[0] == PASS                     # not on the chain
    # Records in any order, and a CNAME loop ends.
    e2 = engine(["deny@loop.example.org"])
    msg = response("loop.example.org", [a("b.example.org", CDN), cname("b.example.org", "loop.example.org"),
                                         cname("loop.example.org", "b.example.org")])
    assert e2.observe(dns_frame(msg)) == 1 and e2.check(frame4(CDN))[0] == DENIED


def test_cname_chain_is_bounded():
    names = [f"n{i}.example.org" for i in range(12)]
    chain = [cname(names[i], names[i + 1]) for i in range(11)]
    e = engine(["deny@n0.example.org"])
    assert e.observe(dns_frame(response(names[0], chain + [a(names[11], CDN)]))) == 0
    assert e.observe(dns_frame(response(names[0], chain[:8] + [a(names[8], CDN)]))) == 1


def test_compressed_answers():
    e = engine(["deny@registry.npmjs.org"])
    assert e.observe(dns_frame(compressed_response("registry.npmjs.org", [NPM, "2001:db8::1"]))) == 2
    assert e.check(frame6("2001:db8::1"))[0] == DENIED
    # A pointer into the middle of a name: "npmjs.org" at 12 + 1 + len("registry").
    msg = header(1, 1) + question("www.npmjs.org") + rr(b"\x08registry" + pointer(12 + 4), 1, bytes([9, 9, 9, 9]))
    assert engine(["deny@registry.npmjs.org"]).observe(dns_frame(msg)) == 0   # owner off the chain
    msg = header(1, 2) + question("registry.npmjs.org") + cname(pointer(12), b"\x03cdn" + pointer(12 + 9)) + \
        a(b"\x03cdn" + pointer(12 + 9), CDN)
    assert engine(["deny@registry.npmjs.org"]).observe(dns_frame(msg)) == 1   # cdn.npmjs.org


def test_dns_ttl_clamped_and_expiring():
    e = engine(["deny@example.com"])
    e.set_clock(1_000_000)
    learn(e, "example.com", OTHER, ttl=300)
    e.set_clock(1_000_000 + 299_000)
    assert e.check(frame4(OTHER, udp(), UDP))[0] == DENIED   # used: kept 30 s more (to 329 s)
    e.set_clock(1_000_000 + 328_000)
    assert e.check(frame4(OTHER, udp(), UDP))[0] == DENIED   # ... and again, to 358 s
    e.set_clock(1_000_000 + 400_000)
    assert e.check(frame4(OTHER, udp(), UDP))[0] == PASS
    st = e.stats()
    assert st["dns_expired"] == 1 and st["dns_entries"] == 0
    # TTL 0 holds for the 30 s minimum, a week-long one for the 1 h maximum.
    learn(e, "example.com", OTHER, ttl=0)
    learn(e, "example.com", "192.0.2.1", ttl=7 * 86400)
    learn(e, "example.com", "192.0.2.2", ttl=0x80000000)     # top bit set: treated as 0
    e.set_clock(1_000_000 + 400_000 + 29_000)
    assert e.check(frame4(OTHER, udp(), UDP))[0] == DENIED
    e.set_clock(1_000_000 + 400_000 + 59_001)                # the use at 29 s kept it to 59 s
    assert e.check(frame4(OTHER, udp(), UDP))[0] == PASS
    assert e.check(frame4("192.0.2.2", udp(), UDP))[0] == PASS
    e.set_clock(1_000_000 + 400_000 + 3_599_000)
    assert e.check(frame4("192.0.2.1", udp(), UDP))[0] == DENIED
    e.set_clock(1_000_000 + 400_000 + 3_629_001 + 30_000)
    assert e.check(frame4("192.0.2.1", udp(), UDP))[0] == PASS


def test_table_limit_evicts_least_recently_used():
    e = engine(["deny@*.example.org"], limits=DnsLimits(entries=4))
    addrs = [f"192.0.2.{i}" for i in range(1, 7)]
    for i, x in enumerate(addrs[:4]):
        learn(e, f"h{i}.example.org", x)
    assert e.check(frame4(addrs[0]))[0] == DENIED        # the oldest, but just used
    learn(e, "h4.example.org", addrs[4])
    learn(e, "h5.example.org", addrs[5])
    st = e.stats()
    assert (st["dns_entries"], st["dns_evicted"]) == (4, 2)
    assert [e.check(frame4(x))[0] for x in addrs] == [DENIED, PASS, PASS, DENIED, DENIED, DENIED]


def test_table_limits_are_checked():
    with pytest.raises(ConfigError, match="DNS table"):
        engine(["deny@example.com"], limits=DnsLimits(ttl_min=100, ttl_max=10))
    with pytest.raises(ConfigError, match="DNS table"):
        engine(["deny@example.com"], limits=DnsLimits(entries=1 << 21))


# ---- hostile DNS messages -------------------------------------------------------------

Q = "example.com"
GOOD = response(Q, [a(Q, OTHER)])


@pytest.mark.parametrize("msg,expect", [
    (GOOD, 1),
    (GOOD[:11], -1),                                            # truncated header
    (GOOD[:len(GOOD) - 1], -1),                                 # truncated rdata
    (GOOD[:12 + len(name(Q)) + 2], -1),                         # truncated question
    (header(1, 65535) + question(Q) + a(Q, OTHER), -1),         # ANCOUNT the bytes can't hold
    (header(65535, 1) + question(Q) + a(Q, OTHER), -1),         # QDCOUNT likewise
    (header(0, 0), 0),                                          # no question
    (header(2, 0) + question(Q) + question(Q), 0),              # two questions
    (response(Q, [a(Q, OTHER)], flags=0x8183), 0),              # NXDOMAIN
    (response(Q, [a(Q, OTHER)], flags=0x0100), 0),              # a query
    (response(Q, [a(Q, OTHER)], flags=0x8980), 0),              # opcode 1
    (response(Q, [a(Q, OTHER)], flags=0x8380), 1),              # TC: what is there is used
    (response(Q, [rr(Q, 1, bytes(5))]), -1),                    # A with 5 bytes
    (response(Q, [rr(Q, AAAA, bytes(4))]), -1),                 # AAAA with 4
    (response(Q, [rr(Q, TXT, b"\x02hi"), a(Q, OTHER)]), 1),     # other types skipped
    (response(Q, [rr(Q, 1, bytes(4), rclass=3)]), 0),           # class CH
    (response(Q, [rr(Q, CNAME, name("x.org") + b"z")]), -1),    # CNAME rdata longer than its name
    (header(1, 1) + question(Q) + rr(pointer(12 + 40), 1, bytes(4)), -1),   # pointer past the end
    (header(1, 1) + question(Q) + rr(pointer(12 + len(name(Q)) + 4), 1, bytes(4)), -1),  # to itself
    (header(1, 1) + question(pointer(12)) + a(Q, OTHER), -1),   # question points at itself
    (header(1, 1) + question(b"\x01a" + pointer(14)) + a(Q, OTHER), -1),    # forward pointer
    (header(1, 1) + question(b"\x41a" + bytes(64)) + a(Q, OTHER), -1),     # label type 0x40
    (header(1, 1) + question(b"\x3f" + b"a" * 63 + b"\x3f" + b"b" * 63 + b"\x3f" + b"c" * 63 +
                             b"\x3f" + b"d" * 63 + b"\0") + a(Q, OTHER), -1),   # 257 bytes on the wire
    (response(".".join(["a" * 63] * 3 + ["b" * 61]), [a(".".join(["a" * 63] * 3 + ["b" * 61]), OTHER)]), 0),  # 255: fits
    (response(b"\x0bexample.com\0", [a(b"\x0bexample.com\0", OTHER)]), 0),  # a '.' inside a label
    (response(b"\x07exam\0le\x03com\0", [a(b"\x07exam\0le\x03com\0", OTHER)]), 0),  # a NUL inside
])
def test_hostile_messages(msg, expect):
    e = engine(["deny@example.com"])
    assert e.observe(dns_frame(msg)) == expect
    st = e.stats()
    assert st["dns_answers"] == 1 and st["dns_malformed"] == (1 if expect < 0 else 0)
    assert e.check(frame4(OTHER))[0] == (DENIED if expect > 0 else PASS)


def _pointer_chain_message(hops):
    """example.com's A record whose owner is reached through `hops` backward pointers,
    laid out in a TXT record's data ahead of it (bytes the parser skips)."""
    start = 12 + len(name(Q)) + 4
    rdata_at = start + len(name(Q)) + 10      # the TXT record's owner is the full name
    chain, target = b"", 12
    for k in range(hops - 1):
        chain += pointer(target)
        target = rdata_at + 2 * k
    txt = rr(name(Q), TXT, chain or b"\0")
    return header(1, 2) + question(Q) + txt + rr(pointer(target), 1, bytes([192, 0, 2, 99]))


@pytest.mark.parametrize("hops,expect", [(1, 1), (16, 1), (17, -1), (40, -1)])
def test_pointer_chains_are_bounded(hops, expect):
    e = engine(["deny@example.com"])
    assert e.observe(dns_frame(_pointer_chain_message(hops))) == expect


def test_udp_length_beyond_the_frame_is_malformed():
    f = bytearray(dns_frame(GOOD))
    struct.pack_into("!H", f, 14 + 20 + 4, len(GOOD) + 8 + 1)
    f[14 + 2:14 + 4] = struct.pack("!H", 20 + 8 + len(GOOD))   # the IP length stays honest
    e = engine(["deny@example.com"])
    assert e.observe(bytes(f)) == -1 and e.stats()["dns_malformed"] == 1


def test_learning_and_judging_from_two_threads():
    e = engine(["deny@*.example.org"], limits=DnsLimits(entries=64))
    stop, errors = time.monotonic() + 1.0, []

    def teach():
        i = 0
        while time.monotonic() < stop:
            learn(e, f"h{i % 200}.example.org", f"192.0.2.{i % 200}")
            i += 1

    t = threading.Thread(target=teach)
    t.start()
    n = 0
    while time.monotonic() < stop:
        v = e.check(frame4(f"192.0.2.{n % 200}", udp(), UDP))[0]
        if v not in (PASS, DENIED):
            errors.append(v)
        n += 1
    t.join()
    st = e.stats()
    assert not errors and st["dns_entries"] <= 64 and st["dns_evicted"] > 0


# ---- through the device ---------------------------------------------------------------

def test_device_delivers_dns_frames_and_learns(tmp_path):
    from vmm.devices import Net
    from vmm.engines.virtio_device import open_device
    from test_virtio_net import NetGuest, read_framed
    a_, b_ = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    policy = Policy.parse("public", ["deny@blocked.example.org"], gateways=(GATEWAY4,), dns=(RESOLVER4,))
    dev = open_device(Net(backend="socket", fd=a_.fileno(), mac="52:54:00:12:34:56", policy=policy))
    a_.close()
    b_.settimeout(5)
    try:
        g = NetGuest(dev)
        good = dns_frame(response("blocked.example.org", [a("blocked.example.org", OTHER)]))
        bad = dns_frame(GOOD[:20])
        for f in (bad, good):
            b_.sendall(struct.pack(">I", len(f)) + f)
        got = g.recv(want=2)
        assert [x[12:] for x in got] == [bad, good]            # both delivered unchanged
        g.send(frame4(OTHER, tcp(flags=SYN)))
        rst = g.recv(want=1)
        assert rst and parse_rst(rst[0][12:], 4)[1][4] & RST
        g.send(frame4("192.0.2.1", tcp(flags=SYN)))             # not learned: passes
        assert read_framed(b_) == frame4("192.0.2.1", tcp(flags=SYN))
        st = dev.policy.stats()
        assert (st["dns_answers"], st["dns_malformed"], st["dns_learned"]) == (2, 1, 1)
        assert st["rules"][0]["hits"] == 1
    finally:
        dev.close()
        b_.close()


# ---- fuzz ------------------------------------------------------------------------------

def _mutate(rng, m):
    m = bytearray(m)
    for _ in range(rng.randint(1, 5)):
        op = rng.random()
        if op < 0.45 and m:
            m[rng.randrange(len(m))] = rng.randrange(256)
        elif op < 0.6 and m:
            del m[rng.randrange(len(m)):]
        elif op < 0.75:
            m[rng.randrange(len(m) + 1):0] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 6)))
        elif m:
            i = rng.randrange(len(m))
            m[i:i + 2] = rng.choice([b"\xc0\x0c", b"\xc0\x00", b"\xff\xff", b"\x00\x00", b"\x3f\x3f", b"\xc0"])
    return bytes(m)


@pytest.mark.fuzz
def test_dns_fuzz_no_crash():
    """Mutated DNS answers (and frames to the addresses they taught) for a few seconds
    (NET_DNS_FUZZ_SECONDS), on a clock that advances a millisecond an answer (so that
    TTLs expire the same way each run); replay exactly with the NET_DNS_FUZZ_SEED=<seed>
    VMM_FUZZ_ROUNDS=<n> that a failure names."""
    seed = fuzz_run.seed("net dns fuzz", "NET_DNS_FUZZ_SEED")
    budget = fuzz_run.Budget.from_env(3, "NET_DNS_FUZZ_SECONDS")
    rng = random.Random(seed)
    e = engine(["allow@*.example.org:tcp:443", "deny@example.com", "deny@a.b.example.org:udp"],
               limits=DnsLimits(entries=256))
    now = 1_000_000
    seeds = [GOOD, compressed_response("x.example.org", [OTHER, "2001:db8::1", CDN]),
             response("www.example.org", [cname("www.example.org", "e.cdn.example"), a("e.cdn.example", CDN)]),
             header(1, 2) + question("registry.example.org") + cname(pointer(12), b"\x03cdn" + pointer(12 + 9)) +
             a(b"\x03cdn" + pointer(12 + 9), NPM),
             response("a.b.example.org", [aaaa("a.b.example.org", "2001:db8::2"), a("a.b.example.org", NPM)])]
    n, results = 0, {-1: 0, 0: 0, "learned": 0}
    with fuzz_run.seed_named_on_failure("NET_DNS_FUZZ_SEED", seed, budget):
        while budget.more():
            now += 1
            e.set_clock(now)
            msg = _mutate(rng, rng.choice(seeds)) if rng.random() < 0.95 else \
                bytes(rng.randrange(256) for _ in range(rng.randrange(80)))
            f = dns_frame(msg, src=rng.choice([RESOLVER4, RESOLVER6]))
            if rng.random() < 0.1:  # now and then the headers around it too (lengths, ports)
                f = f[:14] + _mutate(rng, f[14:62]) + f[62:]
            r = e.observe(f)
            assert r >= -1
            results["learned" if r > 0 else r] += 1
            # Judging frames to whatever was learned stays consistent.
            dst = rng.choice([OTHER, CDN, NPM])
            assert e.check(frame4(dst, tcp(dport=rng.choice([443, 80]))))[0] in (PASS, DENIED)
            n += 1
        st = e.stats()
        assert st["dns_answers"] <= n and st["dns_malformed"] == results[-1]
        assert st["dns_entries"] <= 256 and results["learned"] > 0 and results[-1] > 0
    print(f"{n} DNS answers: {results}, {st['dns_learned']} addresses learned, "
          f"{st['dns_evicted']} evicted")
    fuzz_run.summary("net dns fuzz", "NET_DNS_FUZZ_SEED", seed, budget, answers=n, learned=st["dns_learned"])
