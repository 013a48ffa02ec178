"""Random vsock packets from a hostile "guest" mixed with host clients coming and going.
Usage: python -m support.fuzz_vsock SECONDS SEED DIR. The device must survive and still carry a
clean connection at the end."""
import os
import random
import socket
import sys
import time

from support.vsock_guest import OP_REQUEST, OP_RESPONSE, OP_RW, Guest  # noqa: E402
from vmm.devices import Vsock  # noqa: E402
from vmm.engines.virtio_device import open_device  # noqa: E402

CID = 9


def main(seconds, seed, d):
    rnd = random.Random(seed)
    path = os.path.join(d, "f.sock")
    dev = open_device(Vsock(CID, path))
    g = Guest(dev, cid=CID)
    listeners = []
    for port in (7000, 7001):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind(f"{path}_{port}")
        s.listen(64)
        s.setblocking(False)
        listeners.append(s)
    clients, accepted = [], []
    end = time.monotonic() + seconds
    sent = 0
    while time.monotonic() < end:
        k = rnd.random()
        if k < 0.05 and len(clients) < 50:
            c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            c.setblocking(False)
            try:
                c.connect(path)
                c.send(rnd.choice([b"CONNECT 80\n", b"CONNECT 81\n", b"CONNECT x\n", os.urandom(8)]))
            except OSError:
                pass
            clients.append(c)
        elif k < 0.08 and clients:
            clients.pop(rnd.randrange(len(clients))).close()
        elif k < 0.12:
            for s in clients + accepted:
                try:
                    s.send(os.urandom(rnd.randrange(1, 3000)))
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
            payload = os.urandom(rnd.choice([0, 1, 100, 4096, 65536])) if rnd.random() < 0.5 else b""
            src_port = rnd.choice([80, 81, 1000, 1001, rnd.getrandbits(32)])
            dst_port = rnd.choice([7000, 7001, 1 << 30, (1 << 30) + 1, rnd.getrandbits(32)])
            g.send(op, src_port, dst_port, payload,
                   buf_alloc=rnd.choice([0, 1, 4096, 1 << 20, rnd.getrandbits(32)]),
                   fwd_cnt=rnd.getrandbits(32), flags=rnd.getrandbits(3),
                   type_=1 if rnd.random() < 0.9 else rnd.getrandbits(16),
                   src_cid=CID if rnd.random() < 0.9 else rnd.getrandbits(64),
                   length=None if rnd.random() < 0.9 else rnd.getrandbits(32))
            sent += 1
        g.poll(0, want=0)
    # Host side goes away; then a clean guest-initiated connection must still work (the
    # connection table, at most 1024 entries, must not be full of leftovers).
    for sock in clients + accepted + listeners:
        sock.close()
    clients, accepted, listeners = [], [], []
    g.poll(0.5, want=100000)
    lst = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    lst.bind(f"{path}_7777")
    lst.listen(1)
    lst.settimeout(5)
    g.send(OP_REQUEST, 4242, 7777)
    # The answer may queue behind tens of thousands of RSTs for the closed host sockets; on a
    # loaded machine a 1 s poll can come back empty while those drain, so wait on a deadline.
    deadline = time.monotonic() + 15.0
    ok = False
    while not ok and time.monotonic() < deadline:
        got = g.poll(1.0, want=1)
        ok = any(p.op == OP_RESPONSE and p.dst_port == 4242 for p in got)
    assert ok, f"no RESPONSE after the fuzz run (counters {dev.counters()})"
    a, _ = lst.accept()
    g.send(OP_RW, 4242, 7777, b"still alive")
    a.settimeout(5)
    assert a.recv(100) == b"still alive"
    c = dev.counters()
    print(f"packets={sent} connections={c['connections']} resets={c['resets']} errors={c['errors']}")
    for s in clients + accepted + listeners:
        s.close()
    dev.close()


if __name__ == "__main__":
    main(float(sys.argv[1]), int(sys.argv[2]), sys.argv[3])
