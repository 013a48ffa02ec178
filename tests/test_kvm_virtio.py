"""The virtio-mmio transport of the kvm engine, driven by a freestanding guest driver.

guest/tests/virtio_blk.S is a minimal virtio-mmio driver: it negotiates VERSION_1, sets up
one queue, reads sector 0 of the first disk and writes sector 1, each completion awaited
as a real interrupt (IOAPIC -> LAPIC -> IDT) and checked in the used ring, and reports
what it saw on a Python port device. The host side checks the data against the disk
file, the device's and the transport's counters, and that notifies took the ioeventfd
path (no MMIO exit) and interrupts the irqfd path, or the fallbacks when forced.
"""
import os
import threading

import pytest

import vmm
from vmm import kernel_image
from vmm.devices import Disk, Vsock
from vmm.engines.virtio_device import open_device
from vmm.errors import ConfigError

from support.kvm_guests import KVM_MARKS, guest_build  # noqa: E402

pytestmark = KVM_MARKS

from vmm._core import ffi, lib  # noqa: E402
from vmm import KvmOptions, PythonDevice  # noqa: E402

REPORT_PORT = 0x500
VIRTIO_BASE = kernel_image.core_limits().virtio_mmio_base  # LAYOUT_VIRTIO_MMIO
WAIT = 20
MAGIC, VERSION_1_HIGH = 0x74726976, 0x1
ACK_DRIVER_FEATURES_OK, NEEDS_RESET = 0xB, 0x40
VIRTIO_BLK_S_OK, VIRTIO_BLK_S_IOERR = 0, 1
REPORT_FIELDS = ("magic", "version", "device_id", "features_hi", "status", "queue_num_max",
                 "queue_ready", "read_used", "read_status", "data_head", "data_tail",
                 "write_used", "write_status", "interrupts", "isr_seen", "isr_now")


@pytest.fixture(scope="module")
def guests(tmp_path_factory):
    out = tmp_path_factory.mktemp("virtio-guests")
    return lambda name, defines=(): guest_build.build_guest(name, out, defines)


@pytest.fixture
def disk(tmp_path):
    path = tmp_path / "disk.img"
    sector0 = bytes((i * 7 + 3) & 0xFF for i in range(512))
    path.write_bytes(sector0 + os.urandom(512) + os.urandom(3 * 1024))
    return path


class Ports:
    """REPORT_PORT: the guest's 32-bit reports, in order."""

    def __init__(self):
        self.values = []
        self.lock = threading.Lock()

    def __call__(self, offset, size, is_write, value):
        if is_write:
            with self.lock:
                self.values.append(value)


def run(kernel, *, disks=(), vsock=None, flags=0):
    """Boot the guest with the devices; returns (Machine, ExitStatus, reports, transports).
    The machine is stopped (and its devices closed) on return."""
    ports = Ports()
    options = KvmOptions(python_devices=[PythonDevice(REPORT_PORT, 4, ports, mmio=False)],
                         ioeventfd=not flags & lib.VMM_VDEV_NO_IOEVENTFD, irqfd=not flags & lib.VMM_VDEV_NO_IRQFD)
    m = vmm.Machine(kernel, engine="kvm", memory_mib=16, disks=disks, vsock=vsock, options=options)
    try:
        m.start()
        status = m.wait(timeout=WAIT)
        assert status is not None, f"guest did not end within {WAIT} s; reports {ports.values}"
    finally:
        m.stop()
    return m, status, ports.values, list(m.inspect().transports)


def reports(values):
    assert len(values) == len(REPORT_FIELDS), [hex(v) for v in values]
    return dict(zip(REPORT_FIELDS, values))


def check_driver_run(r, host_sector0, *, write_status=VIRTIO_BLK_S_OK):
    assert r["magic"] == MAGIC and r["version"] == 2 and r["device_id"] == 2
    assert r["features_hi"] & VERSION_1_HIGH, "VERSION_1 must be offered"
    assert r["status"] == ACK_DRIVER_FEATURES_OK, "FEATURES_OK must stick for VERSION_1"
    assert r["queue_num_max"] == 1024 and r["queue_ready"] == 1
    assert r["read_used"] == 1 and r["read_status"] == VIRTIO_BLK_S_OK
    assert r["data_head"] == int.from_bytes(host_sector0[:4], "little")
    assert r["data_tail"] == int.from_bytes(host_sector0[508:], "little")
    assert r["write_used"] == 2 and r["write_status"] == write_status
    # One interrupt per completion, seen by the guest's handler as a used-ring interrupt,
    # and acknowledged (InterruptStatus reads 0 afterwards).
    assert r["interrupts"] == 2 and r["isr_seen"] == 1 and r["isr_now"] == 0


