"""virtio-vsock end to end against its Unix socket host side: connections opened from both
ends, random data both ways within the credit each side grants, closed by either side
(shutdown, reset, hang-up) at random moments; every byte must arrive, in order.

Usage: python -m support.fuzz_vsock_peer SECONDS ROUNDS SEED DIR

The guest is a well-behaved driver (support.vsock_guest) except for stray packets to ports
no connection uses, which the device must reset without disturbing the others. Checked:
on every connection, what each side received is a prefix of what the other sent; when the
host hangs up, the guest has everything the host sent before; when the guest shuts down,
the host has everything before its EOF; at the end, after a quiet period, both directions
are complete.
"""
import fcntl
import os
import random
import socket
import struct
import sys
import termios
import time

from support.fuzz_run import Budget
from support.vsock_guest import (OP_CREDIT_REQUEST, OP_CREDIT_UPDATE, OP_REQUEST, OP_RESPONSE, OP_RST,
                                 OP_RW, OP_SHUTDOWN, Guest)
from vmm.devices import Vsock
from vmm.engines.virtio_device import open_device

CID = 11
G_BUF = 256 * 1024          # the guest's receive buffer, granted to the device
LISTEN_PORTS = (7000, 7001)
MAX_CONNS = 12
FIRST_GUEST_PORT = 10000   # guest ports count up from here; strays come from below
HELLO = struct.Struct("<Q")   # a guest-initiated connection's first bytes: its guest port


class Conn:
    def __init__(self, gport, hport, sock, origin):
        self.gport, self.hport, self.sock, self.origin = gport, hport, sock, origin
        self.g2h_sent, self.g2h_recv = bytearray(), bytearray()
        self.h2g_sent, self.h2g_recv = bytearray(), bytearray()
        self.peer_buf, self.peer_fwd = 0, 0
        self.open_ = False          # the device said RESPONSE / the guest answered REQUEST
        self.guest_shut = False
        self.host_closed = None     # "half" (shutdown SHUT_WR) or "full" (close)

    def credit(self):
        return max(0, self.peer_buf - (len(self.g2h_sent) - self.peer_fwd))

    def check_prefixes(self):
        assert self.g2h_sent.startswith(self.g2h_recv), f"{self}: host got bytes the guest never sent"
        assert self.h2g_sent.startswith(self.h2g_recv), f"{self}: guest got bytes the host never sent"

    def __str__(self):
        return (f"conn g{self.gport}/h{self.hport} ({self.origin}; g->h {len(self.g2h_recv)}/{len(self.g2h_sent)}, "
                f"h->g {len(self.h2g_recv)}/{len(self.h2g_sent)})")


def describe(c):
    """c, with how much the host wrote that the device has not read yet (its socket's
    send queue): stuck there, the device stopped reading; else it holds the bytes itself."""
    queued = "closed"
    if c.sock is not None and c.sock.fileno() >= 0:
        queued = struct.unpack("i", fcntl.ioctl(c.sock.fileno(), termios.TIOCOUTQ, b"\0" * 4))[0]
    return f"{c} [host bytes not yet read by the device: {queued}]"


