"""virtio-vsock budgets against a hostile guest (the Python driver over synthetic memory):
separate connection caps for the guest and the host, so a guest that opens connections
until refused cannot lock the host out of its own agent; no buffer memory held by idle
connections; a host program that closed its end is an error, not a SIGPIPE."""
import ctypes
import os
import socket
import subprocess
import sys
import threading
import time

import pytest

from support.vsock_guest import OP_REQUEST, OP_RESPONSE, OP_RST, OP_RW, Guest
from support.vsock_host import accept_host_conn, host_connect, recv_exact
from vmm.devices import Vsock
from vmm.engines.virtio_device import open_device

CID = 43
MAX_GUEST_CONNS = 768  # csrc/virtio/vsock.h
MAX_HOST_CONNS = 256


@pytest.fixture
def vs(tmp_path):
    path = str(tmp_path / "v.sock")
    dev = open_device(Vsock(CID, path))
    g = Guest(dev, cid=CID)
    yield dev, g, path
    dev.close()


class Acceptor:
    """A host service on "<path>_<port>" that accepts every connection and keeps it."""

    def __init__(self, path, port):
        self.lst = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.lst.bind(f"{path}_{port}")
        self.lst.listen(4096)  # the guest's REQUESTs must not find the backlog full
        self.conns = []
        self.t = threading.Thread(target=self._run, daemon=True)
        self.t.start()

    def _run(self):
        while True:
            try:
                self.conns.append(self.lst.accept()[0])
            except OSError:
                return

    def wait(self, n, timeout=10.0):
        """The first n accepted connections (the thread may lag behind on a loaded machine)."""
        end = time.monotonic() + timeout
        while len(self.conns) < n and time.monotonic() < end:
            time.sleep(0.01)
        assert len(self.conns) >= n, f"only {len(self.conns)} of {n} connections reached the host service"
        return self.conns[:n]

    def close(self):
        self.lst.shutdown(socket.SHUT_RDWR)
        self.lst.close()
        for c in self.conns:
            c.close()


def open_guest_conns(g, port, first_src, limit, batch=32):
    """The guest opens connections to host port until one is refused: their source ports."""
    opened, refused = [], None
    src = first_src
    while refused is None and len(opened) < limit:
        want = {}
        for _ in range(batch):
            g.send(OP_REQUEST, src, port)
            want[src] = None
            src += 1
        got = 0
        while got < batch:
            pkts = [p for p in g.poll(5.0, want=batch - got) if p.dst_port in want and p.op in (OP_RESPONSE, OP_RST)]
            assert pkts, f"no answer to the guest's REQUESTs ({got} of {batch})"
            got += len(pkts)
            for p in pkts:
                if p.op == OP_RESPONSE:
                    opened.append(p.dst_port)
                elif refused is None:
                    refused = p.dst_port
    return opened, refused


def test_guest_filling_its_slots_does_not_lock_out_the_host(vs):
    dev, g, path = vs
    svc = Acceptor(path, 6100)
    try:
        opened, refused = open_guest_conns(g, 6100, 10000, limit=4096)
        assert refused is not None, "the guest was never refused"
        assert len(opened) == MAX_GUEST_CONNS
        # The host reaches the guest's agent port all the same, on slots the guest cannot take.
        s, hport = accept_host_conn(g, path, guest_port=52)
        s.sendall(b"ping")
        pkt = next(p for p in g.poll(2.0) if p.op == OP_RW)
        assert pkt.payload == b"ping" and pkt.src_port == hport
        g.send(OP_RW, 52, hport, b"pong")
        assert recv_exact(s, 4) == b"pong"
        # The cap counts live connections: one closed by the guest makes room for one more.
        g.send(OP_RST, opened[0], 6100)
        again, refused = open_guest_conns(g, 6100, 20000, limit=1, batch=1)
        assert again == [20000] and refused is None
        s.close()
    finally:
        svc.close()


