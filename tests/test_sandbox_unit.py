"""vmm.Sandbox without a VM: writable disk formatting, argument checks, the command line,
BootFailed's message, the disk lock. Fast tier."""
import fcntl
import os
import shutil
import subprocess

import pytest

import vmm
from vmm.errors import ConfigError
from vmm.sandbox.agent_cmdline import agent_cmdline
from vmm.sandbox.checks import check_hostname
from vmm.sandbox.console import CONSOLE_TAIL_BYTES, ConsoleLog
from vmm.sandbox.disk_lock import DiskLock
from vmm.sandbox.sandbox import Sandbox
from vmm.sandbox.writable_disk import format_writable_disk, parse_size


@pytest.mark.parametrize("text,value", [
    ("4G", 4 << 30), ("512M", 512 << 20), ("512MiB", 512 << 20), ("1g", 1 << 30),
    ("16777216", 16 << 20), (64 << 20, 64 << 20), (" 2 T ", 2 << 40),
])
def test_parse_size(text, value):
    assert parse_size(text) == value


@pytest.mark.parametrize("bad", ["", "4X", "-1G", "1.5G", "G", "1M", 0, 10, True, None, 3.0,
                                 "17T", "4 G B"])
def test_parse_size_rejects(bad):
    with pytest.raises(ConfigError) as e:
        parse_size(bad)
    assert repr(bad) in str(e.value) or str(bad) in str(e.value)


needs_mkfs = pytest.mark.skipif(not (shutil.which("mkfs.ext4") or os.path.exists("/sbin/mkfs.ext4")),
                                reason="no mkfs.ext4 (e2fsprogs)")


@needs_mkfs
def test_format_writable_disk_is_sparse_ext4(tmp_path):
    path = tmp_path / "w.ext4"
    assert vmm.Sandbox.format_writable_disk(path, size="4G") == str(path)
    st = os.stat(path)
    assert st.st_size == 4 << 30
    # Sparse: the allocated blocks are a small fraction (mostly the journal).
    assert st.st_blocks * 512 < 200 << 20, st.st_blocks * 512
    assert st.st_mode & 0o777 == 0o600
    fsck = subprocess.run(["e2fsck", "-fn", str(path)], capture_output=True, text=True)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    info = subprocess.run(["dumpe2fs", "-h", str(path)], capture_output=True, text=True).stdout
    assert "Reserved block count:     0" in info
    # lazy init off: the guest kernel has no inode tables left to zero.
    groups = subprocess.run(["dumpe2fs", str(path)], capture_output=True, text=True).stdout
    assert "ITABLE_ZEROED" in groups and "ITABLE_UNINIT" not in groups.replace("INODE_UNINIT", "")


@needs_mkfs
def test_format_refuses_an_existing_file(tmp_path):
    path = tmp_path / "w.ext4"
    path.write_bytes(b"precious state")
    with pytest.raises(ConfigError, match="already exists"):
        format_writable_disk(path, "64M")
    assert path.read_bytes() == b"precious state"


@needs_mkfs
def test_format_failure_leaves_no_file(tmp_path):
    with pytest.raises(ConfigError):
        format_writable_disk(tmp_path / "no-such-dir" / "w.ext4", "64M")
    with pytest.raises(ConfigError):
        format_writable_disk(tmp_path / "w.ext4", "1K")
    assert not (tmp_path / "w.ext4").exists()


def test_cmdline():
    c = agent_cmdline(writable=True, hostname="box-1")
    assert c.split() == ["quiet", "vmm.root=/dev/vda", "vmm.data=/dev/vdb", "vmm.port=1024",
                         "vmm.hostname=box-1"]
    c = agent_cmdline(writable=False, hostname=None, extra="vmm.debug=1")
    assert "vmm.data=none" in c.split() and "vmm.debug=1" in c.split()
    assert not any(p.startswith("vmm.hostname") for p in c.split())


@pytest.mark.parametrize("name", ["a", "box-1", "sb.example", "x" * 64])
def test_hostname_ok(name):
    check_hostname(name)


