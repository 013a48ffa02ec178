"""The egress policy (vmm/net/policy.py -> csrc/virtio/net_policy.c) on synthetic frames.

Every address here is only bytes in a frame built by tests/support/net_frames.py and
handed to the C decision function: nothing is sent anywhere."""
import ipaddress
import random
import struct

import pytest

from vmm.errors import ConfigError
from vmm.net.policy import DENIED, MALFORMED, PASS, Policy, PolicyEngine, parse_rule
from support import fuzz_run
from support.net_frames import (ACK, FIN, GATEWAY4, GATEWAY6, GUEST4, GUEST6, GUEST_MAC, GW_MAC, ICMP,
                                ICMP6, PSH, PUBLIC4, PUBLIC6, RST, SYN, TCP, UDP, eth, ext, frag6,
                                frame, frame4, frame6, ip4, ip6, parse_rst, tcp, udp)


def engine(scope="public", rules=(), gateways=(GATEWAY4, GATEWAY6), dns=()):
    return PolicyEngine(Policy.parse(scope, rules, gateways=gateways, dns=dns))


def verdict(e, f):
    return e.check(f)[0]


# ---- rule parsing ---------------------------------------------------------------------

@pytest.mark.parametrize("text,expect", [
    ("allow@10.0.0.0/8", ("allow", "10.0.0.0/8", None, (0, 65535))),
    ("deny@203.0.113.0/24:tcp:443", ("deny", "203.0.113.0/24", "tcp", (443, 443))),
    ("deny@203.0.113.7:udp:1000-2000", ("deny", "203.0.113.7/32", "udp", (1000, 2000))),
    ("allow@2001:db8::/32:tcp:80-81", ("allow", "2001:db8::/32", "tcp", (80, 81))),
    ("allow@[2001:db8::1]:udp", ("allow", "2001:db8::1/128", "udp", (0, 65535))),
    ("allow@[2001:db8::]/48:tcp:22", ("allow", "2001:db8::/48", "tcp", (22, 22))),
    ("deny@::/0", ("deny", "::/0", None, (0, 65535))),
    ("deny@0.0.0.0/0:udp", ("deny", "0.0.0.0/0", "udp", (0, 65535))),
])
def test_parse_rule(text, expect):
    r = parse_rule(text)
    assert (r.action, str(r.network), r.protocol, r.ports) == expect
    assert r.source == text


@pytest.mark.parametrize("text", [
    "permit@10.0.0.0/8", "allow 10.0.0.0/8", "allow@", "allow@10.0.0.0/33", "allow@10.0.0.1/8",
    "allow@300.1.1.1", "allow@10.0.0.0/8:icmp", "allow@10.0.0.0/8:tcp:70000",
    "allow@10.0.0.0/8:tcp:90-80", "allow@10.0.0.0/8:tcp:1:2", "allow@10.0.0.0/8:tcp:", "allow@2001:db8::1",
    "allow@[2001:db8::1:tcp", "allow@10.0.0.0/8tcp", "allow@10.0.0.0/8:tcp:-5", "deny@::1/129",
])
def test_bad_rule_is_a_config_error_naming_it(text):
    with pytest.raises(ConfigError) as e:
        Policy.parse("public", ["allow@1.1.1.1/32", text])
    assert repr(text) in str(e.value)


def test_scopes_and_addresses_checked():
    with pytest.raises(ConfigError, match="'world'"):
        Policy.parse("world")
    with pytest.raises(ConfigError, match="gateway address 'gw'"):
        Policy.parse("host", gateways=["gw"])
    with pytest.raises(ConfigError, match="no NIC"):
        Policy.parse("none", ["allow@1.1.1.1/32"])
    none = Policy.parse("none")
    assert not none.has_nic and none.table() == []
    with pytest.raises(ConfigError, match="no NIC"):
        PolicyEngine(none)
    assert Policy.parse().scope == "public" and Policy.parse().has_nic