def loop_probe(g, path):
    """For a stall report: whether the device still serves its host sockets at all (a new
    host client's CONNECT needs the transport's event loop to reach the guest), which tells
    a stopped loop from a connection the device no longer polls."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
    s.sendall(b"CONNECT 9\n")       # below FIRST_GUEST_PORT: no connection of the run
    end = time.monotonic() + 2
    try:
        while time.monotonic() < end:
            if any(p.op == OP_REQUEST and p.dst_port == 9 for p in g.poll(0.05, want=0)):
                return "the device's event loop still serves new host clients"
        return "the device's event loop serves no new host client either (2 s)"
    finally:
        s.close()


def main(budget, seed, d):
    rnd = random.Random(seed)
    path = os.path.join(d, "v.sock")
    dev = open_device(Vsock(CID, path))
    g = Guest(dev, cid=CID)
    listeners = {}
    for port in LISTEN_PORTS:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind(f"{path}_{port}")
        s.listen(64)
        s.setblocking(False)
        listeners[port] = s
    conns = {}              # (gport, hport) -> Conn
    unclaimed = []          # (listener port, accepted socket) not yet matched to a Conn
    waiting = {}            # host-initiated: guest port -> Conn without its host port yet
    next_port = [FIRST_GUEST_PORT]
    stats = {"opened": 0, "guest_closes": 0, "host_closes": 0, "resets": 0, "bytes": 0, "strays": 0}

    def send(c, op, payload=b"", flags=0):
        g.send(op, c.gport, c.hport, payload, buf_alloc=G_BUF, fwd_cnt=len(c.h2g_recv) & 0xFFFFFFFF, flags=flags)

    def forget(c):
        """The device reset c. After a guest shutdown, the host must hold every byte the
        guest sent, then EOF."""
        conns.pop((c.gport, c.hport), None)
        if c.sock is None or c.sock.fileno() < 0:
            return
        if c.guest_shut:
            c.sock.settimeout(5)
            try:
                while data := c.sock.recv(1 << 20):
                    c.g2h_recv += data
            except ConnectionResetError:
                pass
            strip_ok(c)
            assert c.g2h_recv == c.g2h_sent, f"{c}: guest data lost at its shutdown"
        c.sock.close()

    def strip_ok(c):
        """A host client first reads "OK <host port>\\n", then the stream."""
        if c.origin == "host" and b"\n" in c.g2h_recv:
            line = bytes(c.g2h_recv[:c.g2h_recv.index(b"\n") + 1])
            assert line == f"OK {c.hport}\n".encode(), f"{c}: bad reply {line!r}"
            del c.g2h_recv[:len(line)]
            c.origin = "host+ok"
        return c.origin != "host"

    def handle(pkts):
        for p in pkts:
            if p.op == OP_REQUEST and p.dst_port in waiting:      # a host client's CONNECT
                c = waiting.pop(p.dst_port)
                c.hport = p.src_port
                conns[(c.gport, c.hport)] = c
                c.peer_buf, c.peer_fwd, c.open_ = p.buf_alloc, p.fwd_cnt, True
                send(c, OP_RESPONSE)
                continue
            c = conns.get((p.dst_port, p.src_port))
            if c is None:
                continue    # resets for strays and for connections already forgotten
            c.peer_buf, c.peer_fwd = p.buf_alloc, p.fwd_cnt
            if p.op == OP_RESPONSE and not c.open_:
                c.open_ = True
                hello = HELLO.pack(c.gport)
                c.g2h_sent += hello
                send(c, OP_RW, hello)
            elif p.op == OP_RW:
                c.h2g_recv += p.payload
                c.check_prefixes()
            elif p.op == OP_CREDIT_REQUEST:
                send(c, OP_CREDIT_UPDATE)
            elif p.op in (OP_SHUTDOWN, OP_RST):
                if c.host_closed == "half":   # everything the host wrote before it is here
                    assert c.h2g_recv == c.h2g_sent, f"{c}: host data lost at its half-close"
                # (A full close is a reset when data is still on the way, as with TCP: what
                # the host wrote may be lost, but the guest must hear that the connection ended.)
                if p.op == OP_RST:
                    stats["resets"] += 1
                    forget(c)
                elif c.host_closed and not c.guest_shut:   # the guest closes its end too
                    send(c, OP_RST)
                    forget(c)
        if pkts:   # the guest consumed what came: tell the device, so the host may send more
            for c in list(conns.values()):
                if c.open_ and not c.guest_shut:
                    send(c, OP_CREDIT_UPDATE)

    def host_io():
        # Accepted sockets wait in `unclaimed` until their first 8 bytes, the hello the guest
        # sent after RESPONSE, say which connection they are: the device may dial in a
        # different order than the guest asked (a full backlog is retried later).
        for port, lst in listeners.items():
            while True:
                try:
                    s, _ = lst.accept()
                except BlockingIOError:
                    break
                s.setblocking(False)
                unclaimed.append((port, s))
        for port, s in list(unclaimed):
            try:
                hello = s.recv(HELLO.size, socket.MSG_PEEK)
            except BlockingIOError:
                continue
            except ConnectionResetError:
                hello = b""
            if 0 < len(hello) < HELLO.size:
                continue
            unclaimed.remove((port, s))
            c = conns.get((HELLO.unpack(hello)[0], port)) if hello else None
            if c is None:
                s.close()   # a connection the guest or the device already ended
            else:
                assert c.sock is None, f"{c}: accepted twice"
                c.sock = s
        for c in list(conns.values()):
            if c.sock is None or c.sock.fileno() < 0:
                continue
            try:
                while True:
                    data = c.sock.recv(1 << 20)
                    if not data:
                        break
                    c.g2h_recv += data
            except (BlockingIOError, ConnectionResetError):
                pass
            if strip_ok(c):
                c.check_prefixes()

    while budget.more():
        k = rnd.random()
        live = [c for c in conns.values() if c.open_ and c.sock is not None and not c.host_closed
                and not c.guest_shut]
        if k < 0.08 and len(conns) + len(waiting) < MAX_CONNS:
            gport = next_port[0]
            next_port[0] += 1
            if rnd.random() < 0.5:           # guest-initiated
                c = Conn(gport, rnd.choice(LISTEN_PORTS), None, "guest")
                conns[(c.gport, c.hport)] = c
                send(c, OP_REQUEST)
            else:                           # host-initiated
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                s.connect(path)
                s.sendall(f"CONNECT {gport}\n".encode())
                s.setblocking(False)
                waiting[gport] = Conn(gport, None, s, "host")
            stats["opened"] += 1
        elif k < 0.4 and live:              # guest sends within the device's credit
            c = rnd.choice(live)
            n = min(c.credit(), rnd.choice([1, 100, 4096, 65536]))
            if n:
                data = rnd.randbytes(n)
                c.g2h_sent += data
                send(c, OP_RW, data)
                stats["bytes"] += n
        elif k < 0.7 and live:              # host sends what its socket takes
            c = rnd.choice(live)
            data = rnd.randbytes(rnd.choice([1, 100, 4096, 100000]))
            try:
                n = c.sock.send(data)
                c.h2g_sent += data[:n]
                stats["bytes"] += n
            except BlockingIOError:
                pass
        elif k < 0.74 and live:             # the guest shuts down (or resets) a connection
            c = rnd.choice(live)
            if rnd.random() < 0.7:
                c.guest_shut = True
                send(c, OP_SHUTDOWN, flags=3)
            else:
                send(c, OP_RST)
                forget(c)
            stats["guest_closes"] += 1
        elif k < 0.78 and live:             # the host hangs up: half or whole
            c = rnd.choice(live)
            c.host_closed = rnd.choice(["half", "full"])
            if c.host_closed == "half":
                c.sock.shutdown(socket.SHUT_WR)
            else:
                c.sock.close()
            stats["host_closes"] += 1
        elif 0.78 <= k < 0.8:               # a stray packet for nobody
            # From a guest port below FIRST_GUEST_PORT: never a connection's, however many a
            # long run opens (to a host port that may well be one: the pair is what counts).
            g.send(rnd.choice([OP_RW, OP_RST, OP_SHUTDOWN, OP_CREDIT_UPDATE, OP_RESPONSE]),
                   rnd.randrange(1024, FIRST_GUEST_PORT), rnd.choice([7002, 1 << 30 | rnd.getrandbits(16)]),
                   rnd.randbytes(rnd.randrange(0, 100)))
            stats["strays"] += 1
        handle(g.poll(0, want=0))
        host_io()
    # Quiet period: everything still open must be complete both ways.
    deadline = time.monotonic() + 15
    def incomplete():
        """Connections with data still on the way, or a host close the guest was not told
        of (a guest shutdown is checked at its reset; guest data to a host that closed its
        socket has nowhere to go)."""
        return [c for c in conns.values() if c.open_ and c.sock is not None and not c.guest_shut and
                (c.host_closed == "full" or c.h2g_recv != c.h2g_sent
                 or c.sock.fileno() >= 0 and c.g2h_recv != c.g2h_sent)]
    while incomplete() and time.monotonic() < deadline:
        handle(g.poll(0.01, want=1))
        host_io()
    if incomplete():
        stuck = "; ".join(map(describe, incomplete()))
        raise AssertionError(f"after round {budget.rounds}: {stuck}; device counters {dev.counters()}, broken: "
                             f"{dev.broken}; {loop_probe(g, path)}")
    for c in list(conns.values()) + list(waiting.values()):
        if c.sock is not None:
            c.sock.close()
    for _, s in unclaimed:
        s.close()
    for s in listeners.values():
        s.close()
    print(f"rounds={budget.rounds} " + " ".join(f"{k}={v}" for k, v in stats.items()))
    dev.close()


if __name__ == "__main__":
    main(Budget.from_argv(sys.argv[1:3]), int(sys.argv[3]), sys.argv[4])
