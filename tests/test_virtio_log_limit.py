"""Per-device log rate limit (csrc/virtio/device.c, vdev_log): a guest that breaks a queue
and resets the device in a loop gets the first 8 lines to the host's stderr, then at most
one per 10 s, which says how many were suppressed before it."""
import time

import pytest

from vmm.devices import Disk
from vmm.engines.virtio_device import open_device
from support.virtio_driver import VERSION_1, GuestMem, attach, ffi, lib, notify, setup_queue

BURST = 8  # VDEV_LOG_BURST
INTERVAL_S = 10  # VDEV_LOG_INTERVAL_S


def break_and_reset(dev, q):
    """One cycle of a hostile driver: the queue set up again over a ring whose avail entry
    names a head out of range breaks it (one log line), then a device reset."""
    err = ffi.new("char[]", 256)
    assert lib.vmm_vdev_test_queue(dev.ptr, 0, q.size, q.desc, q.avail, q.used, err, 256) == 0
    assert notify(dev, 0) == -1
    dev.reset()


def device_lines(err):
    return [ln for ln in err.splitlines() if ln.startswith("vmm: virtio-blk:")]


@pytest.fixture
def disk(tmp_path):
    img = tmp_path / "d.img"
    img.write_bytes(bytes(4096))
    dev = open_device(Disk(str(img)))
    mem = GuestMem()
    attach(dev, mem, VERSION_1)
    q = setup_queue(dev, mem, 0, 8)
    q.publish(8)  # stays in guest memory: every set-up finds it
    yield dev, q
    dev.close()


def test_ten_thousand_break_reset_cycles_print_a_bounded_number_of_lines(disk, capfd):
    dev, q = disk
    capfd.readouterr()
    start = time.monotonic()
    for _ in range(10_000):
        break_and_reset(dev, q)
    elapsed = time.monotonic() - start
    lines = device_lines(capfd.readouterr().err)
    assert len(lines) <= BURST + 1 + int(elapsed // INTERVAL_S), (elapsed, lines)
    assert len(lines) >= BURST
    assert "descriptor 8" in lines[0] and "the queue stops until the driver resets the device" in lines[0]
    assert f"at most one per {INTERVAL_S} s" in lines[BURST - 1]


@pytest.mark.slow
def test_after_the_interval_one_line_counts_what_was_suppressed(disk, capfd):
    dev, q = disk
    for _ in range(BURST + 100):
        break_and_reset(dev, q)
    time.sleep(INTERVAL_S + 0.5)  # the rate limit is a wall-clock interval: let one pass
    break_and_reset(dev, q)
    lines = device_lines(capfd.readouterr().err)
    assert len(lines) == BURST + 1, lines
    assert "(100 similar messages suppressed before this one)" in lines[-1]