def test_user_rules_precede_dns_and_scope():
    table = Policy.parse("public", ["deny@1.2.3.0/24", "allow@10.9.0.0/16:tcp:22"],
                         gateways=[GATEWAY4], dns=[GATEWAY4]).table()
    assert [str(r) for r in table[:5]] == [
        "deny@1.2.3.0/24", "allow@10.9.0.0/16:tcp:22", f"allow@{GATEWAY4}/32:udp:53",
        f"allow@{GATEWAY4}/32:tcp:53", f"deny@{GATEWAY4}/32"]
    assert str(table[-1]) == "allow@::/0" and str(table[-2]) == "allow@0.0.0.0/0"


# ---- scope boundaries -----------------------------------------------------------------

PRIVATE_RANGES = ["10.0.0.0", "10.255.255.255", "172.16.0.0", "172.31.255.255", "192.168.0.0",
                  "192.168.255.255", "100.64.0.0", "100.127.255.255", "fc00::1", "fdff:ffff::1"]
NEVER = ["127.0.0.1", "127.255.255.255", "169.254.169.254", "169.254.0.0", "169.254.255.255",
         "224.0.0.1", "239.255.255.255", "255.255.255.255", "240.0.0.1", "0.0.0.0",
         "::1", "::", "fe80::1", "febf:ffff::1", "fec0::1", "ff02::1", "ff0e::1", "::ffff:10.0.0.1",
         "::ffff:93.184.216.34"]
PUBLIC = [PUBLIC4, PUBLIC6, "9.255.255.255", "11.0.0.0", "172.15.255.255", "172.32.0.0",
          "192.167.255.255", "192.169.0.0", "100.63.255.255", "100.128.0.0", "169.253.255.255",
          "169.255.0.0", "223.255.255.255", "1.0.0.0", "fbff:ffff::1", "fe00::1", "2001:db8::1",
          "2a00:1450::1"]
GATEWAYS = [GATEWAY4, GATEWAY6]


@pytest.mark.parametrize("scope,allowed,denied", [
    ("public", PUBLIC, PRIVATE_RANGES + NEVER + GATEWAYS),
    ("private", PUBLIC + PRIVATE_RANGES, NEVER + GATEWAYS),
    ("host", PUBLIC + PRIVATE_RANGES + GATEWAYS, NEVER),
    ("all", PUBLIC + PRIVATE_RANGES + NEVER + GATEWAYS, []),
])
def test_scope_boundaries(scope, allowed, denied):
    e = engine(scope)
    for proto, l4 in ((TCP, tcp()), (UDP, udp()), (ICMP, b"\x08\0\0\0\0\0\0\0")):
        for a in allowed:
            p = ICMP6 if proto == ICMP and ":" in a else proto
            assert verdict(e, frame(a, l4, p)) == PASS, (scope, a, proto)
        for a in denied:
            p = ICMP6 if proto == ICMP and ":" in a else proto
            assert verdict(e, frame(a, l4, p)) == DENIED, (scope, a, proto)


def test_private_does_not_open_the_gateway_inside_a_private_range():
    e = engine("private")
    assert verdict(e, frame4("10.0.2.3")) == PASS
    assert verdict(e, frame4(GATEWAY4)) == DENIED


def test_dns_server_allowed_on_port_53_only():
    e = engine("public", dns=[GATEWAY4])
    assert verdict(e, frame4(GATEWAY4, udp(dport=53), UDP)) == PASS
    assert verdict(e, frame4(GATEWAY4, tcp(dport=53))) == PASS
    assert verdict(e, frame4(GATEWAY4, udp(dport=54), UDP)) == DENIED
    assert verdict(e, frame4(GATEWAY4, tcp(dport=80))) == DENIED
    # a caller's rule comes first
    e = engine("public", rules=[f"deny@{GATEWAY4}/32"], dns=[GATEWAY4])
    assert verdict(e, frame4(GATEWAY4, udp(dport=53), UDP)) == DENIED


