"""One binding contract for every transport (csrc/virtio/device.c: vdev_bind): a device
serves one transport at a time, and each transport refuses a device that is already bound
to another, with a message naming both; once the first lets go, the device binds again.

Reached from Python: the test transport, the vhost-user server and (where /dev/kvm works)
a VM's virtio-mmio transport."""
import pytest

from vmm.engines import kvm_backing
from vmm._binding import ffi, lib
from vmm.devices import Disk
from vmm.engines.vhost_user_server import VhostUserServer
from vmm.engines.virtio_device import open_device
from vmm.errors import VmmError


VERSION_1 = 1 << 32


class GuestMem:
    """A buffer the test transport takes as guest memory."""

    def __init__(self, size=1 << 16, gpa=0x10000):
        self.size, self.gpa = size, gpa
        self.buf = ffi.new("uint8_t[]", size)


@pytest.fixture
def dev(tmp_path):
    img = tmp_path / "d.img"
    img.write_bytes(bytes(4096))
    d = open_device(Disk(str(img)))
    yield d
    d.close()


def bind_test(dev, mem):
    """The test transport's attach: (rc, message)."""
    err = ffi.new("char[]", 256)
    rc = lib.vmm_vdev_test_attach(dev.ptr, mem.buf, mem.gpa, mem.size, VERSION_1, err, 256)
    return rc, ffi.string(err).decode()


@pytest.fixture
def mem():
    return GuestMem()


def new_vm():
    cfg = ffi.new("struct vmm_vm_config *", {"cpus": 1, "memory_bytes": 16 << 20, "hugepages": 0,
                                             "console_fd": -1})
    err = ffi.new("char[]", 256)
    vm = lib.vmm_vm_create(cfg, err, 256)
    assert vm != ffi.NULL, ffi.string(err)
    return vm


def mmio_attach(vm, dev):
    err = ffi.new("char[]", 256)
    return lib.vmm_vm_add_device(vm, dev.ptr, 0, ffi.NULL, err, 256), ffi.string(err).decode()


def test_vhost_user_refuses_a_device_bound_to_the_test_transport(dev, mem, tmp_path):
    assert bind_test(dev, mem) == (0, "")
    with pytest.raises(VmmError, match=r"virtio-blk device is already attached \(to the test transport\); "
                                       r"it cannot also serve a vhost-user server"):
        VhostUserServer(dev, str(tmp_path / "blk.sock"))
    assert not (tmp_path / "blk.sock").exists()  # refused before it listened


def test_test_transport_refuses_a_device_bound_to_vhost_user(dev, mem, tmp_path):
    srv = VhostUserServer(dev, str(tmp_path / "blk.sock"))
    try:
        rc, msg = bind_test(dev, mem)
        assert rc == -1
        assert msg == ("virtio-blk device is already attached (to a vhost-user server); "
                       "it cannot also serve the test transport")
        with pytest.raises(VmmError, match=r"already attached \(to a vhost-user server\)"):
            VhostUserServer(dev, str(tmp_path / "again.sock"))
    finally:
        srv.stop()
    assert bind_test(dev, mem) == (0, "")  # given back by the server


def test_test_transport_may_attach_again_to_its_own_device(dev, mem):
    other = GuestMem()
    assert bind_test(dev, mem) == (0, "")
    assert bind_test(dev, other) == (0, "")


@pytest.mark.kvm
@pytest.mark.skipif(kvm_backing() in ("missing", "no-access"), reason=f"/dev/kvm is {kvm_backing()}")
def test_mmio_and_vhost_user_refuse_each_others_device(dev, mem, tmp_path):
    vm = new_vm()
    try:
        assert mmio_attach(vm, dev) == (0, "")
        with pytest.raises(VmmError, match=r"already attached \(to a VM \(virtio-mmio\)\)"):
            VhostUserServer(dev, str(tmp_path / "blk.sock"))
        rc, msg = bind_test(dev, mem)
        assert rc == -1 and "already attached (to a VM (virtio-mmio))" in msg
    finally:
        lib.vmm_vm_destroy(vm)
    srv = VhostUserServer(dev, str(tmp_path / "blk.sock"))
    vm = new_vm()
    try:
        rc, msg = mmio_attach(vm, dev)
        assert rc == -1
        assert msg == ("virtio-blk device is already attached (to a vhost-user server); "
                       "it cannot also serve a VM (virtio-mmio)")
    finally:
        lib.vmm_vm_destroy(vm)
        srv.stop()
