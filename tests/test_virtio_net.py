"""virtio-net against synthetic guest memory: frames both ways through a socketpair peer
speaking 4-byte big-endian length framing, and through a tap device where possible."""
import fcntl
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import termios
import textwrap
import time

import pytest

from vmm.devices import Net
from vmm.engines.virtio_device import open_device
from support.virtio_driver import EVENT_IDX, VERSION_1, GuestMem, attach, irqs, notify, setup_queue
from support.waiting import wait_until

HDR = 12
ETH_TYPE = 0x88B5  # IEEE local experimental: nothing else on a link will use it


class NetGuest:
    def __init__(self, dev, nrx=32, rx_size=2048, size=64, mem_size=2 << 20):
        self.dev = dev
        self.mem = GuestMem(size=mem_size)
        attach(dev, self.mem, VERSION_1 | EVENT_IDX | (1 << 5))
        self.rx = setup_queue(dev, self.mem, 0, size)
        self.tx = setup_queue(dev, self.mem, 1, size)
        self.rx_size = rx_size
        self.bufs = {}
        for _ in range(nrx):
            self._give(self.mem.alloc(rx_size))
        notify(dev, 0)

    def _give(self, addr):
        self.bufs[self.rx.add([(addr, self.rx_size, True)])] = addr

    def send(self, frame, split=False):
        hdr = self.mem.put(bytes(HDR))
        if split:
            half = len(frame) // 2
            bufs = [(hdr, HDR, False), (self.mem.put(frame[:half]), half, False),
                    (self.mem.put(frame[half:]), len(frame) - half, False)]
        else:
            bufs = [(hdr, HDR, False), (self.mem.put(frame), len(frame), False)]
        self.tx.add(bufs)
        notify(self.dev, 1)
        assert self.tx.take_used()

    def recv(self, want=1, timeout=2.0):
        out = []
        end = time.monotonic() + timeout
        while len(out) < want and time.monotonic() < end:
            for head, n in self.rx.take_used():
                addr = self.bufs.pop(head)
                out.append(self.mem.read(addr, n))
                self._give(addr)
            notify(self.dev, 0)
            time.sleep(0.002)
        return out


def frame(payload, dst=b"\xff" * 6, src=b"\x02\x00\x00\x00\x00\x01"):
    return dst + src + struct.pack(">H", ETH_TYPE) + payload


def read_framed(s):
    n = struct.unpack(">I", recv_exact(s, 4))[0]
    return recv_exact(s, n)


def unread_bytes(sock):
    """Bytes this socket sent that its peer has not read yet (SIOCOUTQ)."""
    return struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0" * 4))[0]


def link_up(dev):
    return bool(struct.unpack_from("<H", dev.config(0, 8), 6)[0] & 1)


def recv_exact(s, n):
    buf = b""
    while len(buf) < n:
        c = s.recv(n - len(buf))
        assert c, "peer closed"
        buf += c
    return buf


@pytest.fixture
def stream_net():
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    dev = open_device(Net(backend="socket", fd=a.fileno(), mac="02:11:22:33:44:55"))
    a.close()
    b.settimeout(5)
    yield dev, NetGuest(dev), b
    dev.close()
    b.close()


def test_config_mac_and_link(stream_net):
    dev, g, peer = stream_net
    cfg = dev.config(0, 8)
    assert cfg[:6] == bytes.fromhex("021122334455")
    assert struct.unpack_from("<H", cfg, 6)[0] & 1  # link up
    assert dev.features & (1 << 5) and dev.features & (1 << 16)


def test_guest_to_peer_frames(stream_net):
    dev, g, peer = stream_net
    f1, f2 = frame(b"a" * 100), frame(os.urandom(1400))
    g.send(f1)
    g.send(f2, split=True)
    assert read_framed(peer) == f1
    assert read_framed(peer) == f2
    c = dev.counters()
    assert c["frames_out"] == 2 and c["bytes_written"] == len(f1) + len(f2)