def test_infrastructure_frames_pass_in_every_scope():
    arp = eth(0x0806, struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1) + GUEST_MAC + bytes(4) + bytes(6)
              + ipaddress.ip_address(GATEWAY4).packed, dst=b"\xff" * 6)
    dhcp = frame4("255.255.255.255", udp(68, 67, bytes(240)), UDP, src="0.0.0.0")
    dhcp6 = frame6("ff02::1:2", udp(546, 547, bytes(20)), UDP, src="fe80::1")
    nd = [frame6("ff02::2", bytes([133, 0, 0, 0]) + bytes(4), ICMP6, src="fe80::1", hop_limit=255),
          frame6("ff02::1:ff00:2", bytes([135, 0, 0, 0]) + bytes(20), ICMP6, src="fe80::1",
                 hop_limit=255),
          frame6("fe80::2", bytes([136, 0, 0, 0]) + bytes(20), ICMP6, src="fe80::1", hop_limit=255)]
    for scope in ("public", "private", "host", "all"):
        e = engine(scope, rules=["deny@0.0.0.0/0", "deny@::/0"])
        for f in [arp, dhcp, dhcp6] + nd:
            assert verdict(e, f) == PASS, scope
        assert e.stats()["infra"] == 3 + len(nd)
        # ICMPv6 that is not ND (echo), or "ND" that could have crossed a router (hop
        # limit below 255: receivers drop it as ND), is judged by the rules
        assert verdict(e, frame6("fe80::2", bytes([128, 0, 0, 0]) + bytes(4), ICMP6,
                                 hop_limit=255)) == DENIED
        assert verdict(e, frame6(PUBLIC6, bytes([135, 0, 0, 0]) + bytes(20), ICMP6)) == DENIED
        # a "DHCP" that is not from port 68 is judged by the rules
        assert verdict(e, frame4("255.255.255.255", udp(69, 67), UDP)) == DENIED


def test_other_ethertypes_denied():
    e = engine("all")
    assert verdict(e, eth(0x88B5, b"hello" * 10)) == DENIED
    assert verdict(e, eth(0x8035, bytes(28))) == DENIED  # RARP
    st = e.stats()
    assert st["other_ethertype"] == 2 and st["denied"] == 2 and st["malformed"] == 0


# ---- rules: order, ports, counters ----------------------------------------------------

def test_rule_order_first_match_wins():
    e = engine("public", rules=["allow@203.0.113.5/32:tcp:443", "deny@203.0.113.0/24",
                                "allow@203.0.113.0/24"])
    assert verdict(e, frame4("203.0.113.5", tcp(dport=443))) == PASS
    assert verdict(e, frame4("203.0.113.5", tcp(dport=80))) == DENIED
    assert verdict(e, frame4("203.0.113.6", tcp(dport=443))) == DENIED
    hits = [r["hits"] for r in e.stats()["rules"][:3]]
    assert hits == [1, 2, 0]
    e = engine("public", rules=["allow@203.0.113.0/24", "deny@203.0.113.0/24"])
    assert verdict(e, frame4("203.0.113.6")) == PASS


def test_user_rules_open_scope_denials():
    e = engine("public", rules=["allow@169.254.169.254/32:tcp:80", "allow@fe80::/10:udp"])
    assert verdict(e, frame4("169.254.169.254", tcp(dport=80))) == PASS
    assert verdict(e, frame4("169.254.169.254", tcp(dport=81))) == DENIED
    assert verdict(e, frame6("fe80::9", udp(dport=9), UDP)) == PASS
    assert verdict(e, frame6("fe80::9", tcp(dport=9))) == DENIED


def test_port_ranges_and_protocols():
    e = engine("all", rules=["deny@0.0.0.0/0:tcp:1000-1999", "deny@::/0:udp:53"])
    for port, want in ((999, PASS), (1000, DENIED), (1500, DENIED), (1999, DENIED), (2000, PASS)):
        assert verdict(e, frame4(PUBLIC4, tcp(dport=port))) == want, port
        assert verdict(e, frame4(PUBLIC4, udp(dport=port), UDP)) == PASS  # tcp rule only
    assert verdict(e, frame6(PUBLIC6, udp(dport=53), UDP)) == DENIED
    assert verdict(e, frame6(PUBLIC6, udp(dport=54), UDP)) == PASS
    assert verdict(e, frame6(PUBLIC6, tcp(dport=53))) == PASS
    # the source port is not the destination
    assert verdict(e, frame4(PUBLIC4, tcp(sport=1500, dport=80))) == PASS
    # a protocol rule does not match ICMP; an address rule does
    assert verdict(e, frame4(PUBLIC4, bytes(8), ICMP)) == PASS
    e = engine("all", rules=["deny@93.184.216.0/24"])
    assert verdict(e, frame4(PUBLIC4, bytes(8), ICMP)) == DENIED