def fd_count():
    return len(os.listdir("/proc/self/fd"))


def thread_count():
    return len(os.listdir("/proc/self/task"))


# --- the driver's round trip -------------------------------------------------------------------

def test_read_and_write_a_sector_through_ioeventfd_and_irqfd(guests, disk):
    before = disk.read_bytes()
    m, status, values, transports = run(guests("virtio_blk"), disks=[Disk(str(disk))])
    assert status.kind == "shutdown", status
    check_driver_run(reports(values), before[:512])
    after = disk.read_bytes()
    assert after[512:1024] == b"VIRTIOWR" + before[8:512], "the written sector must land in the file"
    assert after[:512] == before[:512] and after[1024:] == before[1024:]

    assert f"virtio_mmio.device=4K@{VIRTIO_BASE:#x}:5 " in m.inspect().cmdline
    [t] = transports
    assert (t["base"], t["size"], t["irq"]) == (VIRTIO_BASE, 4096, 5)
    assert t["ioeventfd"] == 1 and t["irqfd"] == 1
    # Both notifies arrived by ioeventfd: none exited to the VMM.
    assert t["notify_exits"] == 0 and t["notify_events"] >= 2
    assert t["interrupts"] == 2 and t["status"] == 0xF and t["bad_accesses"] == 0

    [stats] = m.device_stats
    assert stats["kind"] == "blk" and stats["name"] == "vda"
    assert stats["requests"] == 2 and stats["bytes_read"] == 512 and stats["bytes_written"] == 512
    assert stats["errors"] == 0 and stats["rejected"] == 0 and stats["interrupts"] == 2


def test_a_batch_beyond_the_work_budget_is_finished_by_rearming(guests, disk):
    """256 reads made available with one notify: the device serves 64 (its budget), the
    transport re-arms the queue's kick eventfd and the I/O thread serves the rest in
    later rounds; every request completes, none twice."""
    before = disk.read_bytes()
    m, status, values, transports = run(guests("virtio_blk", ("BATCH",)), disks=[Disk(str(disk))])
    assert status.kind == "shutdown", status
    normal, batch = values[:len(REPORT_FIELDS)], values[len(REPORT_FIELDS):]
    check_driver_run(reports(normal), before[:512])
    assert batch == [256, VIRTIO_BLK_S_OK]
    [stats] = m.device_stats
    assert stats["requests"] == 2 + 256
    assert stats["budget_yields"] >= 256 // 64 - 1, stats
    [t] = transports
    # The guest notified twice for the normal run and once for the batch; each re-arm is
    # one more notify event on the I/O thread.
    assert t["notify_events"] >= 3 + stats["budget_yields"] - 1, t


def test_fallbacks_mmio_exit_notify_and_irq_line(guests, disk):
    before = disk.read_bytes()
    m, status, values, transports = run(guests("virtio_blk"), disks=[Disk(str(disk))],
                                        flags=lib.VMM_VDEV_NO_IOEVENTFD | lib.VMM_VDEV_NO_IRQFD)
    assert status.kind == "shutdown", status
    check_driver_run(reports(values), before[:512])
    assert disk.read_bytes()[512:520] == b"VIRTIOWR"
    [t] = transports
    assert t["ioeventfd"] == 0 and t["irqfd"] == 0
    assert t["notify_exits"] == 2, "each QueueNotify must have exited to the VMM"
    assert t["interrupts"] == 2


