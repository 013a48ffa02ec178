"""Ethernet/IPv4/IPv6/TCP/UDP frames built with struct, for the egress policy's tests
(tests/test_net_policy.py) and any test that feeds a NIC synthetic guest frames; and the
checks of a TCP RST a device answers with (checksums verified here, in Python).

Addresses in these frames are only bytes: nothing built here is sent anywhere."""
import ipaddress
import struct

GUEST_MAC = bytes.fromhex("525400123456")
GW_MAC = bytes.fromhex("9a5521000001")
GUEST4, GUEST6 = "10.0.2.15", "fd00::15"
GATEWAY4, GATEWAY6 = "10.0.2.2", "fd00::2"
PUBLIC4, PUBLIC6 = "93.184.216.34", "2606:2800:220:1::1"
TCP, UDP, ICMP, ICMP6 = 6, 17, 1, 58
SYN, ACK, RST, FIN, PSH = 0x02, 0x10, 0x04, 0x01, 0x08


# ---- frame builders -------------------------------------------------------------------

def csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def pseudo(src: bytes, dst: bytes, proto: int, length: int) -> bytes:
    if len(src) == 4:
        return src + dst + struct.pack("!BBH", 0, proto, length)
    return src + dst + struct.pack("!IxxxB", length, proto)


def tcp(sport=40000, dport=443, seq=1000, ack=0, flags=SYN, payload=b"", doff=5, opts=b""):
    hdr = struct.pack("!HHIIBBHHH", sport, dport, seq, ack, doff << 4, flags, 65535, 0, 0)
    return hdr + opts + payload


def udp(sport=40000, dport=53, payload=b"q"):
    return struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload


def eth(ethertype, payload, vlan=None, dst=GW_MAC, src=GUEST_MAC):
    tag = struct.pack("!HH", 0x8100, vlan) if vlan is not None else b""
    return dst + src + tag + struct.pack("!H", ethertype) + payload


def ip4(dst, l4=b"", proto=TCP, src=GUEST4, options=b"", frag=0, total=None, ihl=None):
    ihl = ihl if ihl is not None else 5 + len(options) // 4
    total = total if total is not None else 20 + len(options) + len(l4)
    hdr = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, total, 1, frag, 64, proto, 0,
                      ipaddress.ip_address(src).packed, ipaddress.ip_address(dst).packed)
    return hdr + options + l4


def ip6(dst, l4=b"", proto=TCP, src=GUEST6, plen=None, ext=b"", hop_limit=64):
    plen = plen if plen is not None else len(ext) + len(l4)
    return struct.pack("!IHBB16s16s", 6 << 28, plen, proto, hop_limit,
                       ipaddress.ip_address(src).packed, ipaddress.ip_address(dst).packed) + ext + l4


def frame4(dst, l4=None, proto=TCP, **kw):
    return eth(0x0800, ip4(dst, tcp() if l4 is None else l4, proto, **kw))


def frame6(dst, l4=None, proto=TCP, **kw):
    return eth(0x86DD, ip6(dst, tcp() if l4 is None else l4, proto, **kw))


def frame(dst, l4=None, proto=TCP):
    return (frame6 if ":" in dst else frame4)(dst, l4, proto)


def ext(nh, body=bytes(6)):
    """An 8-byte-unit extension header (hop-by-hop, routing, destination options)."""
    assert (len(body) + 2) % 8 == 0
    return bytes([nh, (len(body) + 2) // 8 - 1]) + body


def frag6(nh, offset=0, more=False):
    return struct.pack("!BBHI", nh, 0, offset << 3 | more, 0x1234)


def parse_rst(reply, family, vlan=None):
    """Checks the reply's headers and checksums; returns (ip fields, tcp fields)."""
    off = 14
    assert reply[0:6] == GUEST_MAC and reply[6:12] == GW_MAC
    if vlan is not None:
        assert struct.unpack("!HH", reply[12:16]) == (0x8100, vlan)
        off = 18
    assert struct.unpack("!H", reply[off - 2:off]) == (0x0800 if family == 4 else 0x86DD,)
    ip = reply[off:]
    if family == 4:
        assert len(ip) == 40
        ver_ihl, _, total, _, _, ttl, proto, _, src, dst = struct.unpack("!BBHHHBBH4s4s", ip[:20])
        assert (ver_ihl, total, proto) == (0x45, 40, TCP) and ttl > 0
        assert csum(ip[:20]) == 0, "IPv4 header checksum"
        seg = ip[20:]
    else:
        assert len(ip) == 60
        vtf, plen, nh, hlim, src, dst = struct.unpack("!IHBB16s16s", ip[:40])
        assert (vtf >> 28, plen, nh) == (6, 20, TCP) and hlim > 0
        seg = ip[40:]
    assert csum(pseudo(src, dst, TCP, len(seg)) + seg) == 0, "TCP checksum"
    sport, dport, seq, ack, doff, flags, win, _, urg = struct.unpack("!HHIIBBHHH", seg)
    assert doff >> 4 == 5 and urg == 0
    return (ipaddress.ip_address(src), ipaddress.ip_address(dst)), (sport, dport, seq, ack, flags)
