"""Random vhost-user message sequences from a hostile front end against our back end.

    python -m support.fuzz_vhost_user SECONDS SEED DIR [ROUNDS]

Each round is one connection with a random mix of what QEMU sends (negotiation, memory
tables, rings, requests) and what it must not: memory table swaps while rings run (some
keep the rings valid, some drop them), unsealed or short memfds, guest RAM truncated,
kick/call fds that are not eventfds or cannot be used, replies left unread, truncated
messages (some left hanging while the canary is asked), garbage ones, ring memory
scribbled over. Round n draws from random.Random(SEED * 1000003 + n), so ROUNDS replays a
run exactly (the time budget is ignored then). After every round the back end must have
let the connection go, the canary server on the same event loop must answer (also during
hostile rounds), and now and then a clean front end must read the disk correctly; at the
end no guest memory may stay mapped and no fd may leak.
Prints "rounds=N ops=M ..." on success; a failure names the round and its ops.
"""
from __future__ import annotations

import os
import random
import socket
import struct
import sys
import time

from support.vhost_user_client import (GET_CONFIG, GET_FEATURES, GET_QUEUE_NUM, GET_VRING_BASE, NEED_REPLY,
                                       SET_CONFIG, SET_MEM_TABLE, SET_VRING_ADDR, SET_VRING_BASE,
                                       SET_VRING_CALL, SET_VRING_ENABLE, SET_VRING_ERR, SET_VRING_KICK,
                                       SET_VRING_NUM, Client, MemfdMem, kick, wait_call, wait_until)
from support.virtio_driver import EVENT_IDX, INDIRECT, VERSION_1, Queue
from vmm.devices import Disk, Vsock
from vmm.engines.vhost_user_server import VhostUserServer
from vmm.engines.virtio_device import open_device

RESET_OWNER, RESET_DEVICE = 4, 34
SECTORS = 64
DEADLINE = 5.0  # the back end's own limits are 1 s (unread replies) and 10 s (half messages)
class FuzzFailure(Exception):
    """An invariant broke (never taken for the back end closing the connection)."""


HOSTILE = {"unread_replies", "garbage", "shrink", "swap", "scribble", "start_ring"}
STATS = {"swaps_while_running": 0}
ENDS = (OSError, ConnectionError, AssertionError, MemoryError, struct.error)


