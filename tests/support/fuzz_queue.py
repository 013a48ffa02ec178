"""Random-descriptor fuzzing of the virtqueue walker through virtio-blk (run as a script so
a crash shows up as a failed child, not a dead test runner).

Usage: python -m support.fuzz_queue SECONDS ROUNDS SEED DISK (ROUNDS 0: as many as fit
in SECONDS; else exactly that many, to replay a run; see support.fuzz_run)

Guest memory is the middle of a larger buffer whose guard bytes on both sides must stay
untouched; descriptors, indirect tables and ring indices are random but biased towards
values near the edges of guest memory and the queue, where the checks are."""
import random
import struct
import sys

from support.fuzz_run import Budget
from support.virtio_driver import EVENT_IDX, INDIRECT, VERSION_1, ffi, lib  # noqa: E402
from vmm.devices import Disk  # noqa: E402
from vmm.engines.virtio_device import open_device  # noqa: E402

GPA = 0x100000
SIZE = 256 * 1024
GUARD = 64 * 1024
QSIZE = 16


def main(budget, seed, disk):
    rnd = random.Random(seed)
    raw = ffi.new("uint8_t[]", SIZE + 2 * GUARD)
    view = ffi.buffer(raw)
    view[:] = b"\xa5" * len(view)
    mem = ffi.cast("uint8_t *", raw) + GUARD
    dev = open_device(Disk(disk))
    err = ffi.new("char[]", 256)
    desc, avail, used = GPA, GPA + 4096, GPA + 8192

    def setup():
        view[GUARD:GUARD + 12288] = bytes(12288)
        assert lib.vmm_vdev_test_attach(dev.ptr, mem, GPA, SIZE, VERSION_1 | INDIRECT | EVENT_IDX, err, 256) == 0
        assert lib.vmm_vdev_test_queue(dev.ptr, 0, QSIZE, desc, avail, used, err, 256) == 0

    def addr():
        k = rnd.random()
        if k < 0.6:
            return GPA + 16384 + rnd.randrange(SIZE - 16384)
        if k < 0.8:
            return GPA + SIZE - rnd.randrange(64)
        return rnd.choice([0, GPA - 1, GPA - 16, 2**64 - rnd.randrange(1, 4096), rnd.getrandbits(64)])

    def length():
        return rnd.choice([0, 1, 15, 16, 17, 512, 4096, rnd.randrange(1 << 16), 0xFFFFFFFF, rnd.getrandbits(32)])

    def desc_bytes(n, table_n):
        out = b""
        for _ in range(n):
            flags = rnd.getrandbits(3) if rnd.random() < 0.9 else rnd.getrandbits(16)
            nxt = rnd.randrange(table_n + 2) if rnd.random() < 0.95 else rnd.getrandbits(16)
            out += struct.pack("<QIHH", addr(), length(), flags, nxt)
        return out

    def chain_bytes():
        """A plausible request (header, data, status) in a random descriptor chain, with
        one field of one descriptor sometimes corrupted."""
        order = rnd.sample(range(QSIZE), rnd.randrange(2, 5))
        h = GPA + 16384 + (rnd.randrange(0, SIZE - 32768) & ~511)
        table = {}
        for k, i in enumerate(order):
            last = k + 1 == len(order)
            if k == 0:
                d = [h, 16, 1, 0]
            elif last:
                d = [h + 4096, 1, 2, 0]
            else:
                d = [h + 512 * k, 512 * rnd.randrange(1, 4), 2, 0]
            d[2] |= 0 if last else 1
            d[3] = 0 if last else order[k + 1]
            if rnd.random() < 0.3:
                d[rnd.randrange(4)] = rnd.choice([addr(), length(), rnd.getrandbits(16), rnd.randrange(QSIZE)])
                d[2] &= 0xFFFF
                d[3] &= 0xFFFF
            table[i] = d
        return order[0], table

    def put(off, data):
        o = GUARD + off
        view[o:o + len(data)] = data

    setup()
    avail_idx = 0
    broken = 0
    while budget.more():
        put(0, desc_bytes(QSIZE, QSIZE))
        # A few indirect tables and request headers scattered in the data area.
        for _ in range(4):
            t = 16384 + rnd.randrange(0, SIZE - 16384 - 1024) & ~15
            put(t, desc_bytes(rnd.randrange(1, 40), 40))
            h = 16384 + rnd.randrange(0, SIZE - 16384 - 16)
            put(h, struct.pack("<IIQ", rnd.choice([0, 1, 4, 8, rnd.getrandbits(32)]), 0,
                               rnd.choice([0, 1, 63, rnd.getrandbits(64)])))
        n = rnd.randrange(1, QSIZE + 1)
        heads = []
        if rnd.random() < 0.7:  # mostly plausible chains, so the request paths get exercised
            for _ in range(rnd.randrange(1, 4)):
                head, table = chain_bytes()
                heads.append(head)
                hdr_at = table[head][0] - GPA
                if 16384 <= hdr_at < SIZE - 16:
                    put(hdr_at, struct.pack("<IIQ", rnd.choice([0, 1, 4, 8]), 0, rnd.randrange(70)))
                for i, (a, ln, fl, nx) in table.items():
                    put(16 * i, struct.pack("<QIHH", a & (2**64 - 1), ln & 0xFFFFFFFF, fl, nx))
            n = len(heads)
        for i in range(n):
            head = heads[i] if heads else rnd.randrange(QSIZE) if rnd.random() < 0.97 else rnd.getrandbits(16)
            put(4096 + 4 + 2 * ((avail_idx + i) % QSIZE), struct.pack("<H", head))
        avail_idx = (avail_idx + n) & 0xFFFF if rnd.random() < 0.98 else rnd.getrandbits(16)
        put(4096 + 2, struct.pack("<H", avail_idx))
        put(4096 + 4 + 2 * QSIZE, struct.pack("<H", rnd.getrandbits(16)))  # used_event
        before = struct.unpack_from("<H", view, GUARD + 8192 + 2)[0]
        rc = lib.vmm_vdev_test_notify(dev.ptr, 0)
        after = struct.unpack_from("<H", view, GUARD + 8192 + 2)[0]
        assert (after - before) & 0xFFFF <= QSIZE, (before, after)
        if rc != 0:
            broken += 1
            setup()
            avail_idx = 0
    assert bytes(view[:GUARD]) == b"\xa5" * GUARD, "write below guest memory"
    assert bytes(view[GUARD + SIZE:]) == b"\xa5" * GUARD, "write above guest memory"
    c = dev.counters()
    print(f"rounds={budget.rounds} broken={broken} requests={c['requests']} rejected={c['rejected']} "
          f"errors={c['errors']}")
    dev.close()


if __name__ == "__main__":
    main(Budget.from_argv(sys.argv[1:3]), int(sys.argv[3]), sys.argv[4])
