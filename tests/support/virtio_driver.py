"""A tiny virtio split-ring *driver* in Python, over a buffer of synthetic guest memory,
for unit-testing the C devices without a VM (the C side is the device, reached through
the test transport vmm_vdev_test_*). It writes descriptors and rings byte by byte, so
tests can also write anything a hostile guest could."""
from __future__ import annotations

import struct

from vmm import _core

ffi, lib = _core.ffi, _core.lib

F_NEXT, F_WRITE, F_INDIRECT = 1, 2, 4
EVENT_IDX = 1 << 29
INDIRECT = 1 << 28
VERSION_1 = 1 << 32


class Queue:
    def __init__(self, mem: "GuestMem", qi: int, size: int):
        self.mem, self.qi, self.size = mem, qi, size
        self.desc = mem.alloc(16 * size, 16)
        self.avail = mem.alloc(6 + 2 * size, 2)
        self.used = mem.alloc(6 + 8 * size, 4)
        self.free = list(range(size))
        self.avail_idx = 0
        self.last_used = 0
        self.chains = {}  # head -> descriptor indices, freed when the device returns it

    # raw access -------------------------------------------------------------
    # The ring indices a device thread may read while we write them (vsock's and net's
    # host-side events run on the transport's loop thread): one aligned 16-bit access each.
    # struct.pack_into zeroes its target before writing, so a device could see an index of
    # 0 in between, take it for the driver running 65000 entries ahead and stop the queue.
    def _store16(self, gpa, v):
        with ffi.from_buffer(self.mem.view) as raw:
            ffi.cast("uint16_t *", raw + self.mem.off(gpa))[0] = v

    def _load16(self, gpa):
        with ffi.from_buffer(self.mem.view) as raw:
            return ffi.cast("uint16_t *", raw + self.mem.off(gpa))[0]

    def write_desc(self, i, addr, length, flags=0, nxt=0, table=None):
        base = self.desc if table is None else table
        self.mem.pack("<QIHH", base + 16 * i, addr, length, flags, nxt)

    def publish(self, head):
        self.mem.pack("<H", self.avail + 4 + 2 * (self.avail_idx % self.size), head)
        self.avail_idx = (self.avail_idx + 1) & 0xFFFF
        self._store16(self.avail + 2, self.avail_idx)

    def set_avail_idx(self, v):
        self.avail_idx = v & 0xFFFF
        self._store16(self.avail + 2, self.avail_idx)

    def set_avail_flags(self, v):
        self.mem.pack("<H", self.avail, v)

    def set_used_event(self, v):
        self._store16(self.avail + 4 + 2 * self.size, v)

    def avail_event(self):
        return self._load16(self.used + 4 + 8 * self.size)

    def used_idx(self):
        return self._load16(self.used + 2)

    # a well-behaved driver --------------------------------------------------
    def add(self, bufs, indirect=False):
        """bufs: list of (gpa, len, writable). Returns the head index."""
        if indirect:
            table = self.mem.alloc(16 * len(bufs), 16)
            for i, (a, n, w) in enumerate(bufs):
                more = i + 1 < len(bufs)
                self.write_desc(i, a, n, (F_WRITE if w else 0) | (F_NEXT if more else 0), i + 1, table=table)
            head = self.free.pop(0)
            idx = [head]
            self.write_desc(head, table, 16 * len(bufs), F_INDIRECT)
        else:
            idx = [self.free.pop(0) for _ in bufs]
            for k, (a, n, w) in enumerate(bufs):
                more = k + 1 < len(bufs)
                self.write_desc(idx[k], a, n, (F_WRITE if w else 0) | (F_NEXT if more else 0),
                                idx[k + 1] if more else 0)
            head = idx[0]
        self.chains[head] = idx
        self.publish(head)
        return head

    def take_used(self):
        """New used entries [(id, len)], returning their descriptors to the free list."""
        out = []
        now = self.used_idx()
        while self.last_used != now:
            slot = self.used + 4 + 8 * (self.last_used % self.size)
            out.append(self.mem.unpack("<II", slot))
            self.free.extend(self.chains.pop(out[-1][0], []))
            self.last_used = (self.last_used + 1) & 0xFFFF
        return out


class GuestMem:
    """size bytes of guest memory at guest physical address gpa, with a bump allocator."""

    def __init__(self, size=1 << 20, gpa=0x10000):
        self.size, self.gpa = size, gpa
        self.buf = ffi.new("uint8_t[]", size)
        self.view = ffi.buffer(self.buf)
        self.top = 0

    def alloc(self, n, align=16):
        self.top = (self.top + align - 1) & ~(align - 1)
        if self.top + n > self.size:
            raise MemoryError("test guest memory exhausted")
        a = self.gpa + self.top
        self.top += n
        return a

    def off(self, gpa):
        return gpa - self.gpa

    def pack(self, fmt, gpa, *vals):
        struct.pack_into(fmt, self.view, self.off(gpa), *vals)

    def unpack(self, fmt, gpa):
        return struct.unpack_from(fmt, self.view, self.off(gpa))

    def write(self, gpa, data: bytes):
        o = self.off(gpa)
        self.view[o:o + len(data)] = data

    def read(self, gpa, n) -> bytes:
        o = self.off(gpa)
        return bytes(self.view[o:o + n])

    def put(self, data: bytes, align=16):
        a = self.alloc(max(len(data), 1), align)
        self.write(a, data)
        return a


def _err():
    return ffi.new("char[]", 256)


def attach(dev, mem: GuestMem, features):
    err = _err()
    assert lib.vmm_vdev_test_attach(dev.ptr, mem.buf, mem.gpa, mem.size, features, err, 256) == 0, ffi.string(err)


def setup_queue(dev, mem: GuestMem, qi, size) -> Queue:
    q = Queue(mem, qi, size)
    err = _err()
    rc = lib.vmm_vdev_test_queue(dev.ptr, qi, size, q.desc, q.avail, q.used, err, 256)
    if rc != 0:
        raise ValueError(ffi.string(err).decode())
    return q


def notify(dev, qi) -> int:
    return lib.vmm_vdev_test_notify(dev.ptr, qi)


def irqs(dev, qi) -> int:
    return lib.vmm_vdev_test_irqs(dev.ptr, qi)
