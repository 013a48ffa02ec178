"""Typed per-engine options and Machine.inspect(), through the public API only."""
import pytest

import vmm
from vmm.devices import Disk
from vmm.engines import kvm_backing, qemu_binary
from vmm.errors import ConfigError

from support.kvm_guests import guest_build

needs_kvm = pytest.mark.skipif(kvm_backing() in ("missing", "no-access"), reason=f"/dev/kvm is {kvm_backing()}")
needs_qemu = pytest.mark.skipif(qemu_binary() is None, reason="qemu-system-x86_64 is not installed")


@pytest.fixture(scope="module")
def hello(tmp_path_factory):
    if guest_build.toolchain_missing():
        pytest.skip(guest_build.toolchain_missing())
    return guest_build.build_guest("hello", tmp_path_factory.mktemp("options"))


def test_options_are_frozen_values():
    opts = vmm.KvmOptions(python_devices=[vmm.PythonDevice(0x500, 4, lambda *a: 0, mmio=False)])
    assert isinstance(opts.python_devices, tuple)
    with pytest.raises(AttributeError):
        opts.ioeventfd = False
    assert vmm.QemuOptions(extra_args=["-d", 1]).extra_args == ("-d", "1")


@needs_qemu
@pytest.mark.qemu
def test_options_for_the_other_engine_are_refused_at_machine(hello):
    with pytest.raises(ConfigError, match=r"options KvmOptions are not for the qemu engine .* takes QemuOptions"):
        vmm.Machine(hello, engine="qemu", options=vmm.KvmOptions())


@needs_kvm
@pytest.mark.kvm
def test_kvm_inspection_before_during_and_after(hello, tmp_path):
    disk = tmp_path / "d.img"
    disk.write_bytes(bytes(4096))
    m = vmm.Machine(hello, engine="kvm", memory_mib=16, cmdline="quiet", disks=[Disk(str(disk))])
    planned = m.inspect()
    assert planned.engine == "kvm" and planned.pid is None
    assert planned.cmdline.endswith("virtio_mmio.device=4K@0xd0100000:5 quiet")
    assert planned.e820 == () and planned.transports == ()
    with m:
        m.start()
        assert m.wait(20).kind == "shutdown"
    seen = m.inspect()  # after stop(): the last values stay
    assert seen.cmdline == planned.cmdline
    [t] = seen.transports
    assert (t["name"], t["kind"], t["base"], t["irq"]) == ("vda", "blk", 0xD0100000, 5)
    assert any(kind == 1 for _, _, kind in seen.e820)
    assert seen.boot["kind"] in ("elf-pvh", "elf-64", "bzimage")
    assert seen.exit_stats == m.exit_stats and seen.exit_stats["io"] > 0


@needs_qemu
@pytest.mark.qemu
def test_qemu_inspection_names_the_command_line_and_no_pid_before_start(hello):
    m = vmm.Machine(hello, engine="qemu", cmdline="quiet")
    try:
        got = m.inspect()
        assert got.engine == "qemu" and got.pid is None
        assert got.cmdline == ("console=ttyS0 reboot=t panic=-1 no_timer_check noapictimer "
                               "page_reporting.page_reporting_order=3 quiet")
        assert got.e820 == () and got.exit_stats == {}
    finally:
        m.stop()
