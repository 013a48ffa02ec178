"""The per-kick work budget (csrc/virtio/device.h, VDEV_BUDGET_*): a notify serves at most
64 chains or 4 MiB, then the transport re-arms the queue so the event loop serves every
other ready device first. A guest that keeps one queue full must not starve the other
devices on its loop, and a batch split by the budget must lose no request."""
import fcntl
import os
import socket
import struct
import termios
import threading
import time

from vmm.devices import Disk, Net
from vmm.engines.virtio_device import open_device
from vmm.engines.vhost_user_server import VhostUserServer
from support.vhost_user_client import GET_FEATURES, Client, MemfdMem, kick
from support.virtio_driver import F_WRITE, INDIRECT, VERSION_1, GuestMem, attach, notify, setup_queue
from support.waiting import wait_until
from test_virtio_net import HDR, NetGuest, frame, read_framed

BUDGET_CHAINS = 64  # VDEV_BUDGET_CHAINS
BUDGET_BYTES = 4 << 20  # VDEV_BUDGET_BYTES
T_IN, T_OUT = 0, 1


def blk_request(mem, kind, sector, bufs):
    hdr = mem.put(struct.pack("<IIQ", kind, 0, sector))
    status = mem.alloc(1)
    mem.write(status, b"\xff")
    return [(hdr, 16, False)] + bufs + [(status, 1, True)], status


def test_blk_batch_split_by_the_budget_loses_nothing(tmp_path):
    """300 writes in one kick: served in slices of 64 (the test transport re-runs the
    notify as a real transport re-arms it), each exactly once, all on disk."""
    img = tmp_path / "d.img"
    img.write_bytes(bytes(512 * 400))
    dev = open_device(Disk(str(img)))
    mem = GuestMem(size=2 << 20)
    attach(dev, mem, VERSION_1)
    q = setup_queue(dev, mem, 0, 1024)
    n = 300
    datas = [os.urandom(512) for _ in range(n)]
    heads, statuses = [], []
    for i, data in enumerate(datas):
        bufs, status = blk_request(mem, T_OUT, i, [(mem.put(data), 512, False)])
        heads.append(q.add(bufs))
        statuses.append(status)
    assert notify(dev, 0) == 0, dev.broken
    used = q.take_used()
    assert sorted(h for h, _ in used) == sorted(heads) and len(used) == n
    assert all(mem.read(s, 1) == b"\0" for s in statuses)
    disk = img.read_bytes()
    assert [disk[512 * i:512 * (i + 1)] for i in range(n)] == datas
    c = dev.counters()
    assert c["requests"] == n
    assert c["budget_yields"] >= n // BUDGET_CHAINS, c
    dev.close()


def net_pair(size):
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    dev = open_device(Net(backend="socket", fd=a.fileno(), mac="02:11:22:33:44:55"))
    a.close()
    b.settimeout(5)
    return dev, b


def test_net_tx_batch_split_by_the_budget_keeps_every_frame_in_order():
    dev, peer = net_pair(256)
    try:
        g = NetGuest(dev, nrx=0, size=256)
        frames = [frame(struct.pack(">I", i) + bytes(96)) for i in range(128)]
        for f in frames:
            g.tx.add([(g.mem.put(bytes(HDR)), HDR, False), (g.mem.put(f), len(f), False)])
        assert notify(dev, 1) == 0
        assert [read_framed(peer) for _ in frames] == frames
        assert len(g.tx.take_used()) == len(frames)
        c = dev.counters()
        assert c["frames_out"] == len(frames) and c["budget_yields"] >= len(frames) // BUDGET_CHAINS, c
    finally:
        dev.close()
        peer.close()


def test_net_rx_batch_split_by_the_budget_keeps_every_frame_in_order():
    """Backend -> guest runs on the device's poll (the loop's thread): 200 frames read in
    one go reach the guest in slices, in order, none lost."""
    dev, peer = net_pair(256)
    try:
        g = NetGuest(dev, nrx=256, size=256, mem_size=4 << 20)
        frames = [frame(struct.pack(">I", i) + bytes(96)) for i in range(200)]
        peer.sendall(b"".join(struct.pack(">I", len(f)) + f for f in frames))
        wait_until(lambda: dev.counters()["frames_in"] == len(frames), what="200 frames in the guest")
        got = [g.mem.read(g.bufs[head], n) for head, n in g.rx.take_used()]
        assert [x[HDR:] for x in got] == frames
        assert dev.counters()["budget_yields"] >= 1
    finally:
        dev.close()
        peer.close()


def publish_later(q):
    """Queue.add without making the chains visible: set_avail_idx() publishes them all."""
    def publish(head):
        q.mem.pack("<H", q.avail + 4 + 2 * (q.avail_idx % q.size), head)
        q.avail_idx = (q.avail_idx + 1) & 0xFFFF
    q.publish = publish


def start_blk(path):
    c = Client(path)
    c.negotiate(VERSION_1 | INDIRECT)
    mem = MemfdMem(size=4 << 20)
    assert c.set_mem(mem) == 0
    return c, mem


def hold_the_loop(gate):
    """Blocks the servers' loop thread in a reply send: GET_FEATURES requests whose replies
    gate never reads, until the replies waiting on its socket stop growing (the server's
    send buffer is full and its next send waits)."""
    requests = struct.pack("<III", GET_FEATURES, 1, 0) * 20000
    threading.Thread(target=lambda: _send_quietly(gate.s, requests), daemon=True).start()
    waiting, steady_since = -1, None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        now = struct.unpack("i", fcntl.ioctl(gate.s.fileno(), termios.FIONREAD, b"\0" * 4))[0]
        if now != waiting or now == 0:
            waiting, steady_since = now, time.monotonic()
        elif time.monotonic() - steady_since > 0.05:
            return
        time.sleep(0.005)
    raise AssertionError("the server never stopped sending replies")


