"""The agent as PID 1 in a real guest (QEMU TCG, plain QEMU devices), before vsock exists:
its PID-1 path (mounts, overlay, switch of root, hostname, shutdown and unmount) checked
end to end over the serial transport (`vmm.transport=serial:/dev/ttyS0`).

The image disk is built here from Debian's busybox-static; the writable disk is a sparse
ext4 file formatted on the host, as the sandbox layer will do.
"""
import hashlib
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from vmm.agent import AgentClient

pytestmark = [pytest.mark.slow, pytest.mark.qemu,
              pytest.mark.skipif(not shutil.which("qemu-system-x86_64"), reason="no qemu-system-x86_64"),
              pytest.mark.skipif(not Path("/bin/busybox").is_file(), reason="no busybox-static"),
              pytest.mark.skipif(not shutil.which("musl-gcc"), reason="no musl-gcc")]

BOOT_TIMEOUT = 120


def make_rootfs(root: Path) -> None:
    (root / "bin").mkdir(parents=True)
    shutil.copy("/bin/busybox", root / "bin" / "busybox")
    applets = subprocess.run(["/bin/busybox", "--list"], capture_output=True, text=True,
                             check=True).stdout.split()
    for a in applets:
        if a != "busybox":
            (root / "bin" / a).symlink_to("busybox")
    for d in ("etc", "root", "tmp", "proc", "sys", "dev", "home/nobody"):
        (root / d).mkdir(parents=True, exist_ok=True)
    (root / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n"
                                         "nobody:x:65534:65534:nobody:/home/nobody:/bin/sh\n")
    (root / "etc" / "group").write_text("root:x:0:\nnogroup:x:65534:\n")
    (root / "etc" / "image-marker").write_text("from the image\n")


@pytest.fixture(scope="module")
def disks(tmp_path_factory):
    d = tmp_path_factory.mktemp("vmdisks")
    make_rootfs(d / "rootfs")
    ext4 = d / "image.ext4"
    subprocess.run(["mkfs.ext4", "-q", "-F", "-d", str(d / "rootfs"), str(ext4), "16M"],
                   check=True, capture_output=True)
    erofs = d / "image.erofs"
    subprocess.run(["mkfs.erofs", "--quiet", str(erofs), str(d / "rootfs")], check=True,
                   capture_output=True)
    return d, ext4, erofs


def new_data_disk(path: Path) -> Path:
    with open(path, "wb") as f:
        f.truncate(64 << 20)  # sparse
    subprocess.run(["mkfs.ext4", "-q", "-F", str(path)], check=True, capture_output=True)
    return path


class Guest:
    def __init__(self, kernel_path, workdir: Path, image: Path, data, extra_cmdline=""):
        from vmm.guest.agent import agent_initramfs
        self.sock = workdir / f"serial-{time.monotonic_ns()}.sock"
        self.log = open(workdir / "qemu.log", "ab")
        cmdline = ("reboot=t panic=-1 loglevel=1 vmm.transport=serial:/dev/ttyS0 "
                   f"vmm.hostname=smoke {'' if data else 'vmm.data=none '}{extra_cmdline}")
        argv = [
            "qemu-system-x86_64", "-M", "microvm,x-option-roms=off,isa-serial=on,rtc=on,acpi=off",
            "-global", "virtio-mmio.force-legacy=false", "-accel", "tcg", "-cpu", "max",
            "-m", "256", "-nodefaults", "-no-user-config", "-nographic", "-no-reboot",
            "-chardev", f"socket,id=ser,path={self.sock},server=on,wait=on",
            "-serial", "chardev:ser",
            "-kernel", str(kernel_path), "-initrd", str(agent_initramfs()),
            "-append", cmdline,
            "-drive", f"file={image},if=none,id=img,format=raw,readonly=on",
            "-device", "virtio-blk-device,drive=img",
        ]
        if data:
            argv += ["-drive", f"file={data},if=none,id=data,format=raw",
                     "-device", "virtio-blk-device,drive=data"]
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self.log,
                                     stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while True:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                s.connect(str(self.sock))
                break
            except OSError:
                s.close()
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"qemu did not start: {(workdir / 'qemu.log').read_text()}")
                time.sleep(0.05)
        self.client = AgentClient(s)

    def close(self):
        self.client.close()
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        self.log.close()


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("image_kind", ["ext4", "erofs"])
def test_pid1_overlay_exec_fs_and_persistence(kernel_path, disks, tmp_path, image_kind):
    d, ext4, erofs = disks
    image = ext4 if image_kind == "ext4" else erofs
    before = sha256(image)
    data = new_data_disk(tmp_path / "data.ext4")

    g = Guest(kernel_path, tmp_path, image, data)
    try:
        ready = g.client.wait_ready(BOOT_TIMEOUT)
        assert ready.pid1 and ready.hostname == "smoke"
        assert 0 < ready.agent_start_ns <= ready.ready_ns
        c = g.client
        assert c.exec(["echo", "hello"], timeout=30).stdout == b"hello\n"
        mounts = c.exec(["cat", "/proc/mounts"], timeout=30).stdout.decode()
        assert any(l.split()[1] == "/" and l.split()[0] == "overlay" for l in mounts.splitlines()), mounts
        assert " /tmp tmpfs" in mounts and " /dev/pts devpts" in mounts
        assert c.fs.read("/etc/image-marker") == b"from the image\n"
        c.fs.write("/root/persist.txt", b"kept across boots\n")
        c.fs.write("/etc/image-marker", b"changed in the overlay\n")
        assert c.exec(["id", "-u"], user="nobody", timeout=30).stdout == b"65534\n"
        r = c.exec(["tty"], tty=True, timeout=30)
        assert r.stdout.startswith(b"/dev/pts/")
        with pytest.raises(Exception) as e:
            c.exec(["/no/such/binary"], timeout=30)
        assert getattr(e.value, "exit_code", None) == 127
        c.shutdown(timeout=30)
        assert g.proc.wait(60) == 0  # reboot=t + -no-reboot: the VM ends
    finally:
        g.close()

    assert sha256(image) == before, "the image disk was modified"
    g = Guest(kernel_path, tmp_path, image, data)
    try:
        g.client.wait_ready(BOOT_TIMEOUT)
        assert g.client.fs.read("/root/persist.txt") == b"kept across boots\n"
        assert g.client.fs.read("/etc/image-marker") == b"changed in the overlay\n"
        g.client.shutdown(timeout=30)
        assert g.proc.wait(60) == 0
    finally:
        g.close()
    # The writable disk was unmounted cleanly: fsck finds nothing to fix.
    fsck = subprocess.run(["e2fsck", "-fn", str(data)], capture_output=True, text=True)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr


def test_ephemeral_without_writable_disk(kernel_path, disks, tmp_path):
    d, ext4, _ = disks
    g = Guest(kernel_path, tmp_path, ext4, None)
    try:
        g.client.wait_ready(BOOT_TIMEOUT)
        g.client.fs.write("/root/scratch", b"in memory")
        mounts = g.client.exec(["cat", "/proc/mounts"], timeout=30).stdout.decode()
        assert "overlay / overlay" in mounts
        assert g.client.fs.read("/root/scratch") == b"in memory"
        g.client.shutdown(timeout=30)
        assert g.proc.wait(60) == 0
    finally:
        g.close()
