"""A shared directory in a real Linux guest: Machine(shared_dirs=[SharedDir(...)]) starts a
virtiofsd and attaches it (on the kvm engine through the C core's vhost-user front end,
on the qemu engine as QEMU's vhost-user-fs-device), and the guest mounts it by tag and
reads and writes files both ways.

qemu by default; VMM_TEST_ENGINE=kvm runs it where a Linux guest boots under /dev/kvm
(the nested tier, tests/test_nested.py). The shared dir is a Sandbox HostDir volume: the
Sandbox adds the SharedDir to its Machine and the agent mounts the tag before READY.
"""
import shutil

import pytest

from support.sandbox_image import have_busybox
from support.test_engine import ENGINE, engine_marks

import vmm
from vmm.sandbox.volumes import HostDir

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("private_runtime_base"), *engine_marks(),
              pytest.mark.skipif(not have_busybox(), reason="no /bin/busybox (busybox-static)"),
              pytest.mark.skipif(not shutil.which("musl-gcc"), reason="no musl-gcc (musl-tools)"),
              pytest.mark.skipif(not shutil.os.access("/usr/lib/qemu/virtiofsd", shutil.os.X_OK),
                                 reason="no /usr/lib/qemu/virtiofsd (qemu-system-common)")]

BOOT_TIMEOUT = 90
T = 60


def sh(sb, script):
    r = sb.exec(["sh", "-c", script], timeout=T)
    assert r.exit_code == 0, (script, r.stdout, r.stderr)
    return r.stdout


def test_guest_mounts_a_shared_dir_and_files_cross_both_ways(kernel_path, image, tmp_path):
    share = tmp_path / "share"
    share.mkdir()
    (share / "from-host.txt").write_bytes(b"written by the host\n")
    with vmm.Sandbox.create(image, engine=ENGINE, boot_timeout=BOOT_TIMEOUT, network=None,
                            volumes=[HostDir(str(share), "/tmp/s")]) as sb:
        assert sb.machine.engine == ENGINE
        assert b"virtiofs" in sh(sb, "grep /tmp/s /proc/mounts")
        assert sh(sb, "cat /tmp/s/from-host.txt") == b"written by the host\n"
        sh(sb, "echo written by the guest > /tmp/s/from-guest.txt && mkdir /tmp/s/d && "
               "dd if=/dev/zero of=/tmp/s/d/big bs=64k count=32 2>/dev/null && sync")
        assert (share / "from-guest.txt").read_bytes() == b"written by the guest\n"
        assert (share / "d" / "big").stat().st_size == 32 * 65536
        # The host changes a file and adds one: the guest's next read sees both.
        (share / "from-host.txt").write_bytes(b"changed by the host\n")
        (share / "later.txt").write_bytes(b"later\n")
        assert sh(sb, "cat /tmp/s/from-host.txt /tmp/s/later.txt") == b"changed by the host\nlater\n"
        sh(sb, "rm /tmp/s/later.txt")
        assert not (share / "later.txt").exists()
        if ENGINE == "kvm":
            fs = [d for d in sb.machine.device_stats if d["kind"] == "fs"]
            assert len(fs) == 1 and fs[0]["name"] == "fs0"
            # The front end relayed the back end's completions as interrupts, and the
            # device never broke.
            assert fs[0]["interrupts"] > 0, fs
            [t] = [t for t in sb.machine.inspect().transports if t["kind"] == "fs"]
            assert t["status"] & 0x4 and not t["status"] & 0x40, t