def test_read_only_disk_rejects_the_write(guests, disk):
    before = disk.read_bytes()
    m, status, values, _ = run(guests("virtio_blk"), disks=[Disk(str(disk), read_only=True)])
    assert status.kind == "shutdown", status
    check_driver_run(reports(values), before[:512], write_status=VIRTIO_BLK_S_IOERR)
    assert disk.read_bytes() == before
    [stats] = m.device_stats
    assert stats["errors"] == 1 and stats["bytes_written"] == 0 and stats["bytes_read"] == 512


# --- hostile drivers ---------------------------------------------------------------------------

def test_hostile_register_writes_break_the_device_not_the_vmm(guests, disk, capfd):
    before = disk.read_bytes()
    m, status, values, transports = run(guests("virtio_blk", ("HOSTILE",)), disks=[Disk(str(disk))])
    assert status.kind == "shutdown", status
    hostile, normal = values[:7], values[7:]
    needs_reset = ACK_DRIVER_FEATURES_OK | NEEDS_RESET
    # (QueueReady, Status) after a queue size of 3, of 2048, and rings outside RAM.
    assert hostile[:6] == [0, needs_reset] * 3, [hex(v) for v in hostile]
    assert hostile[6] == needs_reset, "a notify of a queue that does not exist changes nothing"
    err = capfd.readouterr().err
    assert "queue 0 size 3 is not a power of 2 in 1..1024" in err
    assert "queue 0 size 2048 is not a power of 2 in 1..1024" in err
    assert "descriptor ring at 0xbff00000 is misaligned or outside guest memory" in err
    # After a reset the device works again.
    check_driver_run(reports(normal), before[:512])
    [t] = transports
    assert t["bad_accesses"] == 1  # the notify of queue 7 (no ioeventfd matches it: an exit)
    assert t["notify_exits"] == 1


def test_random_register_writes_then_a_clean_run(guests, disk):
    """4000 pseudo-random writes to the writable registers (sizes, addresses, Status,
    QueueReady, notifies, acks in any order), then a reset and the normal driver run."""
    before = disk.read_bytes()
    m, status, values, transports = run(guests("virtio_blk", ("FUZZ",)), disks=[Disk(str(disk))])
    assert status.kind == "shutdown", status
    r = reports(values)
    # An edge raised during the fuzzing (the IOAPIC pin was still masked) may be delivered
    # when the driver unmasks it: one more interrupt than completions is fine.
    taken = r.pop("interrupts")
    r["interrupts"] = 2
    assert taken in (2, 3)
    check_driver_run(r, before[:512])
    assert disk.read_bytes()[512:520] == b"VIRTIOWR"
    [t] = transports
    assert t["bad_accesses"] > 100 and t["notify_exits"] > 0
    assert m.exit_stats["mmio"] >= 4000


# --- a device thread's interrupts ------------------------------------------------------------

def test_vsock_host_connect_reaches_the_guest_as_an_interrupt(guests, tmp_path):
    """vsock raises its interrupt from its own socket thread, not the I/O thread."""
    import socket
    ready = threading.Event()
    ports = Ports()

    def port(offset, size, is_write, value):
        ports(offset, size, is_write, value)
        if is_write and value == 0x7EAD7:
            ready.set()

    path = str(tmp_path / "v.sock")
    m = vmm.Machine(guests("virtio_vsock"), engine="kvm", memory_mib=16,
                    vsock=Vsock(cid=7, socket_path=path),
                    options=KvmOptions(python_devices=[PythonDevice(REPORT_PORT, 4, port, mmio=False)]))
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        m.start()
        assert ready.wait(WAIT), f"the guest driver never got ready: {ports.values}"
        client.connect(path)
        client.sendall(b"CONNECT 1234\n")
        status = m.wait(timeout=WAIT)
        assert status is not None and status.kind == "shutdown", (status, ports.values)
    finally:
        client.close()
        m.stop()
    device_id, _, used_len, src_cid, dst_cid, dst_port, typ, op, taken, seen = ports.values
    assert device_id == 19
    assert used_len == 44, "one packet header, no payload"
    assert (src_cid, dst_cid, dst_port, typ, op) == (2, 7, 1234, 1, 1), "a stream REQUEST to port 1234"
    assert taken == 1 and seen == 1
    [t] = m.inspect().transports
    assert t["interrupts"] == 1 and t["notify_exits"] == 0
    [stats] = m.device_stats
    assert stats["kind"] == "vsock" and stats["frames_in"] == 1 and stats["interrupts"] == 1


