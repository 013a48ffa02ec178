"""virtio-vsock's rx pump (host -> guest) under the per-call work budget, driven by the host
sockets rather than by guest kicks: a readable connection is not polled (the pump reads it
until the socket is empty), so once the pump stops at its budget only the transport's
re-arm brings it back. Through the test transport, whose event loop re-arms as the VM's and
the vhost-user server's loops do (csrc/virtio/test_transport.c)."""
import threading
import time

from support.virtio_driver import notify
from support.vsock_guest import HDR, OP_REQUEST, OP_RESPONSE, OP_RW, Guest, Packet
from support.vsock_host import accept_host_conn, host_connect, read_line
from vmm.devices import Vsock
from vmm.engines.virtio_device import open_device

CID = 44
BUDGET_CHAINS = 64     # csrc/virtio/device.h VDEV_BUDGET_CHAINS
SMALL = 16             # payload bytes per rx buffer: many packets from one host write
NRX = 120


class SmallRx:
    """The guest's rx queue filled with NRX buffers of SMALL bytes, read without kicks."""

    def __init__(self, g):
        self.g = g
        self.addr = {g.rx.add([(a, HDR.size + SMALL, True)]): a
                     for a in (g.mem.alloc(HDR.size + SMALL) for _ in range(NRX))}
        notify(g.dev, 0)
        self.pkts = []

    def wait(self, done, timeout=10.0):
        end = time.monotonic() + timeout
        while not done() and time.monotonic() < end:
            for head, n in self.g.rx.take_used():
                self.pkts.append(Packet(self.g.mem.read(self.addr[head], n)))
            time.sleep(0.005)
        return done()


def test_rx_pump_stopped_by_the_budget_comes_back_without_a_guest_kick(tmp_path):
    """One host write of 100 packets' worth for a guest with 120 small rx buffers: the
    device's poll reads it, stops after 64 packets, and the re-arm alone (the connection
    is not polled while readable, and the guest never kicks) must deliver the rest."""
    path = str(tmp_path / "v.sock")
    dev = open_device(Vsock(CID, path))
    try:
        g = Guest(dev, cid=CID, nrx=0)
        rx = SmallRx(g)
        s = host_connect(path, 1234)
        assert rx.wait(lambda: any(p.op == OP_REQUEST for p in rx.pkts)), rx.pkts
        hport = rx.pkts[-1].src_port
        g.send(OP_RESPONSE, 1234, hport, buf_alloc=1 << 20)
        assert read_line(s) == f"OK {hport}\n".encode()
        time.sleep(0.2)   # the device found the socket empty and polls it
        yields = dev.counters()["budget_yields"]
        data = bytes(range(100)) * SMALL
        s.sendall(data)   # one write: one poll event
        stream = lambda: b"".join(p.payload for p in rx.pkts if p.op == OP_RW)
        delivered = rx.wait(lambda: len(stream()) >= len(data))
        assert delivered, (f"the pump stopped after {len(stream())} of {len(data)} bytes "
                           f"({len(stream()) // SMALL} packets); counters {dev.counters()}")
        assert stream() == data
        assert dev.counters()["budget_yields"] > yields
        s.close()
    finally:
        dev.close()


def test_a_stream_starved_of_rx_buffers_resumes_on_each_rx_kick(tmp_path):
    """Two rx buffers for 200 KB: the pump runs out of buffers every other packet with the
    connection readable (so not polled), and each rx kick alone must bring it back."""
    path = str(tmp_path / "v.sock")
    dev = open_device(Vsock(CID, path))
    try:
        g = Guest(dev, cid=CID, nrx=2)
        s, _ = accept_host_conn(g, path, buf_alloc=1 << 20)
        data = bytes(range(256)) * 800
        writer = threading.Thread(target=s.sendall, args=(data,))
        writer.start()
        got = bytearray()
        end = time.monotonic() + 20
        while len(got) < len(data) and time.monotonic() < end:
            got += b"".join(p.payload for p in g.poll(0.2, want=1) if p.op == OP_RW)   # re-gives + kicks
        writer.join(10)
        assert bytes(got) == data, f"{len(got)} of {len(data)} bytes; counters {dev.counters()}"
        s.close()
    finally:
        dev.close()