def test_prefix_boundaries_bit_exact():
    e = engine("all", rules=["deny@198.51.100.128/25", "deny@2001:db8:0:80::/57"])
    assert verdict(e, frame4("198.51.100.127")) == PASS
    assert verdict(e, frame4("198.51.100.128")) == DENIED
    assert verdict(e, frame4("198.51.100.255")) == DENIED
    assert verdict(e, frame4("198.51.101.0")) == PASS
    assert verdict(e, frame6("2001:db8:0:7f::1")) == PASS
    assert verdict(e, frame6("2001:db8:0:80::1")) == DENIED
    assert verdict(e, frame6("2001:db8:0:ff::1")) == DENIED
    assert verdict(e, frame6("2001:db8:0:100::1")) == PASS


def test_counters():
    e = engine("public")
    verdict(e, frame4(PUBLIC4))
    verdict(e, frame4("10.0.0.1", udp(), UDP))
    verdict(e, frame4("10.0.0.1"))
    verdict(e, b"\0" * 5)
    st = e.stats()
    assert (st["passed"], st["denied"], st["malformed"], st["resets"]) == (1, 2, 1, 1)
    by_rule = {r["rule"]: r["hits"] for r in st["rules"]}
    assert by_rule["deny@10.0.0.0/8"] == 2 and by_rule["allow@0.0.0.0/0"] == 1
    assert all(r["source"] for r in st["rules"])
    assert st["default_denied"] == 0  # every scope's table ends in allow-all or denies first


def test_unmatched_frame_is_denied_by_default():
    from vmm import _binding
    ffi, lib = _binding.ffi, _binding.lib
    rows = ffi.new("struct vmm_net_rule[]", 1)
    rows[0].action, rows[0].family, rows[0].prefix = 1, 4, 8
    rows[0].addr[0:4] = bytes([93, 0, 0, 0])
    p = ffi.gc(_binding.check(lib.vmm_net_policy_new, rows, 1), lib.vmm_net_policy_free)
    f = frame4("94.0.0.1")
    assert lib.vmm_net_policy_check(p, f, len(f), ffi.NULL, ffi.NULL) == DENIED
    f = frame4(PUBLIC4)
    assert lib.vmm_net_policy_check(p, f, len(f), ffi.NULL, ffi.NULL) == PASS
    st = ffi.new("struct vmm_net_policy_stats *")
    lib.vmm_net_policy_stats(p, st)
    assert st.default_denied == 1 and st.denied == 1 and st.passed == 1


@pytest.mark.parametrize("field,value,why", [
    ("action", 2, "action"), ("family", 5, "family"), ("prefix", 33, "prefix"),
    ("proto", 1, "protocol"),
])
def test_c_refuses_a_bad_table(field, value, why):
    from vmm import _binding
    ffi, lib = _binding.ffi, _binding.lib
    rows = ffi.new("struct vmm_net_rule[]", 2)
    for r in rows:
        r.family, r.port_hi = 4, 65535
    setattr(rows[1], field, value)
    with pytest.raises(ConfigError, match=f"rule 1 has a bad {why}"):
        _binding.check(lib.vmm_net_policy_new, rows, 2)
    rows[1].family, rows[1].prefix, rows[1].action, rows[1].proto = 4, 0, 0, 6
    rows[1].port_lo, rows[1].port_hi = 5, 4
    with pytest.raises(ConfigError, match="port range"):
        _binding.check(lib.vmm_net_policy_new, rows, 2)


# ---- header parsing: VLAN, options, extension headers, fragments -----------------------

def test_one_vlan_tag_is_parsed_two_are_malformed():
    e = engine("public")
    assert verdict(e, eth(0x0800, ip4(PUBLIC4, tcp()), vlan=5)) == PASS
    assert verdict(e, eth(0x0800, ip4("10.1.1.1", tcp()), vlan=5)) == DENIED
    assert verdict(e, eth(0x86DD, ip6("fc00::1", tcp()), vlan=7)) == DENIED
    double = eth(0x8100, struct.pack("!H", 9) + struct.pack("!H", 0x0800) + ip4(PUBLIC4, tcp()), vlan=5)
    assert verdict(e, double) == MALFORMED
    assert verdict(e, eth(0x8100, b"")) == MALFORMED  # tag cut short