class Round:
    """One front end's connection; ops end it by raising one of ENDS."""

    def __init__(self, rnd: random.Random, target, nqueues: int, disk: str | None, canary: str | None = None):
        self.rnd, self.nq, self.disk, self.canary = rnd, nqueues, disk, canary
        self.c = Client(target.path, timeout=1.0)
        self.mems: list[MemfdMem] = []
        self.mem: MemfdMem | None = None
        self.rings: dict[int, tuple[Queue, int, int]] = {}
        self.fds: list[int] = []
        self.synced = True  # every reply so far was read: request/reply still pairs up

    def close(self):
        self.c.close()
        for fd in self.fds:
            os.close(fd)
        for m in self.mems:
            m.close()

    def _fd(self, fd):
        self.fds.append(fd)
        return fd

    def _mem(self, seal=True, size=None, uva_base=None, gpa=None):
        m = MemfdMem(size=size or self.rnd.choice([1 << 16, 1 << 18, 1 << 20]),
                     gpa=self.rnd.choice([0x10000, 0x100000, 0x40000000]) if gpa is None else gpa,
                     seal=seal, uva_base=uva_base)
        self.mems.append(m)
        return m

    def _qi(self):
        """A ring index, now and then one past the device's last ring."""
        return self.nq if self.rnd.random() < 0.1 else self.rnd.randrange(self.nq)

    def _ack(self, req, payload=b"", fds=()):
        if self.synced:
            return self.c.ack(req, payload, fds)
        self.c.send(req, payload, fds)

    # the ops ---------------------------------------------------------------------------
    def negotiate(self):
        if self.synced:
            self.c.negotiate(VERSION_1 | self.rnd.choice([0, INDIRECT, EVENT_IDX, INDIRECT | EVENT_IDX]))

    def set_mem(self):
        self.mem = self._mem()
        self.rings.clear()
        self._ack(SET_MEM_TABLE, struct.pack("<II", 1, 0) + self.mem.region(), [self.mem.fd])

    def _kick_call_fd(self):
        kind = self.rnd.choices(["eventfd", "pipe", "socket", "memfd", "nofd", "semaphore", "full"],
                                [12, 1, 1, 1, 1, 1, 1])[0]
        if kind == "eventfd":
            return self._fd(os.eventfd(0, os.EFD_NONBLOCK)), 0
        if kind in ("semaphore", "full"):  # one never drains as a kick, one cannot take a call
            # Non-blocking here too: our own kick() must not block on it (the dedicated test in
            # test_vhost_user_hostile.py hands over a blocking one).
            fd = self._fd(os.eventfd(0, os.EFD_NONBLOCK | (os.EFD_SEMAPHORE if kind == "semaphore" else 0)))
            os.eventfd_write(fd, (1 << 62) if kind == "semaphore" else 0xFFFFFFFFFFFFFFFE)
            return fd, 0
        if kind == "pipe":
            r, w = os.pipe()
            self._fd(r)
            return self._fd(w), 0
        if kind == "socket":
            a, b = socket.socketpair()
            b.close()  # a hung-up peer: readable forever
            return self._fd(a.detach()), 0
        if kind == "memfd":
            return self._fd(os.memfd_create("not-an-eventfd")), 0
        return None, 1 << 8

    def prologue(self):
        """What QEMU does first (most rounds start so, to get rings running)."""
        self.negotiate()
        self.set_mem()
        self.start_ring(good=True)

    def start_ring(self, good=False):
        if self.mem is None:
            return
        qi = 0 if good else self._qi()
        size = self.rnd.choice([16, 64] if good else [1, 2, 16, 64, 256, 100])
        q = Queue(self.mem, qi, size if size & (size - 1) == 0 else 16)
        self.c.send(SET_VRING_NUM, struct.pack("<II", qi, size))
        self.c.send(SET_VRING_BASE, struct.pack("<II", qi, 0 if good else self.rnd.choice([0, 0, 5, 70000])))
        self.c.send(SET_VRING_ADDR, struct.pack("<IIQQQQ", qi, 0, self.mem.uva(q.desc), self.mem.uva(q.used),
                                                 self.mem.uva(q.avail), 0))
        fds = []
        for req in (SET_VRING_CALL, SET_VRING_KICK):
            fd, flag = (self._fd(os.eventfd(0, os.EFD_NONBLOCK)), 0) if good else self._kick_call_fd()
            self.c.send(req, struct.pack("<Q", qi | flag), [fd] if fd is not None else [])
            fds.append(fd)
        self._ack(SET_VRING_ENABLE, struct.pack("<II", qi, 1))
        if qi < self.nq and fds[1] is not None:
            self.rings[qi] = (q, fds[1], fds[0])

    def request(self):
        if not self.rings:
            return
        qi = self.rnd.choice(sorted(self.rings))
        q, kfd, cfd = self.rings[qi]
        m = q.mem
        if self.disk is not None and qi == 0 and len(q.free) >= 3:
            sector = self.rnd.choice([0, 1, SECTORS - 1, SECTORS, 1 << 40])
            hdr, data, status = m.put(struct.pack("<IIQ", 0, 0, sector)), m.alloc(512), m.alloc(1)
            q.add([(hdr, 16, False), (data, 512, True), (status, 1, True)][: self.rnd.choice([3, 3, 3, 2])])
        elif q.free:
            q.add([(m.alloc(64), 64, True)])
        self._kick(kfd)
        if _is_eventfd(cfd):
            wait_call(cfd, 0.02)
        q.take_used()

    def _kick(self, fd):
        try:
            kick(fd)
        except OSError:
            pass  # not an eventfd: the back end refused it anyway

    def scribble(self):
        """What a hostile guest does to a running ring: random bytes in it, then a kick."""
        if not self.rings:
            return
        q, kfd, _ = self.rings[self.rnd.choice(sorted(self.rings))]
        area = self.rnd.choice([(q.desc, 16 * q.size), (q.avail, 6 + 2 * q.size), (q.used, 6 + 8 * q.size)])
        off = self.rnd.randrange(area[1])
        n = min(self.rnd.randrange(1, 17), area[1] - off)
        q.mem.write(area[0] + off, self.rnd.randbytes(n))
        self._kick(kfd)

    def shrink(self):
        """Truncate guest RAM under the back end (refused for a sealed memfd), then kick."""
        if not self.mems:
            return
        m = self.mems[-1] if self.rnd.random() < 0.7 else self.rnd.choice(self.mems)
        try:
            os.ftruncate(m.fd, self.rnd.choice([0, 4096]))
        except PermissionError:
            pass
        for q, kfd, _ in self.rings.values():
            self._kick(kfd)

    def swap(self):
        """A new memory table while rings may run."""
        if self.mem is None:
            return self.set_mem()
        old, kind = self.mem, self.rnd.choice(["extra", "moved", "copy", "overlap", "unsealed", "short", "file"])
        regions, fds = [], []
        if kind in ("extra", "overlap"):  # the same RAM plus a region (overlapping it or not)
            extra = self._mem(size=1 << 16, gpa=old.gpa + (0x1000 if kind == "overlap" else 0x10000000),
                              uva_base=0x7F3400000000)
            regions, fds = [old.region(), extra.region()], [old.fd, extra.fd]
        elif kind == "moved":  # the rings' addresses are in no region any more
            new = self._mem(size=old.size, gpa=old.gpa, uva_base=0x7F5600000000)
            regions, fds = [new.region()], [new.fd]
        elif kind == "copy":  # the same addresses backed by new memory with the same content
            new = self._mem(size=old.size, gpa=old.gpa)
            new.view[:] = old.view[:]
            new.top = old.top
            regions, fds = [new.region()], [new.fd]
            self.mem = new
            for qi, (q, k, c) in list(self.rings.items()):
                q.mem = new
        elif kind in ("unsealed", "short"):
            new = self._mem(seal=kind == "short", size=old.size, gpa=old.gpa)
            size = old.size * (2 if kind == "short" else 1)
            regions, fds = [struct.pack("<QQQQ", new.gpa, size, new.uva(new.gpa), 0)], [new.fd]
        else:
            r, w = os.pipe()
            self._fd(r)
            regions, fds = [struct.pack("<QQQQ", old.gpa, old.size, old.uva(old.gpa), 0)], [self._fd(w)]
        running = bool(self.rings)
        if self._ack(SET_MEM_TABLE, struct.pack("<II", len(regions), 0) + b"".join(regions), fds) == 0 and running:
            STATS["swaps_while_running"] += 1
        if kind == "unsealed" and self.rnd.random() < 0.5:
            self.shrink()  # the attack an unsealed memfd allows

    def small_talk(self):
        req = self.rnd.choice([GET_FEATURES, GET_QUEUE_NUM, GET_VRING_BASE, GET_CONFIG, SET_CONFIG,
                               SET_VRING_ENABLE, RESET_DEVICE, RESET_OWNER, SET_VRING_ERR])
        qi = self._qi()
        if req in (GET_FEATURES, GET_QUEUE_NUM):
            if self.synced:
                self.c.call(req)
        elif req == GET_VRING_BASE:
            self.rings.pop(qi, None)
            if self.synced:
                self.c.call(req, struct.pack("<II", qi, 0))
            else:
                self.c.send(req, struct.pack("<II", qi, 0))
        elif req in (GET_CONFIG, SET_CONFIG):
            size = self.rnd.choice([4, 8, 60, 256, 300])
            body = struct.pack("<III", self.rnd.choice([0, 8, 255]), size, 0) + bytes(size)
            if req == GET_CONFIG and self.synced and size <= 256:
                self.c.call(req, body)
            else:
                self.c.send(req, body)
                self.synced = self.synced and req == SET_CONFIG and size <= 256
        elif req == SET_VRING_ENABLE:
            self._ack(req, struct.pack("<II", qi, self.rnd.randrange(2)))
        elif req == SET_VRING_ERR:
            self.c.send(req, struct.pack("<Q", qi), [self._fd(os.eventfd(0))])
        else:
            self.rings.clear()
            self._ack(req)

    def unread_replies(self):
        n = self.rnd.choice([1, 10, 1000, 20000])
        self.synced = False
        self.c.s.sendall(struct.pack("<III", GET_FEATURES, 1 | NEED_REPLY, 0) * n)

    def truncated(self):
        """Half a message, then the front end goes: ends the round."""
        whole = struct.pack("<III", SET_VRING_NUM, 1, 8) + struct.pack("<II", 0, 16)
        self.c.s.sendall(whole[: self.rnd.randrange(1, len(whole))])
        if self.canary and self.rnd.random() < 0.5 and not answers(self.canary):
            raise FuzzFailure("a front end stalled in the middle of a message holds the loop")
        self.c.s.shutdown(socket.SHUT_WR)
        raise ConnectionError("truncated message sent")

    def garbage(self):
        """A random header with a payload of the size it claims; sometimes fds."""
        size = self.rnd.choice([0, 4, 8, 12, 40, 4096, 5000])
        hdr = struct.pack("<III", self.rnd.randrange(40), self.rnd.choice([0, 1, 1 | NEED_REPLY, 5, 0xFFFFFFFF]),
                          size)
        fds = [self._fd(os.eventfd(0))] * self.rnd.randrange(3)
        self.synced = False
        body = self.rnd.randbytes(min(size, 4096))
        if fds:
            socket.send_fds(self.c.s, [hdr + body], fds)
        else:
            self.c.s.sendall(hdr + body)
        if size > 4096:
            raise ConnectionError("oversized message sent")

    OPS = [("negotiate", 2), ("set_mem", 2), ("start_ring", 4), ("request", 8), ("scribble", 2), ("swap", 4), ("shrink", 1),
           ("small_talk", 4), ("unread_replies", 1), ("truncated", 1), ("garbage", 1)]


