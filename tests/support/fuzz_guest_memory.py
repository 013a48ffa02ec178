"""The virtqueue walker (through virtio-blk) over guest memory in several regions with
unmapped guard pages between them, while another thread rewrites descriptors and rings.

Usage: python -m support.fuzz_guest_memory SECONDS ROUNDS SEED DISK

Layout (host): guard | R0 | guard | R1 | guard | R2 | guard | R3 | guard, the guards
PROT_NONE, so any access outside a region is a SIGSEGV even without ASan. Guest addresses:
R1 starts exactly where R0 ends (contiguous for the guest, not for the host: a buffer that
runs across must be refused, not walked as one), R2 after a hole, R3 near the top of the
64-bit space. Queues (sizes 1..256, plus refused ones) and indirect tables go anywhere.

The main thread's choices come from Random(seed) alone, so VMM_FUZZ_SEED + VMM_FUZZ_ROUNDS
replay its sequence; the mutator thread (Random(seed + 1)) races with the device, so what it
overwrites when can differ between runs (set VMM_FUZZ_MUTATOR=0 for an exact replay).
"""
import ctypes
import mmap
import random
import struct
import sys
import threading

from support.fuzz_run import Budget, mutator_on
from support.virtio_driver import EVENT_IDX, INDIRECT, VERSION_1, ffi, lib
from vmm.devices import Disk
from vmm.engines.virtio_device import open_device

PAGE = mmap.PAGESIZE
REGION_PAGES = (16, 8, 32, 4)
USED_AREA = 3 * PAGE   # at the start of R2, for the used ring (6 + 8 * 256 bytes at most)
QSIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256)

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mprotect.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)


class Region:
    def __init__(self, gpa, size, off, view, reserved=0):
        self.gpa, self.size, self.off, self.view = gpa, size, off, view
        self.lo = reserved   # the first bytes hold the used ring: no other address points there

    @property
    def end(self):
        return self.gpa + self.size