@pytest.mark.parametrize("name", ["", "-a", "a-", "a b", "a\nvmm.root=/x", "x" * 65, "a_b", 5])
def test_hostname_rejected(name, tmp_path):
    image = tmp_path / "image"
    image.write_bytes(b"\0" * 4096)
    with pytest.raises(ConfigError, match="hostname"):
        vmm.Sandbox.create(image, hostname=name)


def test_create_checks_its_disks_first(tmp_path):
    with pytest.raises(ConfigError, match="image disk .*missing.img"):
        vmm.Sandbox.create(tmp_path / "missing.img")
    image = tmp_path / "image"
    image.write_bytes(b"\0" * 4096)
    with pytest.raises(ConfigError, match="writable disk .*format_writable_disk"):
        vmm.Sandbox.create(image, writable_disk=tmp_path / "nope.ext4")
    with pytest.raises(ConfigError, match="same file"):
        vmm.Sandbox.create(image, writable_disk=image)
    with pytest.raises(ConfigError, match="boot_timeout"):
        vmm.Sandbox.create(image, boot_timeout=0)
    with pytest.raises(ConfigError, match="workdir 'rel'"):
        vmm.Sandbox.create(image, workdir="rel")


@pytest.mark.parametrize("env", [{"A=B": "c"}, {"": "x"}, {"A\0": "x"}, {"A": "x\0y"}, {"A": 1}, {2: "x"}])
def test_bad_environment_is_refused(env, tmp_path):
    image = tmp_path / "image"
    image.write_bytes(b"\0" * 4096)
    with pytest.raises(ConfigError, match="environment variable"):
        vmm.Sandbox.create(image, env=env)
    with pytest.raises(ConfigError, match="environment variable"):
        Sandbox(_private=True).exec(["true"], env=env)


def test_writable_disk_lock(tmp_path):
    disk = tmp_path / "w"
    disk.write_bytes(b"\0" * 4096)
    fd = os.open(disk, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # as a running sandbox holds it
        with pytest.raises(ConfigError, match="in use by another sandbox"):
            DiskLock(str(disk))
    finally:
        os.close(fd)
    lock = DiskLock(str(disk))
    assert lock.held
    with pytest.raises(ConfigError, match="in use by another sandbox"):
        DiskLock(str(disk))  # one sandbox per disk within a process too
    lock.release()
    assert not lock.held
    lock.release()  # idempotent, as a sandbox's teardown may run twice
    DiskLock(str(disk)).release()  # released: the next sandbox may take it


def test_sandbox_needs_create():
    with pytest.raises(TypeError, match="Sandbox.create"):
        vmm.Sandbox()


def test_not_running_before_and_after():
    sb = Sandbox(_private=True)
    with pytest.raises(vmm.SandboxNotRunning):
        sb.exec(["true"])
    with pytest.raises(vmm.SandboxNotRunning):
        sb.fs.read("/etc/passwd")
    assert sb.stop().kind == "host-stop"
    assert sb.stop().kind == "host-stop"  # idempotent


def test_boot_failed_message_has_the_console_tail():
    lines = "\n".join(f"line {i}" for i in range(100))
    e = vmm.BootFailed("the VM ended", console_tail=lines)
    msg = str(e)
    assert msg.startswith("sandbox did not become ready: the VM ended")
    assert "line 99" in msg and "line 74" not in msg and "line 75" in msg
    assert e.console_tail == lines
    assert "console is empty" in str(vmm.BootFailed("x"))
    assert isinstance(e, vmm.GuestError)


def test_console_log_keeps_a_bounded_tail(tmp_path):
    log = ConsoleLog(str(tmp_path / "c.log"))
    for i in range(5000):
        log.write(f"message {i}\n".encode())
    log.close()
    log.write(b"after close\n")  # the VM's reader may still deliver: no error
    tail = log.tail()
    assert tail.endswith("after close\n") and "message 4999" in tail
    assert len(tail.encode()) <= CONSOLE_TAIL_BYTES
    assert (tmp_path / "c.log").read_text().count("\n") == 5000
