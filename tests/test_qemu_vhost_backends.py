"""The QEMU engine's device back ends without QEMU: sockets in a private directory, the
QEMU arguments they produce, counters, and clean-up on success and on failure."""
import os
import socket
import stat

import pytest

from vmm.devices import Disk, Net, Vsock
from vmm.engines.device_order import disk_name
from vmm.engines.qemu import qemu_argv
from vmm.engines.vhost_backends import VhostBackends
from vmm.errors import ConfigError
from vmm.machine import MachineSpec


def _fds():
    return set(os.listdir("/proc/self/fd"))


def _disk(tmp_path, name, size=1 << 20):
    p = tmp_path / name
    p.write_bytes(b"\0" * size)
    return str(p)


def test_disk_names_follow_linux():
    assert [disk_name(i) for i in (0, 1, 25, 26, 27)] == ["vda", "vdb", "vdz", "vdaa", "vdab"]


def test_servers_listen_in_a_private_directory_and_vanish_on_close(tmp_path):
    spec = MachineSpec(kernel="/k", disks=(Disk(_disk(tmp_path, "a")), Disk(_disk(tmp_path, "b"), read_only=True)),
                       vsock=Vsock(cid=5, socket_path=str(tmp_path / "v.sock")))
    fds = _fds()
    b = VhostBackends(spec)
    b.open()
    try:
        socks = [d["socket"] for d in b.qemu_devices]
        assert [d["kind"] for d in b.qemu_devices] == ["blk", "blk", "vsock"]
        directory = os.path.dirname(socks[0])
        assert stat.S_IMODE(os.stat(directory).st_mode) == 0o700
        for path in socks:  # QEMU will be the client: each one already accepts connections
            assert stat.S_ISSOCK(os.stat(path).st_mode)
            c = socket.socket(socket.AF_UNIX)
            c.connect(path)
            c.close()
        assert [(s["kind"], s["name"]) for s in b.stats()] == [("blk", "vda"), ("blk", "vdb"),
                                                              ("vsock", "vsock")]
        argv = qemu_argv(spec, "qemu", 3, b.qemu_devices)
        assert argv.count("vhost-user-blk,chardev=vu0") == 1
        assert "vhost-user-vsock-device,chardev=vu2" in argv
    finally:
        b.close()
    b.close()  # idempotent
    assert not os.path.exists(directory)
    assert not os.path.exists(tmp_path / "v.sock")
    assert _fds() == fds
    assert [s["name"] for s in b.stats()] == ["vda", "vdb", "vsock"]  # last values stay


def test_a_failing_device_closes_the_ones_already_open(tmp_path):
    spec = MachineSpec(kernel="/k", disks=(Disk(_disk(tmp_path, "ok")),),
                       vsock=Vsock(cid=1, socket_path=str(tmp_path / "v.sock")))  # CID 1: invalid
    fds = _fds()
    before = {d for d in os.listdir("/tmp") if d.startswith("vmm-vhost-")}
    b = VhostBackends(spec)
    with pytest.raises(ConfigError, match="CID 1"):
        b.open()
    assert _fds() == fds
    assert {d for d in os.listdir("/tmp") if d.startswith("vmm-vhost-")} == before


def test_net_mac_reaches_qemus_virtio_net(tmp_path):
    # A socket back end needs a peer; a socketpair end stands in for passt.
    ours, theirs = socket.socketpair()
    spec = MachineSpec(kernel="/k", nets=(Net(backend="socket", fd=ours.fileno(), mac="02:00:00:00:00:2a"),))
    b = VhostBackends(spec)
    b.open()
    try:
        (dev,) = b.qemu_devices
        assert dev["kind"] == "net" and dev["options"] == {"mac": "02:00:00:00:00:2a"}
        argv = qemu_argv(spec, "qemu", 3, b.qemu_devices)
        assert "virtio-net-device,netdev=net0,mac=02:00:00:00:00:2a" in argv
    finally:
        b.close()
        ours.close()
        theirs.close()


def test_not_a_device_config_is_refused():
    b = VhostBackends(MachineSpec(kernel="/k", disks=("/some/path.img",)))
    with pytest.raises(ConfigError, match="vda"):
        b.open()
