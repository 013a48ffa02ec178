"""The qemu engine's free-page-reporting balloon (fast: nothing is started; the slow test
boots a sandbox and watches QEMU give freed guest RAM back).

On by default: `-device virtio-balloon-device,free-page-reporting=on,deflate-on-oom=on`,
with the reporting order on every qemu guest's kernel command line (the guest agent applies
it again after the balloon driver overwrote it; without the device it is inert).
QemuOptions(balloon=False) or VMM_QEMU_BALLOON=off leave the device out.
"""
import os
import time

import pytest

from vmm import QemuOptions
from vmm.engines import qemu_binary
from vmm.engines.qemu import kernel_cmdline, qemu_argv
from vmm.engines.qemu_balloon import BALLOON_ENV, PAGE_REPORTING_ORDER
from vmm.errors import ConfigError
from vmm.machine import MachineSpec

ORDER_ARG = f"page_reporting.page_reporting_order={PAGE_REPORTING_ORDER}"


def _devices(argv):
    return [argv[i + 1] for i, a in enumerate(argv) if a == "-device"]


def _argv(monkeypatch, env=None, **options):
    if env is None:
        monkeypatch.delenv(BALLOON_ENV, raising=False)
    else:
        monkeypatch.setenv(BALLOON_ENV, env)
    spec = MachineSpec(kernel="/k", cmdline="quiet",
                       options=QemuOptions(**options) if options else None)
    return qemu_argv(spec, "qemu", debugcon_fd=3), kernel_cmdline(spec).text()


def test_the_balloon_is_on_by_default_and_only_reports(monkeypatch):
    argv, cmdline = _argv(monkeypatch)
    balloons = [d for d in _devices(argv) if d.startswith("virtio-balloon-device")]
    assert balloons == ["virtio-balloon-device,free-page-reporting=on,deflate-on-oom=on"]
    assert ORDER_ARG in cmdline.split()
    # the caller's extra arguments still come last
    argv, _ = _argv(monkeypatch, extra_args=("-device", "mine"))
    assert argv[-2:] == ["-device", "mine"]


@pytest.mark.parametrize("env, options, on", [
    ("off", {}, False), ("0", {}, False), ("on", {}, True), ("", {}, True),
    ("off", {"balloon": True}, True), ("on", {"balloon": False}, False),
    (None, {"balloon": False}, False),
])
def test_the_balloon_can_be_turned_off(monkeypatch, env, options, on):
    argv, cmdline = _argv(monkeypatch, env, **options)
    assert any(d.startswith("virtio-balloon-device") for d in _devices(argv)) is on
    assert ORDER_ARG in cmdline.split()  # inert without the device


def test_a_bad_balloon_setting_is_named(monkeypatch):
    with pytest.raises(ConfigError, match=BALLOON_ENV):
        _argv(monkeypatch, env="maybe")
    with pytest.raises(ConfigError, match="balloon"):
        QemuOptions(balloon="yes")


def test_the_balloon_only_takes_a_free_virtio_mmio_transport(monkeypatch):
    """microvm has 8 transports: the devices asked for come first; by default the balloon
    is left out when none is free, and an explicit request for it is refused."""
    def devices(n):
        return tuple({"kind": "blk", "socket": f"/s{i}"} for i in range(n))
    argv, cmdline = _argv(monkeypatch, vhost_user=devices(7))
    assert any(d.startswith("virtio-balloon-device") for d in _devices(argv))
    argv, cmdline = _argv(monkeypatch, vhost_user=devices(8))
    assert not any(d.startswith("virtio-balloon") for d in _devices(argv))
    assert len(_devices(argv)) == 9  # 8 + isa-debugcon
    with pytest.raises(ConfigError, match="take all 8 virtio-mmio transports"):
        _argv(monkeypatch, vhost_user=devices(8), balloon=True)


def _rss_shmem_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("RssShmem:"):
                return int(line.split()[1])
    raise AssertionError("no RssShmem")


@pytest.mark.slow
@pytest.mark.qemu
@pytest.mark.skipif(qemu_binary() is None, reason="needs qemu-system-x86_64")
def test_freed_guest_ram_leaves_the_host_and_devices_keep_working(monkeypatch):
    """A guest writes 24 MiB into a tmpfs file and deletes it: with the balloon the host's
    copy of guest RAM (QEMU's RssShmem, a shared memfd our vhost-user devices map too)
    falls back within seconds, and the disk and vsock devices still serve afterwards."""
    import vmm
    from vmm.research.density import default_image_disk
    from vmm.research.proc_memory import children, comm

    monkeypatch.delenv(BALLOON_ENV, raising=False)
    sb = vmm.Sandbox.create(default_image_disk(), engine="qemu", memory_mib=256, network=None)
    try:
        qemu = next(p for p in children(os.getpid()) if "qemu" in comm(p))
        order = sb.exec(["cat", "/sys/module/page_reporting/parameters/page_reporting_order"])
        assert order.stdout.strip() == str(PAGE_REPORTING_ORDER).encode()
        sb.exec(["sh", "-c", "dd if=/dev/zero of=/tmp/big bs=1M count=24 2>/dev/null"])
        full = _rss_shmem_kib(qemu)
        sb.exec(["rm", "/tmp/big"])
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and _rss_shmem_kib(qemu) > full - 16 * 1024:
            time.sleep(0.5)
        after = _rss_shmem_kib(qemu)
        assert after <= full - 16 * 1024, (full, after)
        # the devices still work on the memfd with holes in it: read the disk, use vsock
        r = sb.exec(["sh", "-c", "cat /bin/busybox | wc -c; echo done"])
        assert r.stdout.split()[-1] == b"done" and int(r.stdout.split()[0]) > 100_000
    finally:
        sb.stop()