def _is_eventfd(fd):
    try:
        return os.readlink(f"/proc/self/fd/{fd}") == "anon_inode:[eventfd]"
    except OSError:
        return False


def answers(path) -> bool:
    c = Client(path, timeout=DEADLINE)
    try:
        return c.u64(GET_FEATURES) & VERSION_1 != 0
    except (OSError, ConnectionError):
        return False
    finally:
        c.close()


def clean_read(srv, image: str, sector: int):
    """A well-behaved front end reads one sector; the data must be the disk's (as it is
    now: a hostile ring may have pointed a write request at random guest bytes)."""
    c = Client(srv.path, timeout=DEADLINE)
    mem = MemfdMem()
    try:
        c.negotiate(VERSION_1)
        assert c.set_mem(mem) == 0, "a clean memory table was refused"
        q, kfd, cfd = c.start_ring(mem, 0, 16)
        hdr, data, status = mem.put(struct.pack("<IIQ", 0, 0, sector)), mem.alloc(512), mem.alloc(1)
        mem.write(status, b"\xff")
        q.add([(hdr, 16, False), (data, 512, True), (status, 1, True)])
        kick(kfd)
        wait_until(lambda: mem.read(status, 1) == b"\0", DEADLINE, "a clean read to complete")
        with open(image, "rb") as f:
            f.seek(sector * 512)
            assert mem.read(data, 512) == f.read(512), "a clean read returned wrong data"
        for fd in (kfd, cfd):
            os.close(fd)
    finally:
        c.close()
        mem.close()
    wait_until(lambda: not srv.connected, DEADLINE, "the clean front end to be let go")


