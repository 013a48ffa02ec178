"""Random vsock packets from a hostile "guest" mixed with host clients coming and going.
Usage: python -m support.fuzz_vsock SECONDS ROUNDS SEED DIR (ROUNDS 0: as many as fit in
SECONDS; else exactly that many, to replay a run; see support.fuzz_run). Every input comes from the seed
(what the host sockets see of the device's timing cannot). At the end: a host connection
to the guest must succeed whatever the guest holds (slots are reserved for the host); then
the guest closes what it opened and a clean guest connection must work."""
import os
import random
import socket
import sys
import time

from support.fuzz_run import Budget
from support.vsock_guest import OP_REQUEST, OP_RESPONSE, OP_RST, OP_RW, Guest  # noqa: E402
from vmm.devices import Vsock  # noqa: E402
from vmm.engines.virtio_device import open_device  # noqa: E402

CID = 9
DEADLINE = 15.0  # answers can queue behind tens of thousands of RSTs on a loaded machine


class Known:
    """The connections the device told the guest about, by the guest's (port, host port):
    what a guest closes when it is done."""

    def __init__(self):
        self.pairs = set()

    def see(self, pkts):
        for p in pkts:
            if p.op in (OP_REQUEST, OP_RESPONSE):
                self.pairs.add((p.dst_port, p.src_port))
        return pkts


def wait_for(g, known, match):
    end = time.monotonic() + DEADLINE
    while time.monotonic() < end:
        for p in known.see(g.poll(0.5, want=1)):
            if match(p):
                return p
    return None


def main(budget, seed, d):
    rnd = random.Random(seed)
    path = os.path.join(d, "f.sock")
    dev = open_device(Vsock(CID, path))
    g = Guest(dev, cid=CID)
    known = Known()
    listeners = []
    for port in (7000, 7001):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind(f"{path}_{port}")
        s.listen(64)
        s.setblocking(False)
        listeners.append(s)
    clients, accepted = [], []
    sent = 0
    while budget.more():
        k = rnd.random()
        if k < 0.05 and len(clients) < 50:
            c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            c.setblocking(False)
            line = rnd.choice([b"CONNECT 80\n", b"CONNECT 81\n", b"CONNECT x\n", rnd.randbytes(8)])
            try:
                c.connect(path)
                c.send(line)
            except OSError:
                pass
            clients.append(c)
        elif k < 0.08 and clients:
            clients.pop(rnd.randrange(len(clients))).close()
        elif k < 0.12:
            data = rnd.randbytes(rnd.randrange(1, 3000))  # one draw however many sockets are open
            for s in clients + accepted:
                try:
                    s.send(data)
                    s.recv(65536)
                except OSError:
                    pass
            for lst in listeners:
                try:
                    a, _ = lst.accept()
                    a.setblocking(False)
                    accepted.append(a)
                except OSError:
                    pass
            while len(accepted) > 20:  # host-side closes: the device must reset and forget them
                accepted.pop(0).close()
        else:
            op = rnd.randrange(0, 9)
            payload = rnd.randbytes(rnd.choice([0, 1, 100, 4096, 65536])) if rnd.random() < 0.5 else b""
            src_port = rnd.choice([80, 81, 1000, 1001, rnd.getrandbits(32)])
            dst_port = rnd.choice([7000, 7001, 1 << 30, (1 << 30) + 1, rnd.getrandbits(32)])
            g.send(op, src_port, dst_port, payload,
                   buf_alloc=rnd.choice([0, 1, 4096, 1 << 20, rnd.getrandbits(32)]),
                   fwd_cnt=rnd.getrandbits(32), flags=rnd.getrandbits(3),
                   type_=1 if rnd.random() < 0.9 else rnd.getrandbits(16),
                   src_cid=CID if rnd.random() < 0.9 else rnd.getrandbits(64),
                   length=None if rnd.random() < 0.9 else rnd.getrandbits(32))
            sent += 1
        known.see(g.poll(0, want=0))
    # Host side goes away. Connections whose host end left data the guest gave no credit for
    # stay (the guest may still read it): the guest may hold all of its slots now.
    for sock in clients + accepted + listeners:
        sock.close()
    known.see(g.poll(0.5, want=100000))
    # The host still reaches the guest: its slots are its own.
    h = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    h.settimeout(DEADLINE)
    h.connect(path)
    h.sendall(b"CONNECT 4343\n")
    req = wait_for(g, known, lambda p: p.op == OP_REQUEST and p.dst_port == 4343)
    assert req, f"no REQUEST for a host connection after the fuzz run (counters {dev.counters()})"
    g.send(OP_RESPONSE, 4343, req.src_port)
    assert h.recv(100) == f"OK {req.src_port}\n".encode(), "host connection refused after the fuzz run"
    h.close()
    # The guest closes everything it was told about; then it can connect again.
    for gport, hport in sorted(known.pairs):
        g.send(OP_RST, gport, hport)
        known.see(g.poll(0, want=0))
    known.see(g.poll(0.5, want=100000))
    lst = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    lst.bind(f"{path}_7777")
    lst.listen(1)
    lst.settimeout(5)
    g.send(OP_REQUEST, 4242, 7777)
    ok = wait_for(g, known, lambda p: p.op in (OP_RESPONSE, OP_RST) and p.dst_port == 4242)
    assert ok and ok.op == OP_RESPONSE, f"no RESPONSE after the fuzz run ({ok}, counters {dev.counters()})"
    a, _ = lst.accept()
    g.send(OP_RW, 4242, 7777, b"still alive")
    a.settimeout(5)
    assert a.recv(100) == b"still alive"
    c = dev.counters()
    print(f"rounds={budget.rounds} packets={sent} connections={c['connections']} resets={c['resets']} "
          f"errors={c['errors']}")
    a.close()
    lst.close()
    dev.close()


if __name__ == "__main__":
    main(Budget.from_argv(sys.argv[1:3]), int(sys.argv[3]), sys.argv[4])
