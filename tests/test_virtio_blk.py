"""virtio-blk against synthetic guest memory (no VM): normal requests and hostile chains."""
import os
import struct

import pytest

from vmm.devices import Disk
from vmm.engines.virtio_device import open_device
from support.virtio_driver import (EVENT_IDX, F_INDIRECT, F_NEXT, F_WRITE, INDIRECT, VERSION_1, GuestMem,
                           attach, irqs, notify, setup_queue)

T_IN, T_OUT, T_FLUSH, T_GET_ID = 0, 1, 4, 8
S_OK, S_IOERR, S_UNSUPP = 0, 1, 2
DISK_SECTORS = 64


@pytest.fixture
def image(tmp_path):
    p = tmp_path / "disk.img"
    p.write_bytes(bytes(i % 251 for i in range(DISK_SECTORS * 512)))
    return p


def open_disk(path, features=VERSION_1 | INDIRECT | EVENT_IDX, size=16, **kw):
    dev = open_device(Disk(str(path), **kw))
    mem = GuestMem()
    attach(dev, mem, features)
    q = setup_queue(dev, mem, 0, size)
    return dev, mem, q


def request(mem, kind, sector, data=None, nread=0, split=1):
    """Buffers of a request: header, data (in `split` pieces), status."""
    hdr = mem.put(struct.pack("<IIQ", kind, 0, sector))
    bufs = [(hdr, 16, False)]
    if data is not None:
        step = -(-len(data) // split)
        for i in range(0, len(data), step):
            bufs.append((mem.put(data[i:i + step]), len(data[i:i + step]), False))
    if nread:
        step = -(-nread // split)
        for i in range(0, nread, step):
            n = min(step, nread - i)
            bufs.append((mem.alloc(n), n, True))
    status = mem.alloc(1)
    mem.write(status, b"\xff")
    bufs.append((status, 1, True))
    return bufs


def status_of(mem, bufs):
    return mem.read(bufs[-1][0], 1)[0]


def read_back(mem, bufs):
    return b"".join(mem.read(a, n) for a, n, w in bufs[1:-1] if w)


def run(dev, q, bufs, indirect=False):
    head = q.add(bufs, indirect=indirect)
    assert notify(dev, 0) == 0, dev.broken
    used = q.take_used()
    assert [u[0] for u in used] == [head]
    return used[0][1]


def test_read_write_flush_get_id(image):
    dev, mem, q = open_disk(image, serial="disk-serial-01")
    cfg = dev.config(0, 16)
    assert struct.unpack_from("<Q", cfg)[0] == DISK_SECTORS
    seg_max = struct.unpack_from("<I", cfg, 12)[0]
    assert 1 <= seg_max <= 254

    data = os.urandom(1024)
    w = request(mem, T_OUT, 3, data=data)
    assert run(dev, q, w) == 1 and status_of(mem, w) == S_OK
    assert image.read_bytes()[3 * 512:5 * 512] == data

    r = request(mem, T_IN, 3, nread=1024)
    assert run(dev, q, r) == 1025 and status_of(mem, r) == S_OK
    assert read_back(mem, r) == data

    f = request(mem, T_FLUSH, 0)
    assert run(dev, q, f) == 1 and status_of(mem, f) == S_OK

    g = request(mem, T_GET_ID, 0, nread=20)
    assert run(dev, q, g) == 21 and status_of(mem, g) == S_OK
    assert read_back(mem, g) == b"disk-serial-01".ljust(20, b"\0")

    c = dev.counters()
    assert c["requests"] == 4 and c["bytes_written"] == 1024 and c["bytes_read"] == 1024
    assert c["errors"] == 0 and c["rejected"] == 0
    dev.close()


def test_multiple_segments_and_split_header(image):
    dev, mem, q = open_disk(image)
    data = os.urandom(2048)
    w = request(mem, T_OUT, 10, data=data, split=5)
    # The header itself in two descriptors: 5 + 11 bytes.
    hdr = w[0][0]
    w = [(hdr, 5, False), (hdr + 5, 11, False)] + w[1:]
    assert run(dev, q, w) == 1 and status_of(mem, w) == S_OK
    r = request(mem, T_IN, 10, nread=2048, split=7)
    assert run(dev, q, r) == 2049
    assert read_back(mem, r) == data == image.read_bytes()[10 * 512:14 * 512]


def test_indirect_descriptors(image):
    dev, mem, q = open_disk(image)
    data = os.urandom(1536)
    w = request(mem, T_OUT, 20, data=data, split=3)
    assert run(dev, q, w, indirect=True) == 1 and status_of(mem, w) == S_OK
    r = request(mem, T_IN, 20, nread=1536, split=3)
    assert run(dev, q, r, indirect=True) == 1537
    assert read_back(mem, r) == data


def test_event_idx_suppresses_interrupts(image):
    dev, mem, q = open_disk(image)
    q.set_used_event(5)
    for i in range(3):
        q.add(request(mem, T_IN, i, nread=512))
    assert notify(dev, 0) == 0
    assert q.used_idx() == 3
    # First notification is always sent; used_event=5 not yet crossed after that.
    first = irqs(dev, 0)
    assert first == 1
    # The device asked to be kicked at the next entry it has not seen.
    assert q.avail_event() == 3
    q.take_used()
    q.add(request(mem, T_IN, 0, nread=512))
    notify(dev, 0)
    assert irqs(dev, 0) == first  # used idx 4, event 5: no interrupt
    q.take_used()
    for _ in range(2):
        q.add(request(mem, T_IN, 0, nread=512))
    notify(dev, 0)
    assert irqs(dev, 0) == first + 1  # crossed 5


def test_no_interrupt_flag_without_event_idx(image):
    dev, mem, q = open_disk(image, features=VERSION_1)
    q.set_avail_flags(1)
    q.add(request(mem, T_IN, 0, nread=512))
    notify(dev, 0)
    assert q.used_idx() == 1 and irqs(dev, 0) == 0
    q.set_avail_flags(0)
    q.add(request(mem, T_IN, 0, nread=512))
    notify(dev, 0)
    assert irqs(dev, 0) == 1


def test_read_only_disk_refuses_writes(image):
    before = image.read_bytes()
    dev, mem, q = open_disk(image, read_only=True)
    assert dev.features & (1 << 5)  # VIRTIO_BLK_F_RO
    w = request(mem, T_OUT, 0, data=b"x" * 512)
    run(dev, q, w)
    assert status_of(mem, w) == S_IOERR
    assert image.read_bytes() == before
    r = request(mem, T_IN, 0, nread=512)
    run(dev, q, r)
    assert status_of(mem, r) == S_OK and read_back(mem, r) == before[:512]
    assert dev.counters()["errors"] == 1


@pytest.mark.parametrize("sector,nbytes", [(DISK_SECTORS, 512), (DISK_SECTORS - 1, 1024),
                                           (2**63, 512), (2**64 - 1, 512), (0, 100)])
def test_request_past_the_end_or_partial_sector(image, sector, nbytes):
    before = image.read_bytes()
    dev, mem, q = open_disk(image)
    for kind, kw in ((T_IN, {"nread": nbytes}), (T_OUT, {"data": b"z" * nbytes})):
        b = request(mem, kind, sector, **kw)
        assert run(dev, q, b) == 1
        assert status_of(mem, b) == S_IOERR
    assert image.read_bytes() == before


def test_unknown_request_type(image):
    dev, mem, q = open_disk(image)
    b = request(mem, 77, 0)
    run(dev, q, b)
    assert status_of(mem, b) == S_UNSUPP


def test_looping_chain_breaks_queue(image):
    dev, mem, q = open_disk(image, size=4)
    hdr = mem.put(struct.pack("<IIQ", T_IN, 0, 0))
    q.write_desc(0, hdr, 16, F_NEXT, 1)
    q.write_desc(1, mem.alloc(512), 512, F_NEXT, 0)
    q.publish(0)
    assert notify(dev, 0) == -1
    assert "loops" in dev.broken
    # A broken queue does nothing more, even for good requests, until reset.
    q.add(request(mem, T_IN, 0, nread=512))
    assert notify(dev, 0) == -1 and q.used_idx() == 0


def test_avail_index_jump_breaks_queue(image):
    dev, mem, q = open_disk(image, size=8)
    q.set_avail_idx(9)
    assert notify(dev, 0) == -1
    assert "ran 9 entries ahead" in dev.broken


def test_head_out_of_range_breaks_queue(image):
    dev, mem, q = open_disk(image, size=8)
    q.publish(8)
    assert notify(dev, 0) == -1
    assert "descriptor 8" in dev.broken


def test_next_out_of_range_breaks_queue(image):
    dev, mem, q = open_disk(image, size=8)
    q.write_desc(0, mem.alloc(16), 16, F_NEXT, 200)
    q.publish(0)
    assert notify(dev, 0) == -1
    assert "next index 200" in dev.broken


def test_next_at_the_queue_size_breaks_queue(image):
    """The boundary: next == queue size is the first index outside the table (a check
    written `next > size` would follow it into whatever lies after the ring)."""
    dev, mem, q = open_disk(image, size=8)
    q.write_desc(0, mem.put(struct.pack("<IIQ", T_IN, 0, 0)), 16, F_NEXT, 7)
    q.write_desc(7, mem.alloc(512), 512, F_WRITE | F_NEXT, 8)
    q.publish(0)
    assert notify(dev, 0) == -1
    assert "next index 8 out of range (8 entries)" in dev.broken
    assert q.used_idx() == 0


def test_next_at_the_indirect_table_length_breaks_queue(image):
    """The same boundary inside an indirect table: next == the table's entry count."""
    dev, mem, q = open_disk(image, size=16)
    table = mem.alloc(16 * 4, 16)  # room for the entry just past the declared three
    q.write_desc(0, mem.put(struct.pack("<IIQ", T_IN, 0, 0)), 16, F_NEXT, 1, table=table)
    q.write_desc(1, mem.alloc(512), 512, F_WRITE | F_NEXT, 2, table=table)
    q.write_desc(2, mem.alloc(1), 1, F_WRITE | F_NEXT, 3, table=table)
    # What a `next > n` check would read as entry 3: a valid-looking last descriptor.
    q.write_desc(3, mem.alloc(1), 1, F_WRITE, 0, table=table)
    q.write_desc(0, table, 16 * 3, F_INDIRECT)
    q.publish(0)
    assert notify(dev, 0) == -1
    assert "next index 3 out of range (3 entries)" in dev.broken
    assert q.used_idx() == 0


def test_nested_indirect_breaks_queue(image):
    dev, mem, q = open_disk(image)
    inner = mem.alloc(16, 16)
    outer = mem.alloc(16, 16)
    q.write_desc(0, mem.alloc(16), 16, 0, table=inner)
    q.write_desc(0, inner, 16, F_INDIRECT, table=outer)
    q.write_desc(0, outer, 16, F_INDIRECT)
    q.publish(0)
    assert notify(dev, 0) == -1
    assert "nested indirect" in dev.broken


def test_indirect_table_too_long_or_misshapen(image):
    # Longer than the 1024-entry cap, not a multiple of 16, empty.
    for length in (16 * 1025, 24, 0):
        dev, mem, q = open_disk(image, size=16)
        table = mem.alloc(16 * 1025, 16)
        q.write_desc(0, table, length, F_INDIRECT)
        q.publish(0)
        assert notify(dev, 0) == -1, length
        dev.close()


def test_indirect_table_longer_than_queue_is_fine(image):
    # Linux sizes indirect tables by seg_max, not the queue size.
    dev, mem, q = open_disk(image, size=4)
    data = os.urandom(512 * 8)
    w = request(mem, T_OUT, 0, data=data, split=8)
    assert run(dev, q, w, indirect=True) == 1 and status_of(mem, w) == S_OK
    assert image.read_bytes()[:len(data)] == data


def test_loop_inside_indirect_table_breaks_queue(image):
    dev, mem, q = open_disk(image, size=16)
    table = mem.alloc(16 * 3, 16)
    for i in range(3):
        q.write_desc(i, mem.alloc(16), 16, F_NEXT, (i + 1) % 3, table=table)
    q.write_desc(0, table, 48, F_INDIRECT)
    q.publish(0)
    assert notify(dev, 0) == -1 and "loops" in dev.broken


def test_indirect_not_at_head_breaks_queue(image):
    dev, mem, q = open_disk(image, size=16)
    table = mem.alloc(16, 16)
    q.write_desc(0, mem.alloc(16), 16, 0, table=table)
    q.write_desc(0, mem.alloc(16), 16, F_NEXT, 1)
    q.write_desc(1, table, 16, F_INDIRECT)
    q.publish(0)
    assert notify(dev, 0) == -1 and "not at the head" in dev.broken


def test_indirect_not_negotiated(image):
    dev, mem, q = open_disk(image, features=VERSION_1)
    b = request(mem, T_IN, 0, nread=512)
    q.add(b, indirect=True)
    assert notify(dev, 0) == -1 and "not negotiated" in dev.broken


@pytest.mark.parametrize("addr,length", [
    (0x10, 16),                        # below guest RAM
    (0x10000 + (1 << 20) - 8, 16),     # straddles the end of RAM
    (0x10000, 0xFFFFFFFF),             # huge
    (2**64 - 8, 16),                   # wraps the address space
])
def test_bad_buffer_is_rejected_not_fatal(image, addr, length):
    before = image.read_bytes()
    dev, mem, q = open_disk(image)
    hdr = mem.put(struct.pack("<IIQ", T_IN, 0, 0))
    status = mem.alloc(1)
    head = q.add([(hdr, 16, False), (addr, length, True), (status, 1, True)])
    assert notify(dev, 0) == 0
    assert q.take_used() == [(head, 0)]
    assert dev.counters()["rejected"] == 1 and dev.broken is None
    # The queue keeps working.
    good = request(mem, T_IN, 1, nread=512)
    assert run(dev, q, good) == 513 and read_back(mem, good) == before[512:1024]


def test_zero_length_descriptors_are_ignored(image):
    dev, mem, q = open_disk(image)
    b = request(mem, T_IN, 2, nread=512)
    b = b[:1] + [(mem.alloc(1), 0, True)] + b[1:]
    b = [b[0], (0, 0, False)] + b[1:]  # zero-length, even at address 0
    head = q.add(b)
    notify(dev, 0)
    assert q.take_used() == [(head, 513)]


def test_readable_after_writable_is_rejected(image):
    dev, mem, q = open_disk(image)
    b = request(mem, T_IN, 0, nread=512)
    b = [b[0], b[1], (mem.alloc(16), 16, False), b[2]]
    head = q.add(b)
    notify(dev, 0)
    assert q.take_used() == [(head, 0)]


def test_chain_without_status_byte(image):
    dev, mem, q = open_disk(image)
    hdr = mem.put(struct.pack("<IIQ", T_IN, 0, 0))
    head = q.add([(hdr, 16, False)])
    notify(dev, 0)
    assert q.take_used() == [(head, 0)]
    assert dev.counters()["errors"] == 1


def test_short_header(image):
    dev, mem, q = open_disk(image)
    status = mem.alloc(1)
    head = q.add([(mem.alloc(8), 8, False), (status, 1, True)])
    notify(dev, 0)
    assert q.take_used() == [(head, 1)]
    assert mem.read(status, 1) == bytes([S_IOERR])


def test_ring_setup_is_checked(image):
    dev = open_device(Disk(str(image)))
    mem = GuestMem()
    attach(dev, mem, VERSION_1)
    from support.virtio_driver import ffi, lib
    err = ffi.new("char[]", 256)
    assert lib.vmm_vdev_test_queue(dev.ptr, 0, 16, 0x10, 0x10000, 0x10100, err, 256) == -1
    assert b"outside guest memory" in ffi.string(err)
    assert lib.vmm_vdev_test_queue(dev.ptr, 0, 12, 0x10000, 0x10200, 0x10400, err, 256) == -1
    assert b"power of 2" in ffi.string(err)
    assert lib.vmm_vdev_test_queue(dev.ptr, 0, 16, 0x10008, 0x10200, 0x10400, err, 256) == -1
    assert lib.vmm_vdev_test_queue(dev.ptr, 1, 16, 0x10000, 0x10200, 0x10400, err, 256) == -1
    assert b"queue 1 out of range" in ffi.string(err)


def test_reset_recovers_broken_queue(image):
    dev, mem, q = open_disk(image, size=8)
    q.set_avail_idx(100)
    assert notify(dev, 0) == -1
    dev.reset()
    assert dev.broken is None
    attach(dev, mem, VERSION_1)
    q = setup_queue(dev, mem, 0, 8)
    b = request(mem, T_IN, 0, nread=512)
    assert run(dev, q, b) == 513


def test_missing_disk_is_a_clear_error(tmp_path):
    from vmm.errors import ConfigError
    with pytest.raises(ConfigError, match="does not exist"):
        open_device(Disk(str(tmp_path / "nope.img")))
    with pytest.raises(ConfigError, match="longer than 20"):
        open_device(Disk(str(tmp_path), serial="x" * 21))
