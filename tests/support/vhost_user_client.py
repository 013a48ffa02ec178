"""A minimal vhost-user front-end in Python (what QEMU does), for testing our back-end
without QEMU: guest memory in a memfd, eventfds for kick and call, raw messages for the
hostile cases."""
from __future__ import annotations

import fcntl
import mmap
import os
import select
import socket
import struct
import time

from support.virtio_driver import GuestMem, Queue

GET_FEATURES, SET_FEATURES, SET_OWNER, RESET_OWNER, SET_MEM_TABLE = 1, 2, 3, 4, 5
SET_VRING_NUM, SET_VRING_ADDR, SET_VRING_BASE, GET_VRING_BASE = 8, 9, 10, 11
SET_VRING_KICK, SET_VRING_CALL, SET_VRING_ERR = 12, 13, 14
GET_PROTOCOL_FEATURES, SET_PROTOCOL_FEATURES, GET_QUEUE_NUM, SET_VRING_ENABLE = 15, 16, 17, 18
SET_SLAVE_REQ_FD, GET_CONFIG, SET_CONFIG = 21, 24, 25
F_PROTOCOL_FEATURES = 1 << 30
PF_REPLY_ACK, PF_CONFIG = 1 << 3, 1 << 9
NEED_REPLY = 1 << 3
UVA_BASE = 0x7F1200000000  # the front-end's address of guest RAM; any value works


class MemfdMem:
    """Guest RAM in a memfd, mapped here too; same interface as virtio_driver.GuestMem.
    Sealed against shrinking and growing like QEMU's memory-backend-memfd (the back end
    refuses an unsealed one); seal=False makes the unsealed one a hostile front end sends."""

    def __init__(self, size=1 << 20, gpa=0x10000, seal=True, uva_base=None):
        self.size, self.gpa = size, gpa
        self.uva_base = UVA_BASE if uva_base is None else uva_base
        self.fd = os.memfd_create("guest-ram", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        os.ftruncate(self.fd, size)
        if seal:
            fcntl.fcntl(self.fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW)
        self.view = mmap.mmap(self.fd, size)
        self.top = 0

    alloc = GuestMem.alloc
    off = GuestMem.off
    pack = GuestMem.pack
    unpack = GuestMem.unpack
    write = GuestMem.write
    read = GuestMem.read
    put = GuestMem.put

    def uva(self, gpa):
        return self.uva_base + (gpa - self.gpa)

    def region(self):
        """This memory's entry in a SET_MEM_TABLE payload."""
        return struct.pack("<QQQQ", self.gpa, self.size, self.uva(self.gpa), 0)

    def close(self):
        self.view.close()
        os.close(self.fd)


class Client:
    def __init__(self, path, timeout=5):
        self.s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.s.settimeout(timeout)
        self.s.connect(path)

    def close(self):
        self.s.close()

    def send(self, req, payload=b"", fds=(), flags=1, size=None):
        hdr = struct.pack("<III", req, flags, len(payload) if size is None else size)
        if fds:
            socket.send_fds(self.s, [hdr + payload], list(fds))
        else:
            self.s.sendall(hdr + payload)

    def recv(self):
        hdr = self._exact(12)
        req, flags, size = struct.unpack("<III", hdr)
        assert flags & 4, "reply without the reply flag"
        return req, self._exact(size)

    def _exact(self, n):
        buf = b""
        while len(buf) < n:
            c = self.s.recv(n - len(buf))
            if not c:
                raise ConnectionError("back-end closed the connection")
            buf += c
        return buf

    def closed_by_peer(self, timeout=2.0):
        """True if the back-end closed the connection (EOF or reset) within timeout."""
        self.s.settimeout(timeout)
        try:
            while True:
                if not self.s.recv(4096):
                    return True
        except (ConnectionResetError, BrokenPipeError):
            return True
        except socket.timeout:
            return False

    def call(self, req, payload=b"", fds=()):
        self.send(req, payload, fds)
        r, data = self.recv()
        assert r == req
        return data

    def u64(self, req, value=None, ack=False):
        if value is None:
            return struct.unpack("<Q", self.call(req))[0]
        self.send(req, struct.pack("<Q", value), flags=1 | (NEED_REPLY if ack else 0))
        if ack:
            r, data = self.recv()
            return struct.unpack("<Q", data)[0]

    def ack(self, req, payload=b"", fds=()):
        self.send(req, payload, fds, flags=1 | NEED_REPLY)
        r, data = self.recv()
        assert r == req and len(data) == 8
        return struct.unpack("<Q", data)[0]

    # the usual start-up, as QEMU does it ---------------------------------------------
    def negotiate(self, features):
        offered = self.u64(GET_FEATURES)
        assert offered & F_PROTOCOL_FEATURES
        pf = self.u64(GET_PROTOCOL_FEATURES)
        self.u64(SET_PROTOCOL_FEATURES, pf & (PF_REPLY_ACK | PF_CONFIG))
        self.send(SET_OWNER)
        assert self.u64(SET_FEATURES, (features & offered) | F_PROTOCOL_FEATURES, ack=True) == 0
        return offered, pf

    def set_mem(self, mem: MemfdMem):
        return self.ack(SET_MEM_TABLE, struct.pack("<II", 1, 0) + mem.region(), [mem.fd])

    def start_ring(self, mem: MemfdMem, qi: int, size: int) -> tuple[Queue, int, int]:
        q = Queue(mem, qi, size)
        self.send(SET_VRING_NUM, struct.pack("<II", qi, size))
        self.send(SET_VRING_BASE, struct.pack("<II", qi, 0))
        self.send(SET_VRING_ADDR, struct.pack("<IIQQQQ", qi, 0, mem.uva(q.desc), mem.uva(q.used),
                                              mem.uva(q.avail), 0))
        kick, call = os.eventfd(0, os.EFD_NONBLOCK), os.eventfd(0, os.EFD_NONBLOCK)
        self.send(SET_VRING_CALL, struct.pack("<Q", qi), [call])
        self.send(SET_VRING_KICK, struct.pack("<Q", qi), [kick])
        assert self.ack(SET_VRING_ENABLE, struct.pack("<II", qi, 1)) == 0
        return q, kick, call


def wait_call(call_fd, timeout=2.0):
    r, _, _ = select.select([call_fd], [], [], timeout)
    if not r:
        return 0
    return os.eventfd_read(call_fd)


def wait_until(pred, timeout=5.0, what="the condition"):
    """Polls pred until it is true; fails naming what was awaited after timeout seconds."""
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)


def kick(fd):
    os.eventfd_write(fd, 1)
