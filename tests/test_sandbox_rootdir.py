"""Sandbox.create(root_dir=) with real guests: the busybox image's tree unpacked into a
host directory, shared read-only over virtio-fs as the overlay's lower layer (issue 14,
item 4), on the qemu engine by default.

What must hold: commands run from it; whatever the guest does to / (write, delete,
rename, chmod, link, even mounting the share again read-write as root) lands in the upper
layer or fails, and the host directory is byte-for-byte unchanged; a writable disk keeps
the guest's changes across boots; two sandboxes boot the one directory at the same time,
each with its own view. The argument checks (missing or non-directory root_dir) are in
test_sandbox_rootdir_unit.py and again here against a real create().
"""
import shutil
from concurrent.futures import ThreadPoolExecutor

import pytest

from support.rootfs_dir import tree_snapshot, unpack_busybox_rootfs
from support.sandbox_image import MARKER, have_busybox
from support.test_engine import ENGINE, engine_marks

import vmm
from vmm.errors import ConfigError

pytestmark = [pytest.mark.slow, *engine_marks(),
              pytest.mark.skipif(not have_busybox(), reason="no /bin/busybox (busybox-static)"),
              pytest.mark.skipif(not shutil.which("musl-gcc"), reason="no musl-gcc (musl-tools)"),
              pytest.mark.skipif(not shutil.which("/usr/lib/qemu/virtiofsd"),
                                 reason="no /usr/lib/qemu/virtiofsd (qemu-system-common)")]

BOOT_TIMEOUT = 90   # virtio-fs lookups under TCG on a shared host: headroom
T = 30


@pytest.fixture(scope="module")
def rootfs(tmp_path_factory):
    return unpack_busybox_rootfs(tmp_path_factory.mktemp("rootdir"))


@pytest.fixture(scope="module")
def pristine(rootfs):
    """The host directory's state before any guest ran on it."""
    return tree_snapshot(rootfs)


@pytest.fixture(scope="module")
def sb(kernel_path, rootfs, pristine):
    s = vmm.Sandbox.create(root_dir=rootfs, engine=ENGINE, hostname="rootdir",
                           boot_timeout=BOOT_TIMEOUT)
    yield s
    s.stop()
    assert tree_snapshot(rootfs) == pristine


def sh(sb, script: str):
    r = sb.exec(["sh", "-c", script], timeout=T)
    assert r.code == 0, (script, r.stdout, r.stderr)
    return r.stdout.decode()


def test_runs_commands_from_the_directory(sb, rootfs):
    assert sb.root_dir == str(rootfs.resolve())
    assert sb.exec(["echo", "hello"], timeout=T).stdout == b"hello\n"
    assert sb.fs.read("/etc/image-marker") == MARKER
    assert sh(sb, "hostname") == "rootdir\n"
    # / is the overlay; the lower layer is the share, not a disk (none is attached).
    mounts = sh(sb, "cat /proc/mounts")
    assert any(line.split()[1:3] == ["/", "overlay"] for line in mounts.splitlines()), mounts
    assert "vd" not in sh(sb, "ls /sys/block")


def test_guest_changes_stay_in_the_upper_layer(sb, rootfs, pristine):
    sh(sb, """set -e
        echo changed > /etc/image-marker          # overwrite a lower file (copy-up)
        echo new > /etc/new-file                  # a new file
        rm /bin/cat                               # delete a lower file (whiteout)
        rm -r /home                               # and a lower directory
        mv /etc/passwd /etc/passwd.moved          # rename a file
        mv /usr /usr-moved                        # rename a directory (EXDEV: copied)
        chmod 600 /etc/group                      # metadata only
        ln /bin/busybox /bin/hardlink             # a hard link to a lower file
        ln -s /nowhere /etc/dangling              # a symlink
        mkdir -p /srv/a/b && echo deep > /srv/a/b/f
        truncate -s 0 /etc/hosts 2>/dev/null || : > /etc/hosts
    """)
    sb.fs.write("/root/via-fs-api", b"written with sb.fs")
    # The guest sees its own changes ...
    assert sb.fs.read("/etc/image-marker") == b"changed\n"
    assert sh(sb, "ls /bin/cat /home 2>&1 || true").count("No such file") == 2
    assert sh(sb, "cat /srv/a/b/f /root/via-fs-api") == "deep\nwritten with sb.fs"
    assert sh(sb, "stat -c %a /etc/group") == "600\n"
    # ... and the host directory has none of them.
    assert tree_snapshot(rootfs) == pristine
    assert (rootfs / "etc/image-marker").read_bytes() == MARKER
    assert (rootfs / "bin/cat").is_symlink() and (rootfs / "home").is_dir()