def test_host_has_its_own_cap_and_leaves_the_guest_its_slots(vs):
    dev, g, path = vs
    clients, reqs = [], []
    while len(clients) < MAX_HOST_CONNS:
        clients += [host_connect(path, 7) for _ in range(32)]  # a batch the listen backlog takes
        while len(reqs) < len(clients):
            got = [p for p in g.poll(5.0, want=len(clients) - len(reqs)) if p.op == OP_REQUEST]
            assert got, f"only {len(reqs)} host connections reached the guest"
            reqs += got
    extra = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    extra.settimeout(5)
    extra.connect(path)
    try:
        extra.sendall(b"CONNECT 7\n")
        assert extra.recv(10) == b"", "a host connection beyond the host's cap was not closed"
    except (BrokenPipeError, ConnectionResetError):
        pass  # closed before or with the CONNECT line unread: also a close
    assert not [p for p in g.poll(0.2) if p.op == OP_REQUEST], "a host connection beyond the cap reached the guest"
    svc = Acceptor(path, 6200)
    try:
        opened, refused = open_guest_conns(g, 6200, 30000, limit=4, batch=4)
        assert len(opened) == 4 and refused is None
    finally:
        svc.close()
        for c in clients + [extra]:
            c.close()


class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]


def malloc_in_use():
    """Bytes the process's malloc hands out now, every arena and mmapped chunk included."""
    libc = ctypes.CDLL(None)
    if not hasattr(libc, "mallinfo2"):
        pytest.skip("needs glibc 2.33's mallinfo2")
    libc.mallinfo2.restype = MallInfo2
    m = libc.mallinfo2()
    return m.uordblks + m.hblkhd


def test_drained_connections_hold_no_tx_buffers(vs):
    dev, g, path = vs
    n, chunk = 64, 65536
    svc = Acceptor(path, 6300)
    try:
        before = malloc_in_use()
        opened, refused = open_guest_conns(g, 6300, 40000, limit=n)
        assert len(opened) == n and refused is None
        # More than a socket buffer takes while nobody reads: the device buffers the rest.
        data = os.urandom(chunk)
        for port in opened:
            for _ in range(4):
                g.send(OP_RW, port, 6300, data)
        for c in svc.wait(n):
            c.settimeout(5)
            assert recv_exact(c, 4 * chunk) == data * 4
        # All delivered, so all drained: what the idle connections hold is their bookkeeping,
        # not 64 x 256 KiB of buffers.
        held = malloc_in_use() - before
        print(f"{n} drained connections: {held} bytes held")
        assert held < 2 << 20, f"{n} idle connections hold {held} bytes"
    finally:
        svc.close()


CHILD = r"""
import os, signal, socket, sys
signal.signal(signal.SIGPIPE, signal.SIG_DFL)   # as in a process that does not ignore it
from support.vsock_guest import OP_REQUEST, OP_RESPONSE, OP_RST, OP_RW, Guest
from support.vsock_host import host_connect, one
from vmm.devices import Vsock
from vmm.engines.virtio_device import open_device
path = sys.argv[1]
dev = open_device(Vsock(44, path))
g = Guest(dev, cid=44)
# A guest connection whose host program stopped reading: the device's write fails.
lst = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
lst.bind(path + "_6400")
lst.listen(1)
g.send(OP_REQUEST, 900, 6400)
one(g, OP_RESPONSE)
peer, _ = lst.accept()
peer.shutdown(socket.SHUT_RD)
g.send(OP_RW, 900, 6400, b"x" * 100)
assert one(g, OP_RST).dst_port == 900
# A host client that stopped reading before the guest accepted: "OK <port>" fails.
s = host_connect(path, 77)
req = one(g, OP_REQUEST)
s.shutdown(socket.SHUT_RD)
g.send(OP_RESPONSE, 77, req.src_port)
assert one(g, OP_RST).dst_port == 77
print("alive")
dev.close()
"""


def test_a_closed_host_end_is_no_sigpipe(tmp_path):
    tests = os.path.dirname(os.path.abspath(__file__))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        p for p in [tests, os.path.dirname(tests), os.environ.get("PYTHONPATH", "")] if p))
    r = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path / "p.sock")], capture_output=True, text=True,
                       timeout=60, env=env)
    assert r.returncode == 0 and r.stdout.strip() == "alive", (r.returncode, r.stdout, r.stderr[-2000:])
