"""SharedDir on the kvm engine, without a Linux guest (that is the nested tier's
test_vhost_user_front_linux.py): Machine(shared_dirs=, engine="kvm") starts a real
virtiofsd, the front end negotiates with it before the guest runs, the device is announced
on the command line, inspect() names the server, and a virtiofsd that dies ends the
machine with the reason; nothing outlives the machine."""
import os
import signal
import time

import pytest

import vmm
from vmm.devices import SharedDir

from support.kvm_guests import KVM_MARKS, guest_build

pytestmark = [*KVM_MARKS,
              pytest.mark.skipif(not os.access("/usr/lib/qemu/virtiofsd", os.X_OK),
                                 reason="no /usr/lib/qemu/virtiofsd (qemu-system-common)")]


@pytest.fixture(scope="module")
def spin_guest(tmp_path_factory):
    return guest_build.build_guest("spin", tmp_path_factory.mktemp("vuf-fs"), ())


def alive(pid):
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False


def test_a_shared_dir_is_served_by_virtiofsd_through_the_front_end(spin_guest, tmp_path):
    m = vmm.Machine(spin_guest, engine="kvm", memory_mib=16,
                    shared_dirs=[SharedDir(str(tmp_path), "work")])
    try:
        m.start()
        info = m.inspect()
        assert "virtio_mmio.device=4K@" in info.cmdline
        [t] = info.transports
        assert t["kind"] == "fs" and t["name"] == "fs0" and t["tag"] == "work", t
        pid = t["pid"]
        assert alive(pid)
        assert m.device_stats[0]["kind"] == "fs"
    finally:
        m.stop()
    deadline = time.monotonic() + 5
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(pid), "virtiofsd must end with its machine"


def test_a_virtiofsd_that_dies_ends_the_machine_with_the_reason(spin_guest, tmp_path):
    m = vmm.Machine(spin_guest, engine="kvm", memory_mib=16,
                    shared_dirs=[SharedDir(str(tmp_path), "work")])
    try:
        m.start()
        [t] = m.inspect().transports
        os.kill(t["pid"], signal.SIGKILL)
        status = m.wait(timeout=10)
        assert status is not None and status.kind == "error", status
        assert "virtiofsd for 'work' ended (signal SIGKILL)" in status.message
        assert "shared directory cannot come back" in status.message
    finally:
        m.stop()
