"""virtio-net end to end against its socketpair backend (4-byte big-endian length framing):
random frames both ways, checked byte for byte and in order.

Usage: python -m support.fuzz_net_peer SECONDS ROUNDS SEED

Guest -> peer: frames of 0..65551 bytes split over 1..4 descriptors anywhere (the 12-byte
header too); those of 1..65550 bytes must reach the peer exactly, in order, the others be
dropped. Peer -> guest: frames of 1..65550 bytes written in random pieces, into receive
buffers of random sizes split over 1..3 descriptors; each frame takes the next buffer, and
arrives whole (header: num_buffers 1) if it fits, else the buffer comes back empty. Now and
then the peer sends a length the device must refuse (the link goes down) or hangs up; the
device must say so and a fresh one starts.
"""
import random
import socket
import struct
import sys
import threading
import time

from support.fuzz_run import Budget
from support.virtio_driver import EVENT_IDX, INDIRECT, VERSION_1, GuestMem, attach, notify, setup_queue
from vmm.devices import Net
from vmm.engines.virtio_device import open_device

HDR = 12
MAX_FRAME = 65550
SLOT = HDR + MAX_FRAME + 64
F_MAC, F_STATUS = 1 << 5, 1 << 16


class Peer:
    """The backend's far end: a thread collecting the frames the device writes."""

    def __init__(self, sock):
        self.sock, self.frames, self.error = sock, [], None
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        buf = b""
        try:
            while True:
                data = self.sock.recv(1 << 20)
                if not data:
                    return
                buf += data
                while len(buf) >= 4:
                    n = struct.unpack_from(">I", buf)[0]
                    if len(buf) < 4 + n:
                        break
                    self.frames.append(buf[4:4 + n])
                    buf = buf[4 + n:]
        except OSError as e:
            self.error = e


def pieces(total, rnd, most):
    cuts = sorted({rnd.randrange(1, total) for _ in range(rnd.randrange(most))}) if total > 1 else []
    bounds = [0, *cuts, total]
    return [b - a for a, b in zip(bounds, bounds[1:])]