def layout(rnd):
    sizes = [p * PAGE for p in REGION_PAGES]
    total = PAGE * (len(sizes) + 1) + sum(sizes)
    mm = mmap.mmap(-1, total, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    base = ctypes.addressof(ctypes.c_char.from_buffer(mm))
    gpas = [0x100000, 0x100000 + sizes[0], 0x40000000 + rnd.randrange(16) * PAGE,
            2**64 - sizes[3] - PAGE * (1 + rnd.randrange(4))]
    regions, off = [], PAGE
    for i, (gpa, size) in enumerate(zip(gpas, sizes)):
        regions.append(Region(gpa, size, off, memoryview(mm)[off:off + size], USED_AREA if i == 2 else 0))
        off += size + PAGE
    for g in range(len(sizes) + 1):  # the guards: the page before each region and after the last
        at = regions[g].off - PAGE if g < len(regions) else regions[-1].off + regions[-1].size
        if _libc.mprotect(base + at, PAGE, 0) != 0:
            raise OSError(ctypes.get_errno(), "mprotect")
    return mm, base, regions


def main(budget, seed, disk):
    rnd = random.Random(seed)
    mm, base, regions = layout(rnd)
    dev = open_device(Disk(disk))
    err = ffi.new("char[]", 256)
    feats = VERSION_1 | INDIRECT | EVENT_IDX

    def attach():
        r0 = regions[0]
        assert lib.vmm_vdev_test_attach(dev.ptr, ffi.cast("uint8_t *", base + r0.off), r0.gpa, r0.size,
                                        feats, err, 256) == 0, ffi.string(err)
        for r in regions[1:]:
            assert lib.vmm_vdev_test_add_memory(dev.ptr, ffi.cast("uint8_t *", base + r.off), r.gpa, r.size,
                                                err, 256) == 0, ffi.string(err)

    def region_of(gpa):
        for r in regions:
            if r.gpa <= gpa < r.end:
                return r
        raise AssertionError(hex(gpa))

    def put(gpa, data):
        r = region_of(gpa)
        o = gpa - r.gpa
        r.view[o:o + len(data)] = data

    def get(gpa, n):
        r = region_of(gpa)
        return bytes(r.view[gpa - r.gpa:gpa - r.gpa + n])

    def place(n, align, rng=rnd):
        """A guest address for n bytes inside one region, outside the used ring's area."""
        r = rng.choice([r for r in regions if r.size - r.lo >= n])
        return r.gpa + r.lo + (rng.randrange(r.size - r.lo - n + 1) & ~(align - 1))

    def addr():
        r = rnd.choice(regions)
        k = rnd.random()
        if k < 0.55:
            return r.gpa + r.lo + rnd.randrange(r.size - r.lo)
        if k < 0.8:   # straddling a region's end (R0 -> R1 is contiguous in guest space)
            return r.end - rnd.randrange(1, 600)
        if k < 0.9:   # just before a region: in the hole or the guard's guest shadow
            return r.gpa - rnd.randrange(1, 64)
        return rnd.choice([0, 2**64 - rnd.randrange(1, 4096), rnd.getrandbits(64), regions[1].gpa])

    def length():
        return rnd.choice([0, 1, 16, 17, 512, 600, 4096, PAGE * 3, rnd.randrange(1 << 16), 0xFFFFFFFF])

    def descs(n, table_n):
        out = b""
        for _ in range(n):
            flags = rnd.getrandbits(3) if rnd.random() < 0.9 else rnd.getrandbits(16)
            nxt = rnd.randrange(table_n + 2) if rnd.random() < 0.95 else rnd.getrandbits(16)
            out += struct.pack("<QIHH", addr(), length(), flags, nxt)
        return out

    def request(size, areas):
        """A blk request (header, data, status) as a chain of free-standing descriptors or an
        indirect table, its buffers in random regions (a data buffer sometimes runs from R0
        into R1), one field sometimes corrupted. Returns the head index."""
        h = place(16, 8)
        put(h, struct.pack("<IIQ", rnd.choice([0, 1, 4, 8]), 0, rnd.randrange(70)))
        parts = [[h, 16, 0]]
        for _ in range(rnd.randrange(0, 3)):
            n = 512 * rnd.randrange(1, 4)
            parts.append([regions[0].end - rnd.choice([512, 256]) if rnd.random() < 0.1 else place(n, 8), n, 2])
        parts.append([place(1, 1), 1, 2])
        if rnd.random() < 0.3:
            parts[rnd.randrange(len(parts))][rnd.randrange(2)] = rnd.choice([addr(), length()])
        if rnd.random() < 0.3:   # indirect
            t = place(16 * len(parts), 16)
            put(t, b"".join(struct.pack("<QIHH", a, ln & 0xFFFFFFFF, fl | (1 if k + 1 < len(parts) else 0), k + 1)
                            for k, (a, ln, fl) in enumerate(parts)))
            areas.append((t, 16 * len(parts)))
            head = rnd.randrange(size)
            put(q["desc"] + 16 * head, struct.pack("<QIHH", t, 16 * len(parts), 4, 0))
            return head
        idx = rnd.sample(range(size), min(size, len(parts)))
        for k, i in enumerate(idx):
            a, ln, fl = parts[k]
            more = k + 1 < len(idx)
            put(q["desc"] + 16 * i, struct.pack("<QIHH", a, ln & 0xFFFFFFFF, fl | more, idx[k + 1] if more else 0))
        return idx[0]

    # The mutator: random bytes over the rings and tables the device is walking. Its own
    # random stream, so the main thread's sequence does not depend on the race.
    live = {"areas": []}
    stop = threading.Event()
    mutations = [0]

    def mutator():
        mrnd = random.Random(seed + 1)
        while not stop.is_set():
            areas = live["areas"]
            if not areas:
                stop.wait(0.001)
                continue
            gpa, n = mrnd.choice(areas)
            o = mrnd.randrange(n)
            k = min(n - o, mrnd.choice([1, 2, 8, 16]))
            put(gpa + o, bytes(mrnd.getrandbits(8) for _ in range(k)))
            mutations[0] += 1

    q = {}

    def setup():
        attach()
        size = rnd.choice(QSIZES) if rnd.random() < 0.95 else rnd.choice([0, 3, 257, 100])
        used_at = regions[2].gpa + (rnd.randrange(USED_AREA - 6 - 8 * 256) & ~3)
        if size not in QSIZES:
            assert lib.vmm_vdev_test_queue(dev.ptr, 0, size, place(16, 16), place(8, 2), used_at,
                                           err, 256) != 0, f"queue size {size} accepted"
            size = 16
        # Clean rings before the device sees them (it takes the used index from memory).
        d, a, u = place(16 * size, 16), place(6 + 2 * size, 2), used_at
        put(d, bytes(16 * size))
        put(a, bytes(6 + 2 * size))
        put(u, bytes(6 + 8 * size))
        assert lib.vmm_vdev_test_queue(dev.ptr, 0, size, d, a, u, err, 256) == 0, ffi.string(err)
        q.update(size=size, desc=d, avail=a, used=u, idx=0)

    if mutator_on():
        threading.Thread(target=mutator, daemon=True).start()
    setup()
    broken = 0
    while budget.more():
        size = q["size"]
        areas = [(q["desc"], 16 * size), (q["avail"], 4 + 2 * size)]
        put(q["desc"], descs(size, size))
        for _ in range(3):   # indirect tables and request headers, anywhere
            n = rnd.randrange(1, 40)
            t = place(16 * n, 16)
            put(t, descs(n, n))
            areas.append((t, 16 * n))
            h = place(16, 1)
            put(h, struct.pack("<IIQ", rnd.choice([0, 1, 4, 8, rnd.getrandbits(32)]), 0,
                               rnd.choice([0, 1, 63, rnd.getrandbits(64)])))
        mutating = rnd.random() < 0.7
        heads = []
        if rnd.random() < 0.7:   # mostly plausible requests, so the device paths run too
            for _ in range(min(size, rnd.randrange(1, 5))):
                heads.append(request(size, areas))
        mutating = rnd.random() < 0.7
        live["areas"] = areas if mutating else []
        n = len(heads) or rnd.randrange(1, size + 1)
        for i in range(n):
            head = heads[i] if heads else rnd.randrange(size) if rnd.random() < 0.97 else rnd.getrandbits(16)
            put(q["avail"] + 4 + 2 * ((q["idx"] + i) % size), struct.pack("<H", head))
        q["idx"] = (q["idx"] + n) & 0xFFFF if rnd.random() < 0.98 else rnd.getrandbits(16)
        put(q["avail"] + 2, struct.pack("<H", q["idx"]))
        before = struct.unpack("<H", get(q["used"] + 2, 2))[0]
        rc = lib.vmm_vdev_test_notify(dev.ptr, 0)
        live["areas"] = []
        after = struct.unpack("<H", get(q["used"] + 2, 2))[0]
        # Without a racing guest, one notify returns at most the ring's worth of chains
        # published (with one, the avail index may legitimately move on during the walk).
        assert mutating or (after - before) & 0xFFFF <= size, (before, after, size)
        if rc != 0 or rnd.random() < 0.02:
            broken += rc != 0
            setup()
    stop.set()
    c = dev.counters()
    print(f"rounds={budget.rounds} broken={broken} mutations={mutations[0]} requests={c['requests']} "
          f"rejected={c['rejected']} errors={c['errors']}")
    dev.close()


if __name__ == "__main__":
    main(Budget.from_argv(sys.argv[1:3]), int(sys.argv[3]), sys.argv[4])