# --- several devices, errors, cleanup ---------------------------------------------------------

def test_devices_get_windows_and_irqs_in_attach_order(guests, disk, tmp_path):
    second = tmp_path / "second.img"
    second.write_bytes(bytes(4096))
    m, status, values, transports = run(
        guests("virtio_blk"), disks=[Disk(str(disk)), Disk(str(second), read_only=True)],
        vsock=Vsock(cid=3, socket_path=str(tmp_path / "v.sock")))
    assert status.kind == "shutdown", status
    check_driver_run(reports(values), disk.read_bytes()[:512])
    assert [(t["base"], t["irq"]) for t in transports] == [
        (VIRTIO_BASE, 5), (VIRTIO_BASE + 0x1000, 6), (VIRTIO_BASE + 0x2000, 7)]
    for t in transports:
        assert f"virtio_mmio.device=4K@{t['base']:#x}:{t['irq']}" in m.inspect().cmdline
    assert [(s["kind"], s["name"]) for s in m.device_stats] == [("blk", "vda"), ("blk", "vdb"),
                                                                ("vsock", "vsock")]
    # Only the first disk was driven.
    assert [s["requests"] for s in m.device_stats] == [2, 0, 0]
    assert [t["status"] for t in transports] == [0xF, 0, 0]


def test_too_many_devices_is_a_clear_error_and_leaks_nothing(guests, disk):
    fds, threads = fd_count(), thread_count()
    m = vmm.Machine(guests("virtio_blk"), engine="kvm", memory_mib=16,
                    disks=[Disk(str(disk), read_only=True)] * 9)
    with pytest.raises(ConfigError, match=r"device vdi: too many virtio devices \(limit 8"):
        m.start()
    m.stop()
    assert fd_count() == fds and thread_count() == threads


def test_missing_disk_fails_before_boot_and_leaks_nothing(guests, disk, tmp_path):
    fds, threads = fd_count(), thread_count()
    m = vmm.Machine(guests("virtio_blk"), engine="kvm", memory_mib=16,
                    disks=[Disk(str(disk)), Disk(str(tmp_path / "nope.img"))])
    with pytest.raises(ConfigError, match="nope.img does not exist"):
        m.start()
    m.stop()
    assert fd_count() == fds and thread_count() == threads


def test_a_run_leaks_no_fd_or_thread(guests, disk):
    run(guests("virtio_blk"), disks=[Disk(str(disk))])  # warm-up: imports, caches
    fds, threads = fd_count(), thread_count()
    run(guests("virtio_blk"), disks=[Disk(str(disk)), Disk(str(disk), read_only=True)])
    assert fd_count() == fds and thread_count() == threads


def test_a_device_serves_one_transport_only(disk):
    cfg = ffi.new("struct vmm_vm_config *", {"cpus": 1, "memory_bytes": 16 << 20, "hugepages": 0,
                                             "console_fd": -1})
    err = ffi.new("char[]", 256)
    dev = open_device(Disk(str(disk)))
    vm = lib.vmm_vm_create(cfg, err, 256)
    assert vm != ffi.NULL, ffi.string(err)
    try:
        assert lib.vmm_vm_add_device(vm, dev.ptr, 0, ffi.NULL, err, 256) == 0, ffi.string(err)
        assert lib.vmm_vm_add_device(vm, dev.ptr, 0, ffi.NULL, err, 256) == -1
        assert b"already attached" in ffi.string(err)
        info = ffi.new("struct vmm_virtio_mmio_info *")
        assert lib.vmm_vm_device_info(vm, 1, info) == -1
        assert lib.vmm_vm_device_info(vm, 0, info) == 0 and info.base == VIRTIO_BASE
    finally:
        lib.vmm_vm_destroy(vm)
    # Given back by the VM: the device can be attached again (here, to a new VM).
    vm = lib.vmm_vm_create(cfg, err, 256)
    try:
        assert lib.vmm_vm_add_device(vm, dev.ptr, 0, ffi.NULL, err, 256) == 0, ffi.string(err)
    finally:
        lib.vmm_vm_destroy(vm)
        dev.close()