def test_peer_to_guest_frames(stream_net):
    dev, g, peer = stream_net
    frames = [frame(os.urandom(n)) for n in (46, 500, 1500)]
    # Split the byte stream awkwardly: framing must survive partial reads.
    wire = b"".join(struct.pack(">I", len(f)) + f for f in frames)
    for i in range(0, len(wire), 7):
        peer.sendall(wire[i:i + 7])
    got = g.recv(want=3)
    assert [x[HDR:] for x in got] == frames
    for x in got:
        hdr = x[:HDR]
        assert hdr[:10] == bytes(10) and struct.unpack_from("<H", hdr, 10)[0] == 1
    c = dev.counters()
    assert c["frames_in"] == 3 and c["bytes_read"] == sum(map(len, frames))
    assert irqs(dev, 0) >= 1


def test_frames_wait_for_guest_buffers(stream_net):
    dev, _, peer = stream_net
    g = NetGuest(dev, nrx=0)
    frames = [frame(bytes([i]) * 60) for i in range(5)]
    wire = b"".join(struct.pack(">I", len(f)) + f for f in frames)
    peer.sendall(wire)
    # The device has read input (it holds a frame) and delivered nothing: the guest has
    # no buffer for it. It stops reading then, so the socket may keep the rest.
    wait_until(lambda: unread_bytes(peer) < len(wire), what="the device to read input")
    assert dev.counters()["frames_in"] == 0
    for _ in range(5):
        g._give(g.mem.alloc(g.rx_size))
    notify(dev, 0)
    got = g.recv(want=5)
    assert [x[HDR:] for x in got] == frames


def test_oversized_frame_for_guest_buffer_is_dropped(stream_net):
    dev, _, peer = stream_net
    g = NetGuest(dev, nrx=4, rx_size=256)
    big, small = frame(b"x" * 1000), frame(b"y" * 50)
    peer.sendall(struct.pack(">I", len(big)) + big + struct.pack(">I", len(small)) + small)
    got = g.recv(want=2)
    assert got[0] == b"" and got[1][HDR:] == small
    assert dev.counters()["errors"] == 1


def test_bad_frame_length_takes_link_down(stream_net):
    dev, g, peer = stream_net
    peer.sendall(struct.pack(">I", 1 << 30))
    wait_until(lambda: not link_up(dev), what="the link to go down")
    g.send(frame(b"after"))
    assert dev.counters()["errors"] >= 1


def test_runt_tx_chain_is_dropped(stream_net):
    dev, g, peer = stream_net
    g.tx.add([(g.mem.put(bytes(8)), 8, False)])
    notify(dev, 1)
    assert g.tx.take_used() and dev.counters()["errors"] == 1
    g.send(frame(b"ok"))
    assert read_framed(peer) == frame(b"ok")


def test_bad_mac_is_a_clear_error():
    from vmm.errors import ConfigError
    with pytest.raises(ConfigError, match="not six hex bytes"):
        Net(backend="socket", mac="02:00:00")
    with pytest.raises(ConfigError, match="multicast"):
        Net(backend="socket", mac="01:00:00:00:00:00")
    with pytest.raises(ConfigError, match="not one of"):
        Net(backend="carrier-pigeon")


@pytest.mark.skipif(os.geteuid() != 0 or not os.path.exists("/dev/net/tun") or not shutil.which("ip"),
                    reason="tap test needs root, /dev/net/tun and ip(8)")
def test_tap_backend_both_ways():
    name = f"vmmt{os.getpid() % 100000}"
    dev = open_device(Net(backend="tap", tap=name, mac="02:11:22:33:44:66"))
    try:
        subprocess.run(["ip", "link", "set", name, "up"], check=True)
        g = NetGuest(dev)
        raw = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_TYPE))
        raw.bind((name, ETH_TYPE))
        raw.settimeout(5)
        f = frame(b"to the host" + bytes(40))
        g.send(f)
        assert raw.recv(2048) == f
        back = frame(b"to the guest" + bytes(40), dst=bytes.fromhex("021122334466"))
        raw.send(back)
        got = []
        end = time.monotonic() + 5
        while not got and time.monotonic() < end:  # skip the kernel's own IPv6 chatter
            got = [x for x in g.recv(want=1, timeout=0.5) if x[HDR + 12:HDR + 14] == struct.pack(">H", ETH_TYPE)]
        assert got and got[0][HDR:] == back
        raw.close()
    finally:
        dev.close()


