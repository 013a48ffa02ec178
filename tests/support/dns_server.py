"""A tiny authoritative DNS server for tests (stdlib only, UDP): fixed A records, run in a
network namespace the test made, so a guest's name lookup never leaves the machine.

    srv = DnsServer("192.0.2.53", {"pkg.test.internal": "192.0.2.80"})
    srv.start() ... srv.queries -> [("pkg.test.internal", 1), ...] ... srv.close()

Answers: an A query for a known name gets its address; any other type for a known name
(AAAA, which resolvers ask alongside A) gets NOERROR with no answer; an unknown name gets
NXDOMAIN; a packet that is not a well-formed query is dropped.
"""
from __future__ import annotations

import ipaddress
import socket
import struct
import threading
from typing import Dict, List, Optional, Tuple

TYPE_A = 1
CLASS_IN = 1
NXDOMAIN = 3
TTL = 60


def parse_question(packet: bytes) -> Optional[Tuple[int, int, str, int, int, int]]:
    """(id, flags, name, qtype, qclass, end of the question) of a one-question query, or
    None for anything else (responses, no question, compressed or overlong names)."""
    if len(packet) < 12:
        return None
    qid, flags, qdcount = struct.unpack_from("!HHH", packet)
    if flags & 0x8000 or qdcount != 1:
        return None
    labels, pos = [], 12
    while True:
        if pos >= len(packet):
            return None
        n = packet[pos]
        pos += 1
        if n == 0:
            break
        if n & 0xC0 or pos + n > len(packet):   # no compression in a question we accept
            return None
        labels.append(packet[pos:pos + n].decode("ascii", "replace").lower())
        pos += n
    if pos + 4 > len(packet):
        return None
    qtype, qclass = struct.unpack_from("!HH", packet, pos)
    return qid, flags, ".".join(labels), qtype, qclass, pos + 4


def answer(packet: bytes, records: Dict[str, str]) -> Optional[bytes]:
    """The response to a query packet, or None to drop it."""
    q = parse_question(packet)
    if q is None:
        return None
    qid, flags, name, qtype, qclass, end = q
    question = packet[12:end]
    # QR, the query's opcode and RD echoed, AA (we own these names), RA clear.
    rflags = 0x8000 | (flags & 0x7900) | 0x0400
    address = records.get(name)
    if address is None:
        return struct.pack("!HHHHHH", qid, rflags | NXDOMAIN, 1, 0, 0, 0) + question
    if qtype != TYPE_A or qclass != CLASS_IN:
        return struct.pack("!HHHHHH", qid, rflags, 1, 0, 0, 0) + question
    rr = struct.pack("!HHHIH", 0xC00C, TYPE_A, CLASS_IN, TTL, 4) + \
        ipaddress.IPv4Address(address).packed
    return struct.pack("!HHHHHH", qid, rflags, 1, 1, 0, 0) + question + rr


class DnsServer:
    """answer() on a UDP socket at (address, port), in a daemon thread."""

    def __init__(self, address: str, records: Dict[str, str], port: int = 53):
        self.records = {k.lower().rstrip("."): v for k, v in records.items()}
        self.queries: List[Tuple[str, int]] = []
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.bind((address, port))
        self.address = self._sock.getsockname()
        self._thread = threading.Thread(target=self._serve, name="dns", daemon=True)

    def start(self) -> "DnsServer":
        self._thread.start()
        return self

    def _serve(self) -> None:
        while True:
            try:
                packet, peer = self._sock.recvfrom(4096)
            except OSError:
                return   # closed
            q = parse_question(packet)
            if q is not None:
                self.queries.append((q[2], q[3]))
            reply = answer(packet, self.records)
            if reply is not None:
                try:
                    self._sock.sendto(reply, peer)
                except OSError:
                    pass

    def close(self) -> None:
        # shutdown() wakes the thread blocked in recvfrom; close() alone may not.
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._sock.close()
        self._thread.join(2)
