"""DNS responses built with struct, for the domain rules' tests (tests/test_net_policy.py):
messages (with or without name compression, or broken on purpose) and the frames that
carry them from the resolver to the guest. Nothing built here is sent anywhere."""
from __future__ import annotations

import ipaddress
import struct

from .net_frames import GUEST4, GUEST6, GUEST_MAC, GW_MAC, UDP, eth, ip4, ip6

RESOLVER4, RESOLVER6 = "10.0.2.3", "fd00::3"
A, CNAME, AAAA, TXT = 1, 5, 28, 16
IN = 1


def name(n: str) -> bytes:
    """A name in wire form, uncompressed ("" is the root)."""
    out = b""
    for label in (n.rstrip(".").split(".") if n.strip(".") else []):
        raw = label.encode()
        out += bytes([len(raw)]) + raw
    return out + b"\0"


def pointer(offset: int) -> bytes:
    return struct.pack("!H", 0xC000 | offset)


def header(qd=1, an=0, ns=0, ar=0, flags=0x8180, ident=0x1234) -> bytes:
    """flags 0x8180: a response (QR), recursion desired and available, rcode 0."""
    return struct.pack("!HHHHHH", ident, flags, qd, an, ns, ar)


def question(qname: str | bytes, qtype=A) -> bytes:
    raw = qname if isinstance(qname, bytes) else name(qname)
    return raw + struct.pack("!HH", qtype, IN)


def rr(owner: str | bytes, rtype: int, rdata: bytes, ttl=300, rclass=IN) -> bytes:
    raw = owner if isinstance(owner, bytes) else name(owner)
    return raw + struct.pack("!HHIH", rtype, rclass, ttl, len(rdata)) + rdata


def a(owner, addr, ttl=300):
    return rr(owner, A, ipaddress.IPv4Address(addr).packed, ttl)


def aaaa(owner, addr, ttl=300):
    return rr(owner, AAAA, ipaddress.IPv6Address(addr).packed, ttl)


def cname(owner, target, ttl=300):
    return rr(owner, CNAME, target if isinstance(target, bytes) else name(target), ttl)


def response(qname, answers=(), qtype=A, flags=0x8180) -> bytes:
    """A response to one question with the given answer records (already built)."""
    answers = list(answers)
    return header(1, len(answers), flags=flags) + question(qname, qtype) + b"".join(answers)


def compressed_response(qname: str, addrs, ttl=300) -> bytes:
    """The usual shape: each answer's owner is a pointer to the question's name (offset 12)."""
    answers = [rr(pointer(12), A if ":" not in x else AAAA, ipaddress.ip_address(x).packed, ttl)
               for x in addrs]
    return header(1, len(answers)) + question(qname) + b"".join(answers)


def udp_to_guest(payload: bytes, sport=53, dport=33333) -> bytes:
    return struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload


def dns_frame(msg: bytes, src=RESOLVER4, sport=53, dport=33333) -> bytes:
    """msg as the backend delivers it: resolver -> guest, UDP from port 53."""
    l4 = udp_to_guest(msg, sport, dport)
    if ":" in src:
        return eth(0x86DD, ip6(GUEST6, l4, UDP, src=src), dst=GUEST_MAC, src=GW_MAC)
    return eth(0x0800, ip4(GUEST4, l4, UDP, src=src), dst=GUEST_MAC, src=GW_MAC)