def _send_quietly(sock, data):
    try:
        sock.sendall(data)
    except OSError:
        pass  # the server dropped this front end: that is how the hold ends


def test_a_full_blk_queue_does_not_starve_another_device_on_the_loop(tmp_path):
    """Two blk devices served by one event loop (vhost-user servers of one process), over
    the same disk file. Device A gets a full ring: 1024 reads of 256 KiB (sectors 0..511),
    the last sector of each landing in a buffer of its own; device B one write of a marker
    into sector 511, kicked after A's. The reads that saw the marker are exactly those
    served after B's write: served work, no clock. Without a budget A's notify drains its
    whole ring before the loop reaches B (no read sees the marker); with it, B is served
    after one slice of A (16 reads: the 4 MiB byte budget).

    Both kicks must be pending before the loop serves either (else the loop thread, woken
    by A's kick, may run A's whole ring before this thread gets the CPU back to kick B):
    a third server's front-end holds the loop meanwhile: it asks for replies it does not
    read until the server's send blocks (a reply waits up to VU_SEND_TIMEOUT_MS, then the
    server drops that front end and the loop goes on to the kicks)."""
    img = tmp_path / "d.img"
    img.write_bytes(bytes(512 * 1024))
    devs = [open_device(Disk(str(img))) for _ in range(3)]
    servers = [VhostUserServer(d, str(tmp_path / f"s{i}.sock")) for i, d in enumerate(devs)]
    try:
        ca, mema = start_blk(servers[0].path)
        cb, memb = start_blk(servers[1].path)
        gate = Client(servers[2].path)
        qa, kick_a, _ = ca.start_ring(mema, 0, 1024)
        qb, kick_b, _ = cb.start_ring(memb, 0, 16)
        publish_later(qa)
        publish_later(qb)
        shared = mema.alloc(511 * 512)  # every read's first 511 sectors: one buffer for all
        reads = []
        for _ in range(1024):
            own = mema.alloc(512)
            bufs, status = blk_request(mema, T_IN, 0, [(shared, 511 * 512, True), (own, 512, True)])
            reads.append((qa.add(bufs, indirect=True), own, status))
        marker = b"B was here".ljust(512, b"!")
        bufs, b_status = blk_request(memb, T_OUT, 511, [(memb.put(marker), 512, False)])
        qb.add(bufs)

        hold_the_loop(gate)
        qa.set_avail_idx(qa.avail_idx)
        kick(kick_a)
        qb.set_avail_idx(qb.avail_idx)
        kick(kick_b)
        wait_until(lambda: qa.used_idx() == 1024 and qb.used_idx() == 1, timeout=60,
                   what="both devices to finish")

        assert memb.read(b_status, 1) == b"\0"
        used = qa.take_used()
        assert sorted(h for h, _ in used) == sorted(h for h, _, _ in reads), "a request was lost or repeated"
        assert {n for _, n in used} == {512 * 512 + 1}
        assert all(mema.read(s, 1) == b"\0" for _, _, s in reads)
        after = sum(mema.read(own, 512) == marker for _, own, _ in reads)
        served_before = 1024 - after
        print(f"device A served {served_before} of 1024 requests before device B's one")
        # One slice of A (16 reads), two if A's safety-net tick fell in the same round.
        assert served_before <= 2 * (BUDGET_BYTES // (512 * 512)), "device B waited for device A's ring"
        assert devs[0].counters()["budget_yields"] >= 1024 * 512 * 512 // BUDGET_BYTES - 1
        for c in (ca, cb, gate):
            c.close()
    finally:
        for s in servers:
            s.stop()
        for d in devs:
            d.close()


def test_vsock_tx_batch_split_by_the_budget_keeps_the_stream_in_order(tmp_path):
    """200 data packets of one guest connection in one notify: served in slices, every
    byte reaches the host socket once, in order."""
    from vmm.devices import Vsock
    from support.vsock_guest import HDR as VHDR, HOST_CID, OP_REQUEST, OP_RESPONSE, OP_RW, Guest
    path = str(tmp_path / "v.sock")
    dev = open_device(Vsock(42, path))
    lst = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        lst.bind(f"{path}_5000")
        lst.listen(1)
        lst.settimeout(5)
        g = Guest(dev, cid=42)
        g.send(OP_REQUEST, 777, 5000)
        wait_until(lambda: any(p.op == OP_RESPONSE for p in g.poll(0.1)), what="the RESPONSE")
        conn, _ = lst.accept()
        conn.settimeout(5)
        tx = setup_queue(dev, g.mem, 1, 256)  # room for the whole batch
        chunks = [struct.pack(">I", i) + os.urandom(96) for i in range(200)]
        for c in chunks:
            hdr = VHDR.pack(42, HOST_CID, 777, 5000, len(c), 1, OP_RW, 0, 1 << 20, 0)
            tx.add([(g.mem.put(hdr + c), VHDR.size + len(c), False)])
        assert notify(dev, 1) == 0
        want = b"".join(chunks)
        got = b""
        while len(got) < len(want):
            part = conn.recv(len(want) - len(got))
            assert part, "the host side closed early"
            got += part
        assert got == want
        assert len(tx.take_used()) == len(chunks)
        assert dev.counters()["budget_yields"] >= len(chunks) // BUDGET_CHAINS
        conn.close()
    finally:
        lst.close()
        dev.close()