def test_remounting_the_share_read_write_is_refused(sb, rootfs, pristine):
    """Root in the guest mounts the share again and remounts it read-write: the writes
    still fail, because virtiofsd itself refuses them, and nothing reaches the host."""
    out = sh(sb, """
        mkdir -p /mnt/again
        mount -t virtiofs vmm-root /mnt/again && echo MOUNTED
        mount -o remount,rw /mnt/again && echo REMOUNTED
        grep " /mnt/again " /proc/mounts
        echo x > /mnt/again/etc/intruder 2>&1 && echo WROTE
        rm /mnt/again/etc/image-marker 2>&1 && echo REMOVED
        mkdir /mnt/again/newdir 2>&1 && echo MADE
        echo done
    """)
    # The guest's own side let the writes through: only the server can stop them.
    assert "MOUNTED" in out and "REMOUNTED" in out and " rw," in out, out
    assert "WROTE" not in out and "REMOVED" not in out and "MADE" not in out, out
    assert tree_snapshot(rootfs) == pristine


def test_writable_disk_keeps_changes_across_boots(kernel_path, rootfs, pristine, tmp_path):
    disk = vmm.Sandbox.format_writable_disk(tmp_path / "state.ext4", size="256M")
    with vmm.Sandbox.create(root_dir=rootfs, writable_disk=disk, engine=ENGINE,
                            boot_timeout=BOOT_TIMEOUT) as sb:
        sh(sb, "echo kept > /etc/image-marker && rm /bin/ls && mkdir /state && echo 1 > /state/n")
        # The writable disk is the guest's only disk (the first, /dev/vda).
        assert sh(sb, "ls /sys/block | grep vd") == "vda\n"
    assert sb.stopped_gracefully
    with vmm.Sandbox.create(root_dir=rootfs, writable_disk=disk, engine=ENGINE,
                            boot_timeout=BOOT_TIMEOUT) as sb:
        assert sh(sb, "cat /etc/image-marker /state/n; ls /bin/ls 2>&1 || true") == \
            "kept\n1\nls: /bin/ls: No such file or directory\n"
    assert tree_snapshot(rootfs) == pristine


def test_two_sandboxes_boot_one_directory_at_once(kernel_path, rootfs, pristine):
    with ThreadPoolExecutor(2) as pool:
        boxes = list(pool.map(lambda name: vmm.Sandbox.create(
            root_dir=rootfs, engine=ENGINE, hostname=name, boot_timeout=BOOT_TIMEOUT),
            ["one", "two"]))
    try:
        for box in boxes:
            sh(box, f"echo {box.hostname} > /etc/image-marker && rm /bin/cp && echo {box.hostname} > /mine")
        for box in boxes:  # each sees its own writes only
            assert sh(box, "cat /etc/image-marker /mine") == f"{box.hostname}\n" * 2
            assert sh(box, "ls /bin/cp 2>&1 || true").endswith("No such file or directory\n")
            assert box.fs.read("/etc/passwd") == (rootfs / "etc/passwd").read_bytes()
    finally:
        for box in boxes:
            box.stop()
    assert all(box.stopped_gracefully for box in boxes)
    assert tree_snapshot(rootfs) == pristine


def test_bad_root_dir_is_a_clear_error_before_boot(tmp_path, rootfs, image):
    with pytest.raises(ConfigError, match="does not exist"):
        vmm.Sandbox.create(root_dir=tmp_path / "missing", engine=ENGINE)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="is not a directory"):
        vmm.Sandbox.create(root_dir=tmp_path / "file", engine=ENGINE)
    with pytest.raises(ConfigError, match="not both"):
        vmm.Sandbox.create(image, root_dir=rootfs, engine=ENGINE)


def test_root_the_guest_cannot_mount_is_a_boot_failure_naming_it(kernel_path, rootfs):
    # A later vmm.root= wins in the agent: it looks for a tag no device has.
    with pytest.raises(vmm.BootFailed) as e:
        vmm.Sandbox.create(root_dir=rootfs, engine=ENGINE, boot_timeout=BOOT_TIMEOUT,
                           extra_cmdline="vmm.root=no-such-tag")
    assert f"the root directory {rootfs.resolve()} could not be mounted in the guest: " \
           "no virtio-fs device with this tag" in str(e.value)