def test_ipv4_options():
    e = engine("public")
    nop_eol = bytes([1, 1, 1, 0])
    timestamp = bytes([68, 8, 5, 0]) + bytes(4)
    router_alert = bytes([148, 4, 0, 0])
    for opts in (nop_eol, timestamp, router_alert, nop_eol + timestamp + router_alert):
        assert verdict(e, frame4(PUBLIC4, tcp(dport=443), options=opts)) == PASS
        assert verdict(e, frame4("192.168.1.1", tcp(dport=443), options=opts)) == DENIED
    # the port is found after the options
    e = engine("all", rules=["deny@0.0.0.0/0:tcp:22"])
    assert verdict(e, frame4(PUBLIC4, tcp(dport=22), options=timestamp)) == DENIED
    assert verdict(e, frame4(PUBLIC4, tcp(dport=23), options=timestamp)) == PASS
    bad = [bytes([68, 1, 0, 0]),          # length < 2
           bytes([68, 12, 0, 0]),         # runs past the header
           bytes([1, 1, 1, 68]),          # kind with no length byte
           bytes([131, 7, 4]) + bytes(5), # loose source route
           bytes([137, 7, 4]) + bytes(5)] # strict source route
    for opts in bad:
        assert verdict(e, frame4(PUBLIC4, tcp(dport=23), options=opts)) == MALFORMED, opts


def test_ipv4_header_lengths():
    e = engine("all")
    assert verdict(e, frame4(PUBLIC4, ihl=4)) == MALFORMED
    assert verdict(e, frame4(PUBLIC4, ihl=15)) == MALFORMED          # past the frame
    assert verdict(e, frame4(PUBLIC4, total=19)) == MALFORMED
    assert verdict(e, frame4(PUBLIC4, total=200)) == MALFORMED        # longer than the frame
    assert verdict(e, frame4(PUBLIC4, total=30)) == MALFORMED         # TCP header cut by total
    assert verdict(e, frame4(PUBLIC4, udp(), UDP, total=27)) == MALFORMED
    # Ethernet padding past total length is fine
    assert verdict(e, frame4(PUBLIC4) + bytes(20)) == PASS
    # version field
    f = bytearray(frame4(PUBLIC4))
    f[14] = 0x65
    assert verdict(e, bytes(f)) == MALFORMED
    f = bytearray(frame6(PUBLIC6))
    f[14] = 0x40
    assert verdict(e, bytes(f)) == MALFORMED
    # TCP data offset below 5 or past the segment
    assert verdict(e, frame4(PUBLIC4, tcp(doff=4))) == MALFORMED
    assert verdict(e, frame4(PUBLIC4, tcp(doff=15))) == MALFORMED
    assert verdict(e, frame4(PUBLIC4, tcp(doff=6, opts=b"\x02\x04\x05\xb4"))) == PASS
    # reserved fragment bit
    assert verdict(e, frame4(PUBLIC4, frag=0x8000)) == MALFORMED