class Link:
    def __init__(self, rnd):
        self.rnd = rnd
        a, self.peer_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.dev = open_device(Net(backend="socket", fd=a.fileno(), mac="02:11:22:33:44:55"))
        a.close()
        self.peer = Peer(self.peer_sock)
        qs = rnd.choice([8, 16, 64, 256])
        self.nslots = min(qs, 8)
        self.mem = GuestMem(size=2 * self.nslots * SLOT + (1 << 20))
        attach(self.dev, self.mem, VERSION_1 | EVENT_IDX | INDIRECT | F_MAC | F_STATUS)
        self.rx = setup_queue(self.dev, self.mem, 0, qs)
        self.tx = setup_queue(self.dev, self.mem, 1, qs)
        self.rx_slots = [self.mem.alloc(SLOT, 64) for _ in range(self.nslots)]
        self.tx_slots = [self.mem.alloc(SLOT, 64) for _ in range(self.nslots)]
        self.mark = self.mem.top
        self.expect_out = []

    def link_up(self):
        return bool(struct.unpack_from("<H", self.dev.config(0, 8), 6)[0] & 1)

    def guest_sends(self, k):
        self.mem.top = self.mark
        for i, slot in enumerate(self.tx_slots[:k]):
            r = self.rnd
            n = r.choice([0, 1, 14, 60, 1514, 9000, r.randrange(1, 3000), MAX_FRAME, MAX_FRAME + 1])
            frame = r.randbytes(n)
            self.mem.write(slot, bytes(HDR) + frame)
            bufs, at = [], slot
            for ln in pieces(HDR + n, r, 4):
                bufs.append((at, ln, False))
                at += ln
            self.tx.add(bufs, indirect=r.random() < 0.3 or len(bufs) + (k - i - 1) > len(self.tx.free))
            if 1 <= n <= MAX_FRAME:
                self.expect_out.append(frame)
        notify(self.dev, 1)
        deadline = time.monotonic() + 10
        done = 0
        while done < k:   # a full socket holds frames back until the peer reads
            done += len(self.tx.take_used())
            assert time.monotonic() < deadline, "transmit stalled"
            if done < k:
                time.sleep(0.001)
                notify(self.dev, 1)

    def peer_sends(self, k):
        r = self.rnd
        self.mem.top = self.mark
        posted = []
        for i, slot in enumerate(self.rx_slots[:k]):
            size = r.choice([SLOT, HDR + 60, HDR + 1514, r.randrange(HDR, SLOT)])
            bufs, at = [], slot
            self.mem.write(slot, b"\xee" * size)
            for ln in pieces(size, r, 3):
                bufs.append((at, ln, True))
                at += ln
            head = self.rx.add(bufs, indirect=r.random() < 0.3 or len(bufs) + (k - i - 1) > len(self.rx.free))
            posted.append((head, slot, size))
        notify(self.dev, 0)
        frames = [r.randbytes(r.choice([1, 60, 1514, r.randrange(1, 9000), MAX_FRAME])) for _ in range(k)]
        wire = b"".join(struct.pack(">I", len(f)) + f for f in frames)
        for ln in pieces(len(wire), r, 6):
            self.peer_sock.sendall(wire[:ln])
            wire = wire[ln:]
        got = []
        deadline = time.monotonic() + 10
        while len(got) < k:
            got += self.rx.take_used()
            assert time.monotonic() < deadline, f"received {len(got)} of {k} frames"
            time.sleep(0.001)
        for (head, used_len), (want_head, slot, size), f in zip(got, posted, frames):
            assert head == want_head, "receive buffers used out of order"
            if HDR + len(f) > size:
                assert used_len == 0, f"a {len(f)}-byte frame in a {size}-byte buffer: used {used_len}"
            else:
                assert used_len == HDR + len(f)
                data = self.mem.read(slot, used_len)
                assert data[:10] == bytes(10) and struct.unpack_from("<H", data, 10)[0] == 1
                assert data[HDR:] == f, "received frame differs"

    def check_out(self):
        deadline = time.monotonic() + 10
        while len(self.peer.frames) < len(self.expect_out) and time.monotonic() < deadline:
            time.sleep(0.002)
        assert self.peer.frames == self.expect_out, (
            f"peer got {len(self.peer.frames)} frames, expected {len(self.expect_out)}; "
            f"first difference at {next((i for i, (a, b) in enumerate(zip(self.peer.frames, self.expect_out)) if a != b), None)}")

    def close(self):
        self.dev.close()
        self.peer_sock.close()


def main(budget, seed):
    rnd = random.Random(seed)
    stats = {"frames_out": 0, "frames_in": 0, "link_down": 0, "hangups": 0}
    link = Link(rnd)
    while budget.more():
        k = rnd.random()
        if k < 0.45:
            n = rnd.randrange(1, link.nslots + 1)
            link.guest_sends(n)
            stats["frames_out"] += n
        elif k < 0.9:
            n = rnd.randrange(1, link.nslots + 1)
            link.peer_sends(n)
            stats["frames_in"] += n
        else:
            link.check_out()
            if k < 0.95:
                link.peer_sock.sendall(struct.pack(">I", rnd.choice([0, MAX_FRAME + 1, 2**32 - 1])))
                stats["link_down"] += 1
            else:
                link.peer_sock.shutdown(socket.SHUT_RDWR)
                stats["hangups"] += 1
            deadline = time.monotonic() + 10
            while link.link_up():
                assert time.monotonic() < deadline, "the link stayed up after a bad peer"
                time.sleep(0.002)
            link.close()
            link = Link(rnd)
    link.check_out()
    link.close()
    print(f"rounds={budget.rounds} " + " ".join(f"{k}={v}" for k, v in stats.items()))


if __name__ == "__main__":
    main(Budget.from_argv(sys.argv[1:3]), int(sys.argv[3]))
