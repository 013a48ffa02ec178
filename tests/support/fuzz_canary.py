"""A deliberate out-of-bounds write through the sanitized core, to prove that the fuzz tier
catches one (tests/test_fuzz_tier.py). Not a bug in the product: the test transport is told
that guest memory is one page larger than the buffer behind it, and virtio-blk is asked to
write a request's status byte just past the buffer's end, which the sanitized core must
report as a heap-buffer-overflow.

Usage (under support.sanitized_core.env()): python -m support.fuzz_canary SECONDS ROUNDS SEED DISK
(the fuzzers' arguments, so that support.fuzz_run runs it like one; only DISK is used)."""
import struct
import sys

from cffi import FFI

from support.virtio_driver import VERSION_1, ffi, lib
from vmm.devices import Disk
from vmm.engines.virtio_device import open_device

SIZE = 64 * 1024
GPA = 0x10000

_c = FFI()
_c.cdef("void *malloc(size_t); void free(void *);")
libc = _c.dlopen(None)


def main(disk):
    raw = libc.malloc(SIZE)   # plain malloc: ASan puts a redzone right after it
    mem = ffi.cast("uint8_t *", _c.cast("uintptr_t", raw))
    view = ffi.buffer(mem, SIZE)
    view[:] = bytes(SIZE)
    dev = open_device(Disk(disk))
    err = ffi.new("char[]", 256)
    assert lib.vmm_vdev_test_attach(dev.ptr, mem, GPA, SIZE + 4096, VERSION_1, err, 256) == 0
    desc, avail, used = GPA, GPA + 4096, GPA + 8192
    assert lib.vmm_vdev_test_queue(dev.ptr, 0, 4, desc, avail, used, err, 256) == 0
    hdr = GPA + 12288
    struct.pack_into("<IIQ", view, hdr - GPA, 0, 0, 0)                 # IN, sector 0
    struct.pack_into("<QIHH", view, 0, hdr, 16, 1, 1)                  # header
    struct.pack_into("<QIHH", view, 16, GPA + 16384, 512, 3, 2)        # data (writable)
    struct.pack_into("<QIHH", view, 32, GPA + SIZE + 8, 1, 2, 0)       # status: past the end
    struct.pack_into("<HHH", view, 4096, 0, 1, 0)                      # avail: idx 1, head 0
    lib.vmm_vdev_test_notify(dev.ptr, 0)
    print("canary: the out-of-bounds write went unnoticed")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[4]))