def test_ipv4_fragments():
    e = engine("public", rules=["deny@203.0.113.0/24:tcp:443", "allow@198.51.100.0/24:udp",
                                "deny@192.0.2.0/24"])
    # first fragment (MF, offset 0): judged with its ports
    assert verdict(e, frame4(PUBLIC4, tcp(dport=80), frag=0x2000)) == PASS
    assert verdict(e, frame4("203.0.113.9", tcp(dport=443), frag=0x2000)) == DENIED
    # first fragment too short for the transport header
    assert verdict(e, frame4(PUBLIC4, tcp()[:12], frag=0x2000)) == MALFORMED
    # non-first fragments: no ports; addresses (and the protocol) decide ...
    assert verdict(e, frame4(PUBLIC4, b"x" * 16, frag=0x2000 | 100)) == PASS
    assert verdict(e, frame4("10.1.2.3", b"x" * 16, frag=100)) == DENIED
    assert verdict(e, frame4("198.51.100.1", b"x" * 16, UDP, frag=100)) == PASS
    assert verdict(e, frame4("192.0.2.1", b"x" * 16, UDP, frag=100)) == DENIED
    # ... unless the first rule they meet needs a port: denied, counted
    before = e.stats()["port_unknown"]
    assert verdict(e, frame4("203.0.113.9", b"x" * 16, TCP, frag=100)) == DENIED
    assert e.stats()["port_unknown"] == before + 1
    # a UDP fragment is not held up by the TCP port rule
    assert verdict(e, frame4("203.0.113.9", b"x" * 16, UDP, frag=100)) == PASS
    # offset 1 (8 bytes) on TCP could rewrite the first fragment's flags (RFC 1858)
    assert verdict(e, frame4(PUBLIC4, b"x" * 16, TCP, frag=1)) == MALFORMED
    assert verdict(e, frame4(PUBLIC4, b"x" * 16, UDP, frag=1)) == PASS
    # no RST for a non-first fragment (no TCP header to answer)
    assert e.check(frame4("10.0.0.1", b"x" * 16, TCP, frag=100)) == (DENIED, b"")


def test_ipv6_extension_headers():
    e = engine("all", rules=["deny@::/0:tcp:22"])
    chain = ext(60, bytes(6)) + ext(6, bytes(14))  # hop-by-hop -> dest options (16 B) -> TCP
    assert verdict(e, frame6(PUBLIC6, tcp(dport=22), 0, ext=chain)) == DENIED
    assert verdict(e, frame6(PUBLIC6, tcp(dport=23), 0, ext=chain)) == PASS
    # routing header with no segments left is transparent; with segments left it is refused
    rh0 = bytes([6, 0, 4, 0]) + bytes(4)
    rh1 = bytes([6, 2, 4, 1]) + bytes(4) + bytes(16)
    assert verdict(e, frame6(PUBLIC6, tcp(dport=23), 43, ext=rh0)) == PASS
    assert verdict(e, frame6(PUBLIC6, tcp(dport=23), 43, ext=rh1)) == MALFORMED
    # AH counts its length in 4-byte units
    ah = bytes([6, 4]) + bytes(22)  # (4 + 2) * 4 = 24 bytes
    assert verdict(e, frame6(PUBLIC6, tcp(dport=22), 51, ext=ah)) == DENIED
    # no next header: no transport, addresses decide
    assert verdict(e, frame6(PUBLIC6, b"", 59)) == PASS
    # too many extension headers
    many = b"".join(ext(60) for _ in range(9)) + ext(6)
    assert verdict(e, frame6(PUBLIC6, tcp(dport=23), 60, ext=many)) == MALFORMED
    eight = b"".join(ext(60) for _ in range(7)) + ext(6)
    assert verdict(e, frame6(PUBLIC6, tcp(dport=23), 60, ext=eight)) == PASS
    # a header that runs past the payload
    assert verdict(e, frame6(PUBLIC6, b"", 0, ext=bytes([6, 3]) + bytes(6))) == MALFORMED
    assert verdict(e, frame6(PUBLIC6, b"", 0, ext=bytes([6, 0, 0]))) == MALFORMED


def test_ipv6_fragments():
    e = engine("public", rules=["deny@2001:db8::/32:tcp:443"])
    # first fragment: ports after the fragment header
    assert verdict(e, frame6("2001:db8::1", tcp(dport=443), 44, ext=frag6(6, 0, True))) == DENIED
    assert verdict(e, frame6("2001:db8::1", tcp(dport=80), 44, ext=frag6(6, 0, True))) == PASS
    assert verdict(e, frame6("2001:db8::1", tcp()[:10], 44, ext=frag6(6, 0, True))) == MALFORMED
    # later fragments: the port rule would be needed -> denied; elsewhere addresses decide
    assert verdict(e, frame6("2001:db8::1", b"y" * 24, 44, ext=frag6(6, 100))) == DENIED
    assert e.stats()["port_unknown"] == 1
    assert verdict(e, frame6("2001:db8::1", b"y" * 24, 44, ext=frag6(17, 100))) == PASS
    assert verdict(e, frame6(PUBLIC6, b"y" * 24, 44, ext=frag6(6, 100))) == PASS
    assert verdict(e, frame6("fd12::1", b"y" * 24, 44, ext=frag6(6, 100))) == DENIED
    # truncated fragment header
    assert verdict(e, frame6(PUBLIC6, b"", 44, ext=frag6(6)[:6])) == MALFORMED


