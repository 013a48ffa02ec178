"""virtio-blk end to end against its file: random requests (reads, writes, flushes, GET_ID,
unknown types; sectors around the end of the disk; lengths that are or are not whole
sectors; buffers split anywhere, direct or indirect, batched up to the queue size) checked
against a model of the disk, while the host also writes the file behind the device's back.

Usage: python -m support.fuzz_blk_file SECONDS ROUNDS SEED DIR

The model is the device's contract (csrc/virtio/blk.c): the header is the first 16
readable bytes, the status the last writable byte; IN/OUT move whole sectors inside the
disk, else IOERR; GET_ID writes up to 20 bytes of the serial; other types are UNSUPP.
"""
import os
import random
import struct
import sys

from support.fuzz_run import Budget
from support.virtio_driver import EVENT_IDX, INDIRECT, VERSION_1, GuestMem, attach, notify, setup_queue
from vmm.devices import Disk
from vmm.engines.virtio_device import open_device

S_OK, S_IOERR, S_UNSUPP = 0, 1, 2
T_IN, T_OUT, T_FLUSH, T_GET_ID = 0, 1, 4, 8
SLOT = 80 * 1024   # one request's buffers
SERIAL = "fuzz-serial-0123"
DISK_ROUNDS = 1000   # then another disk size and queue size


def split(total, rnd, pieces):
    """total bytes (> 0) as 1..pieces non-empty lengths."""
    cuts = sorted(rnd.randrange(total + 1) for _ in range(rnd.randrange(pieces)))
    bounds = [0, *cuts, total]
    return [b - a for a, b in zip(bounds, bounds[1:]) if b - a] or [total]


def main(budget, seed, d):
    rnd = random.Random(seed)
    stats = {"ok": 0, "ioerr": 0, "unsupp": 0, "host_writes": 0, "disks": 0}
    path = os.path.join(d, "disk.img")
    while budget.left():
        stats["disks"] += 1
        one_disk(budget, rnd, path, stats)
    print(f"rounds={budget.rounds} " + " ".join(f"{k}={v}" for k, v in stats.items()))


def one_disk(budget, rnd, path, stats):
    """A fresh disk and queue of random sizes, for up to DISK_ROUNDS rounds."""
    sectors = rnd.choice([1, 8, 64, 129])
    model = bytearray(rnd.randbytes(sectors * 512))
    with open(path, "wb") as f:
        f.write(model)
    dev = open_device(Disk(path, serial=SERIAL))
    qsize = rnd.choice([4, 16, 64, 256])
    mem = GuestMem(size=(qsize // 2 + 4) * SLOT + (1 << 20))
    attach(dev, mem, VERSION_1 | INDIRECT | EVENT_IDX)
    q = setup_queue(dev, mem, 0, qsize)
    slots = [mem.alloc(SLOT, 512) for _ in range(max(1, qsize // 3))]
    mark = mem.top
    fd = os.open(path, os.O_RDWR)

    def request(slot):
        """Lays out one request in its slot; returns (bufs, check) where check(used_len)
        verifies the outcome against the model (and applies a write to it)."""
        t = rnd.choice([T_IN, T_IN, T_OUT, T_OUT, T_FLUSH, T_GET_ID, rnd.choice([2, 3, 5, 11, 13, 2**32 - 1])])
        sector = rnd.choice([0, rnd.randrange(sectors), sectors - 1, sectors, sectors + 1, 2**64 - 1,
                             rnd.getrandbits(64)])
        n = rnd.choice([0, 512, 1024, 4096, 512 * rnd.randrange(1, 65), rnd.randrange(1, 9000)])
        payload = rnd.randbytes(n) if t == T_OUT else b""
        head = struct.pack("<IIQ", t, 0, sector) + payload
        wlen = (n if t == T_IN else 20 if t == T_GET_ID and rnd.random() < 0.7 else rnd.randrange(0, 30)) + 1
        mem.write(slot, head)
        mem.write(slot + len(head), b"\xee" * wlen)   # poison: what the device leaves unwritten shows
        bufs, at = [], slot
        for ln in split(len(head), rnd, 3):
            bufs.append((at, ln, False))
            at += ln
        wr = at
        for ln in split(wlen, rnd, 3):
            bufs.append((at, ln, True))
            at += ln

        def check(used_len):
            status = mem.read(wr + wlen - 1, 1)[0]
            in_range = n % 512 == 0 and sector <= sectors and n // 512 <= sectors - sector
            if t == T_IN:
                want = S_OK if in_range else S_IOERR
                if want == S_OK:
                    assert mem.read(wr, n) == bytes(model[sector * 512:sector * 512 + n]), "read data differs"
                    assert used_len == n + 1, (used_len, n)
            elif t == T_OUT:
                want = S_OK if in_range else S_IOERR
                if want == S_OK:
                    model[sector * 512:sector * 512 + n] = payload
            elif t == T_FLUSH:
                want = S_OK
            elif t == T_GET_ID:
                want = S_OK
                k = min(wlen - 1, 20)
                assert mem.read(wr, k) == SERIAL.encode().ljust(20, b"\0")[:k], "GET_ID"
            else:
                want = S_UNSUPP
            if want != S_OK or t in (T_OUT, T_FLUSH):
                assert used_len == 1, (t, want, used_len)   # the status byte alone
            assert status == want, f"type {t} sector {sector} len {n}: status {status}, expected {want}"
            stats[{S_OK: "ok", S_IOERR: "ioerr", S_UNSUPP: "unsupp"}[want]] += 1
        return bufs, check

    for _ in range(DISK_ROUNDS):
        if not budget.more():
            break
        if rnd.random() < 0.1:   # the host writes the file itself: the guest must see it
            off = rnd.randrange(len(model))
            data = rnd.randbytes(min(rnd.randrange(1, 4096), len(model) - off))
            os.pwrite(fd, data, off)
            model[off:off + len(data)] = data
            stats["host_writes"] += 1
        mem.top = mark   # the last round's indirect tables are free again
        batch = rnd.sample(slots, rnd.randrange(1, len(slots) + 1))
        pending = {}
        for i, slot in enumerate(batch):
            bufs, check = request(slot)
            later = len(batch) - i - 1   # each needs at least one descriptor
            head = q.add(bufs, indirect=rnd.random() < 0.3 or len(bufs) + later > len(q.free))
            pending[head] = check
        assert notify(dev, 0) == 0, dev.broken()
        for head, used_len in q.take_used():
            pending.pop(head)(used_len)
        assert not pending, f"requests not completed: {sorted(pending)}"
    os.close(fd)
    with open(path, "rb") as f:
        assert f.read() == bytes(model), "the disk file differs from the model"
    dev.close()


if __name__ == "__main__":
    main(Budget.from_argv(sys.argv[1:3]), int(sys.argv[3]), sys.argv[4])