def _memfd_maps() -> int:
    with open("/proc/self/maps") as f:
        return sum("memfd:guest-ram" in line for line in f)


def main(seconds: float, seed: int, d: str, rounds: int | None) -> None:
    image = os.path.join(d, "d.img")
    with open(image, "wb") as f:
        f.write(random.Random(seed).randbytes(SECTORS * 512))
    devs = [open_device(Disk(image)), open_device(Vsock(7, os.path.join(d, "v.sock"))),
            open_device(Disk(image, read_only=True))]
    blk, vsock, canary = [VhostUserServer(dv, os.path.join(d, f"s{i}.sock")) for i, dv in enumerate(devs)]
    targets = [(blk, 1, image), (vsock, 3, None)]
    fds_before = len(os.listdir("/proc/self/fd"))
    end = time.monotonic() + seconds
    n = ops = ended_early = 0
    while (n < rounds) if rounds is not None else (time.monotonic() < end):
        rnd = random.Random(seed * 1000003 + n)
        srv, nq, data = targets[rnd.randrange(len(targets))]
        r = Round(rnd, srv, nq, data, canary.path)
        log = []
        try:
            if rnd.random() < 0.7:
                log.append("prologue")
                r.prologue()
            for _ in range(rnd.randrange(1, 25)):
                name = rnd.choices([o for o, _ in Round.OPS], [w for _, w in Round.OPS])[0]
                log.append(name)
                ops += 1
                getattr(r, name)()
                if name in HOSTILE and rnd.random() < 0.5:
                    # While the hostile front end is still connected, the loop serves others.
                    if not answers(canary.path):
                        raise FuzzFailure(f"the canary server on the same loop does not answer while a "
                                          f"hostile front end is connected (round {n}, ops {log})")
        except ENDS as e:
            log.append(f"(ended: {type(e).__name__})")
            ended_early += 1
        finally:
            r.close()
        where = f"round {n} on {'blk' if srv is blk else 'vsock'}, ops {log}"
        wait_until(lambda: not srv.connected, DEADLINE, f"the back end to let the front end go ({where})")
        assert answers(canary.path), f"the canary server on the same loop does not answer ({where})"
        if data is not None and n % 10 == 9:
            clean_read(srv, data, rnd.randrange(SECTORS))
        n += 1
    clean_read(blk, image, SECTORS - 1)
    assert answers(vsock.path), "the vsock server does not answer after the run"
    wait_until(lambda: not vsock.connected, DEADLINE, "the vsock server to be idle")
    assert _memfd_maps() == 0, f"guest memory is still mapped after {n} rounds"
    assert len(os.listdir("/proc/self/fd")) == fds_before, f"fds leaked over {n} rounds"
    requests = devs[0].counters()["requests"]
    for s in (blk, vsock, canary):
        s.stop()
    for dv in devs:
        dv.close()
    print(f"rounds={n} ops={ops} ended_early={ended_early} requests={requests} "
          f"swaps_while_running={STATS['swaps_while_running']}")


if __name__ == "__main__":
    main(float(sys.argv[1]), int(sys.argv[2]), sys.argv[3], int(sys.argv[4]) if len(sys.argv) > 4 else None)