def test_truncated_frames_are_malformed_and_counted():
    e = engine("all")
    whole = [frame4(PUBLIC4, tcp(dport=80)), frame4(PUBLIC4, udp(), UDP),
             frame6(PUBLIC6, tcp(dport=80)), frame6(PUBLIC6, udp(), UDP),
             eth(0x0800, ip4(PUBLIC4, tcp()), vlan=3)]
    n = 0
    for f in whole:
        assert verdict(e, f) == PASS
        for cut in range(len(f)):
            assert verdict(e, f[:cut]) == MALFORMED, (f.hex(), cut)
            n += 1
    assert verdict(e, b"") == MALFORMED
    assert e.stats()["malformed"] == n + 1
    # IPv6 payload length larger than what is there
    assert verdict(e, frame6(PUBLIC6, tcp(), plen=100)) == MALFORMED
    assert e.check(frame4(PUBLIC4)[:30]) == (MALFORMED, b"")


# ---- the RST ---------------------------------------------------------------------------

@pytest.mark.parametrize("family", [4, 6])
def test_denied_syn_gets_an_rst(family):
    dst = "10.20.30.40" if family == 4 else "fd00:1::40"
    e = engine("public")
    v, reply = e.check((frame4 if family == 4 else frame6)(dst, tcp(40001, 5432, seq=0xFFFFFFFF, flags=SYN)))
    assert v == DENIED and reply
    (src, to), (sport, dport, seq, ack, flags) = parse_rst(reply, family)
    guest = GUEST4 if family == 4 else GUEST6
    assert (str(src), str(to)) == (str(ipaddress.ip_address(dst)), str(ipaddress.ip_address(guest)))
    assert (sport, dport) == (5432, 40001)
    assert (seq, ack, flags) == (0, 0, RST | ACK)  # SYN counts one: 0xffffffff + 1 wraps
    assert e.stats()["resets"] == 1


def test_rst_to_a_segment_with_ack_and_data():
    e = engine("public")
    # with ACK: seq = its ack, no ACK flag
    _, reply = e.check(frame4("172.16.0.1", tcp(1, 2, seq=500, ack=777, flags=ACK | PSH, payload=b"abc")))
    assert parse_rst(reply, 4)[1] == (2, 1, 777, 0, RST)
    # without ACK: ack = seq + data + SYN + FIN
    _, reply = e.check(frame6("fc00::1", tcp(1, 2, seq=500, flags=SYN | FIN, payload=b"abcd")))
    assert parse_rst(reply, 6)[1] == (2, 1, 0, 506, RST | ACK)
    # behind a VLAN tag, the RST carries the same tag
    _, reply = e.check(eth(0x0800, ip4("192.168.9.9", tcp(7, 8, flags=SYN)), vlan=42))
    assert parse_rst(reply, 4, vlan=42)[1] == (8, 7, 0, 1001, RST | ACK)
    # with IPv4 options and an IPv6 extension header in the request, a plain reply
    _, reply = e.check(frame4("10.0.0.9", tcp(7, 8, flags=SYN), options=bytes([1, 1, 1, 1])))
    assert parse_rst(reply, 4)[1] == (8, 7, 0, 1001, RST | ACK)
    _, reply = e.check(frame6("fd00::9", tcp(7, 8, flags=SYN), 0, ext=ext(6)))
    assert parse_rst(reply, 6)[1] == (8, 7, 0, 1001, RST | ACK)