def test_slow_peer_applies_backpressure_without_blocking(stream_net):
    dev, g, peer = stream_net
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    frames = [frame(bytes([i % 256]) * 1400) for i in range(400)]  # ~560 KiB: more than the socket holds
    t = time.monotonic()
    sent = 0
    for f in frames:
        if not g.tx.free or len(g.tx.free) < 2:
            g.tx.take_used()
            if len(g.tx.free) < 2:
                break
        hdr = g.mem.put(bytes(HDR))
        g.tx.add([(hdr, HDR, False), (g.mem.put(f), len(f), False)])
        notify(dev, 1)
        sent += 1
    assert time.monotonic() - t < 2, "notify blocked on the backend"
    assert sent < len(frames), "the tx queue never stopped"
    # Now the peer reads: every frame queued so far arrives, in order, and the queue drains.
    got = [read_framed(peer) for _ in range(sent)]
    assert got == frames[:sent]
    deadline = time.monotonic() + 5
    while g.tx.used_idx() != g.tx.avail_idx and time.monotonic() < deadline:
        time.sleep(0.01)
    assert g.tx.used_idx() == g.tx.avail_idx


def test_passt_send_buffer_can_be_chosen(monkeypatch):
    """VMM_PASST_SNDBUF: the send buffer of passt's socket, for tests and benchmarks of a
    host without CAP_NET_ADMIN (bytes, or "default" for the kernel's own)."""
    from vmm.engines import net_backend as nb
    from vmm.errors import ConfigError
    monkeypatch.delenv(nb.SNDBUF_ENV, raising=False)
    assert nb.passt_sndbuf() == nb.PASST_SNDBUF
    monkeypatch.setenv(nb.SNDBUF_ENV, "default")
    assert nb.passt_sndbuf() is None
    monkeypatch.setenv(nb.SNDBUF_ENV, "106496")
    assert nb.passt_sndbuf() == 106496
    for bad in ("0", "-5", "lots"):
        monkeypatch.setenv(nb.SNDBUF_ENV, bad)
        with pytest.raises(ConfigError, match=nb.SNDBUF_ENV):
            nb.passt_sndbuf()
    plain = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    ours, theirs = nb.passt_socketpair(None)
    small_ours, small = nb.passt_socketpair(106496)
    try:
        default = plain[1].getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
        assert theirs.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) == default
        assert small.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) == 2 * 106496  # doubled
    finally:
        for s in (*plain, ours, theirs, small_ours, small):
            s.close()


SIGPIPE_CHILD = textwrap.dedent("""
    import os, signal, socket, struct, sys
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # what a process that does not ignore it has
    from vmm.devices import Net
    from vmm.engines.virtio_device import open_device
    from test_virtio_net import NetGuest, frame, link_up
    from support.waiting import wait_until
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    dev = open_device(Net(backend="socket", fd=a.fileno(), mac="02:11:22:33:44:55"))
    a.close()
    b.shutdown(socket.SHUT_RD)  # the peer reads no more: our next write gets EPIPE
    g = NetGuest(dev)
    g.send(frame(b"into a closed pipe"))
    wait_until(lambda: not link_up(dev), what="the link to go down")
    print("survived", dev.counters()["errors"], flush=True)
    dev.close()
""")


def test_backend_hang_up_is_a_dead_link_not_sigpipe():
    """A write to a socket backend whose peer stopped reading must take the link down, not
    raise SIGPIPE: run in a child whose SIGPIPE is at the default (Python ignores it)."""
    here = os.path.dirname(os.path.abspath(__file__))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([here, os.environ.get("PYTHONPATH", "")]))
    r = subprocess.run([sys.executable, "-c", SIGPIPE_CHILD], env=env, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode != -signal.SIGPIPE, "the device's write raised SIGPIPE"
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["survived", "1"], r.stdout
    assert "cannot write a frame to the backend socket; the link is down" in r.stderr
