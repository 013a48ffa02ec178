"""The vhost-user front end in a VM: guest/tests/virtio_blk.S (a freestanding virtio-mmio
driver) drives a virtio-blk device on the kvm engine whose queues OUR OWN vhost-user back
end (vhost_user.c, the qemu engine's) serves through the front end: guest RAM goes to the
back end as a memfd, the guest's read and write land in the disk file, its completions
come back as interrupts. And a back end that hangs up at DRIVER_OK breaks the device
(DEVICE_NEEDS_RESET, one log line) while the VM runs on."""
import os
import struct
import threading
import time

import pytest

import vmm
from vmm import KvmOptions, PythonDevice
from vmm.devices import Disk
from vmm.engines.vhost_user_front import blk_config
from vmm.engines.vhost_user_server import VhostUserServer
from vmm.engines.virtio_device import open_device

from support.fake_vhost_backend import SET_FEATURES, FakeBackend
from support.kvm_guests import KVM_MARKS, guest_build

pytestmark = KVM_MARKS

REPORT_PORT = 0x500
WAIT = 20
VIRTIO_BLK_S_OK = 0
NEEDS_RESET = 0x40
REPORT_FIELDS = ("magic", "version", "device_id", "features_hi", "status", "queue_num_max",
                 "queue_ready", "read_used", "read_status", "data_head", "data_tail",
                 "write_used", "write_status", "interrupts", "isr_seen", "isr_now")


@pytest.fixture(scope="module")
def blk_guest(tmp_path_factory):
    return guest_build.build_guest("virtio_blk", tmp_path_factory.mktemp("vuf-guests"), ())


@pytest.fixture
def disk(tmp_path):
    path = tmp_path / "disk.img"
    path.write_bytes(bytes((i * 7 + 3) & 0xFF for i in range(512)) + os.urandom(512 + 3 * 1024))
    return path


class Ports:
    def __init__(self):
        self.values, self.lock = [], threading.Lock()

    def __call__(self, offset, size, is_write, value):
        if is_write:
            with self.lock:
                self.values.append(value)


def guest_ram_mappings():
    """Our process's mappings of a VM's RAM memfd (guest_mem.c names it vmm-guest-ram)."""
    out = []
    with open("/proc/self/maps") as f:
        for line in f:
            if "memfd:vmm-guest-ram" in line:
                span, perms = line.split()[:2]
                lo, hi = (int(x, 16) for x in span.split("-"))
                out.append({"bytes": hi - lo, "shared": perms[3] == "s"})
    return out


def machine(kernel, socket_path, ports, sectors=8):
    vhost = {"kind": "blk", "socket": socket_path, "config": blk_config(sectors), "num_queues": 1,
             "queue_size": 1024}
    options = KvmOptions(python_devices=[PythonDevice(REPORT_PORT, 4, ports, mmio=False)],
                         vhost_user=[vhost])
    return vmm.Machine(kernel, engine="kvm", memory_mib=16, options=options)


def test_guest_reads_and_writes_a_disk_served_by_our_back_end(blk_guest, disk, tmp_path):
    before = disk.read_bytes()
    dev = open_device(Disk(str(disk)))
    srv = VhostUserServer(dev, str(tmp_path / "blk.sock"))
    ports = Ports()
    try:
        m = machine(blk_guest, srv.path, ports)
        try:
            m.start()
            status = m.wait(timeout=WAIT)
            assert status is not None, f"guest did not end within {WAIT} s; reports {ports.values}"
        finally:
            m.stop()
        backend = dev.counters()
        assert srv.error is None
    finally:
        srv.stop()
        dev.close()
    assert status.kind == "shutdown", status
    r = dict(zip(REPORT_FIELDS, ports.values))
    assert len(ports.values) == len(REPORT_FIELDS), ports.values
    assert r["device_id"] == 2 and r["features_hi"] & 1 and r["queue_num_max"] == 1024
    assert r["read_used"] == 1 and r["read_status"] == VIRTIO_BLK_S_OK
    assert r["data_head"] == int.from_bytes(before[:4], "little")
    assert r["data_tail"] == int.from_bytes(before[508:512], "little")
    assert r["write_used"] == 2 and r["write_status"] == VIRTIO_BLK_S_OK
    # Each completion came back as a used-buffer interrupt the guest's handler saw.
    assert r["interrupts"] == 2 and r["isr_seen"] == 1 and r["isr_now"] == 0
    after = disk.read_bytes()
    assert after[512:1024] == b"VIRTIOWR" + before[8:512], "the guest's write must land in the file"
    assert after[:512] == before[:512] and after[1024:] == before[1024:]
    # The back end did the work (its device's counters), the front end relayed it.
    assert backend["requests"] == 2 and backend["bytes_read"] == 512 and backend["bytes_written"] == 512
    [stats] = m.device_stats
    assert stats["kind"] == "blk" and stats["name"] == "vhost-user0" and stats["interrupts"] == 2
    [t] = m.inspect().transports
    assert t["status"] == 0xF and t["interrupts"] == 2
    # The notifies went from KVM's ioeventfd straight to the back end: none exited to the
    # VMM, none woke our I/O thread.
    assert t["ioeventfd"] == 1 and t["notify_exits"] == 0 and t["notify_events"] == 0, t


def test_without_a_vhost_user_device_guest_ram_stays_private(blk_guest, disk):
    ports = Ports()
    options = KvmOptions(python_devices=[PythonDevice(REPORT_PORT, 4, ports, mmio=False)])
    m = vmm.Machine(blk_guest, engine="kvm", memory_mib=16, disks=[Disk(str(disk))], options=options)
    try:
        m.start()
        assert m.wait(timeout=WAIT) is not None
        assert guest_ram_mappings() == [], "no memfd: today's anonymous mapping"
    finally:
        m.stop()


def test_a_back_end_that_hangs_up_breaks_the_device_not_the_vm(blk_guest, tmp_path, capfd):
    def hang_up(n, request, reply):
        return ("close",) if request == SET_FEATURES else None

    ports = Ports()
    with FakeBackend(tmp_path / "fake.sock", hang_up) as be:
        m = machine(blk_guest, be.path, ports)
        try:
            m.start()
            deadline = time.monotonic() + WAIT
            while time.monotonic() < deadline:
                [t] = m.inspect().transports
                if t["status"] & NEEDS_RESET:
                    break
                time.sleep(0.05)
            assert t["status"] & NEEDS_RESET, t
            assert m.wait(timeout=0.5) is None, "the VM must keep running"
            # Guest RAM is the sealed memfd, shared, that the back end was to map.
            [ram] = guest_ram_mappings()
            assert ram["shared"] and ram["bytes"] == 16 << 20, ram
        finally:
            m.stop()
    err = capfd.readouterr().err
    lines = [line for line in err.splitlines() if "vhost-user back end" in line]
    assert len(lines) == 1, err
    assert "the back end closed the connection" in lines[0] and "needs a reset" in lines[0]