def test_no_rst_for_rst_udp_allowed_or_small_buffer():
    from vmm import _binding
    e = engine("public")
    assert e.check(frame4("10.0.0.1", tcp(flags=RST))) == (DENIED, b"")
    assert e.check(frame4("10.0.0.1", tcp(flags=RST | ACK, ack=5))) == (DENIED, b"")
    assert e.check(frame4("10.0.0.1", udp(), UDP)) == (DENIED, b"")
    assert e.check(frame4(PUBLIC4, tcp())) == (PASS, b"")
    ffi, lib = _binding.ffi, _binding.lib
    f = frame6("fc00::1", tcp())
    buf, n = ffi.new("uint8_t[]", 96), ffi.new("size_t *", 73)
    assert lib.vmm_net_policy_check(e.handle, f, len(f), buf, n) == DENIED and n[0] == 0
    n[0] = 74  # exactly Ethernet + IPv6 + TCP
    assert lib.vmm_net_policy_check(e.handle, f, len(f), buf, n) == DENIED and n[0] == 74
    parse_rst(bytes(ffi.buffer(buf, 74)), 6)
    assert lib.vmm_net_policy_check(e.handle, f, len(f), ffi.NULL, ffi.NULL) == DENIED


# ---- fuzz ------------------------------------------------------------------------------

def _mutate(rng, f):
    f = bytearray(f)
    for _ in range(rng.randint(1, 6)):
        op = rng.random()
        if op < 0.5 and f:
            f[rng.randrange(len(f))] = rng.randrange(256)
        elif op < 0.7 and f:
            del f[rng.randrange(len(f)):]
        elif op < 0.85:
            f[rng.randrange(len(f) + 1):0] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        elif f:
            i = rng.randrange(len(f))
            f[i:i + 2] = rng.choice([b"\0\0", b"\xff\xff", b"\x81\x00", b"\x86\xdd", b"\x08\x00"])
    return bytes(f)


@pytest.mark.fuzz
def test_fuzz_no_crash():
    """Random and mutated frames for a few seconds (NET_POLICY_FUZZ_SECONDS), on a clock that
    advances a millisecond a frame; replay exactly with the NET_POLICY_FUZZ_SEED=<seed>
    VMM_FUZZ_ROUNDS=<n> that a failure names."""
    seed = fuzz_run.seed("net policy fuzz", "NET_POLICY_FUZZ_SEED")
    budget = fuzz_run.Budget.from_env(3, "NET_POLICY_FUZZ_SECONDS")
    rng = random.Random(seed)
    e = engine("public", rules=["deny@203.0.113.0/24:tcp:443", "allow@fd00::/8:udp:1-100"])
    now = 1_000_000
    seeds = [frame4(PUBLIC4), frame4("10.0.0.1", udp(), UDP), frame6(PUBLIC6), frame6("fc00::1"),
             frame4(PUBLIC4, tcp(), options=bytes([68, 8, 5, 0]) + bytes(4)),
             frame6(PUBLIC6, tcp(), 0, ext=ext(44, bytes(6)) + frag6(6, 0, True)),
             frame4("203.0.113.1", b"z" * 20, frag=0x2000 | 7),
             eth(0x0800, ip4("10.0.0.1", tcp()), vlan=1), eth(0x0806, bytes(28))]
    n, verdicts = 0, {PASS: 0, DENIED: 0, MALFORMED: 0}
    with fuzz_run.seed_named_on_failure("NET_POLICY_FUZZ_SEED", seed, budget):
        while budget.more():
            now += 1
            e.set_clock(now)
            if rng.random() < 0.1:
                f = bytes(rng.randrange(256) for _ in range(rng.randrange(120)))
            else:
                f = _mutate(rng, rng.choice(seeds))
            v, reply = e.check(f)
            verdicts[v] += 1
            if reply:  # whatever the input, an RST we build is well formed
                assert v == DENIED
                off = 18 if reply[12:14] == b"\x81\x00" else 14
                family = 4 if reply[off - 2:off] == b"\x08\x00" else 6
                vlan = struct.unpack("!H", reply[14:16])[0] if off == 18 else None
                assert reply[0:6] == f[6:12] and reply[6:12] == f[0:6]
                parse_rst(GUEST_MAC + GW_MAC + reply[12:], family, vlan)
            n += 1
        st = e.stats()
        assert st["passed"] + st["denied"] + st["malformed"] + st["infra"] == n
    print(f"{n} frames: {verdicts}")
    fuzz_run.summary("net policy fuzz", "NET_POLICY_FUZZ_SEED", seed, budget, frames=n)
