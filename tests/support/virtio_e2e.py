"""Helpers for the end-to-end virtio tests under QEMU (TCG) with our vhost-user devices:
find the guest kernel, build a busybox initramfs with the guest probe, run QEMU."""
from __future__ import annotations

import os
import shutil
import stat
import subprocess
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def find_kernel() -> Path:
    """The built guest kernel ($VMM_KERNEL, else the cache's for the current inputs): a
    skip only when none was ever built here, any other lookup failure fails."""
    from support.guest_kernel import built_guest_kernel
    return built_guest_kernel()


def _cpio_newc(entries) -> bytes:
    """entries: (name, mode, data, rdev_major, rdev_minor). A minimal 'newc' archive."""
    out = bytearray()
    ino = 1
    for name, mode, data, major, minor in list(entries) + [("TRAILER!!!", 0, b"", 0, 0)]:
        nb = name.encode() + b"\0"
        hdr = "070701" + "".join(f"{v:08x}" for v in (
            ino, mode, 0, 0, 1, 0, len(data), 0, 0, major, minor, len(nb), 0))
        out += hdr.encode() + nb
        out += b"\0" * (-len(out) % 4)
        out += data
        out += b"\0" * (-len(out) % 4)
        ino += 1
    return bytes(out)


DHCP_SCRIPT = b"""#!/bin/busybox sh
# udhcpc hook: configure what passt's DHCP offers (but keep the default MTU).
case "$1" in
    bound|renew)
        ip addr add "$ip/$mask" dev "$interface"
        ip route add default via "$router"
        echo "$router" > /tmp/gateway ;;
    *) echo "DHCP_EVENT $1 ip=$ip router=$router" ;;
esac
"""


def build_initramfs(dest: Path, nconn: int = 1, nbytes: int = 0, netport: int = 0, init: str | None = None) -> Path:
    """The test init (guest/init.sh with its placeholders filled) or the given init script,
    with busybox, the guest probe and a DHCP hook."""
    busybox = shutil.which("busybox") or "/bin/busybox"
    probe = dest / "vsock_probe"
    subprocess.run(["musl-gcc", "-static", "-O2", "-o", str(probe), str(HERE.parent / "guest" / "vsock_probe.c")],
                   check=True)
    if init is None:
        init = (HERE.parent / "guest" / "init.sh").read_text()
        init = init.replace("NCONN", str(nconn)).replace("NBYTES", str(nbytes)).replace("NETPORT", str(netport))
    d, f = stat.S_IFDIR | 0o755, stat.S_IFREG | 0o755
    entries = [(n, d, b"", 0, 0) for n in ("bin", "dev", "proc", "sys", "mnt")]
    entries += [("dev/console", stat.S_IFCHR | 0o600, b"", 5, 1),
                ("init", f, init.encode(), 0, 0),
                ("bin/busybox", f, Path(busybox).read_bytes(), 0, 0),
                ("bin/dhcp.sh", f, DHCP_SCRIPT, 0, 0),
                ("bin/vsock_probe", f, probe.read_bytes(), 0, 0)]
    out = dest / "initramfs.cpio"
    out.write_bytes(_cpio_newc(entries))
    return out


class Qemu:
    """QEMU microvm (TCG) with guest RAM in a shared memfd and vhost-user devices."""

    def __init__(self, kernel, initrd, devices, mem_mb=256, cmdline="console=ttyS0 reboot=t panic=-1",
                 pass_fds=(), smp=1):
        args = ["qemu-system-x86_64",
                "-M", "microvm,x-option-roms=off,isa-serial=on,rtc=off,acpi=off,memory-backend=mem",
                "-global", "virtio-mmio.force-legacy=false", "-accel", "tcg", "-cpu", "max",
                "-smp", str(smp), "-m", str(mem_mb), "-object", f"memory-backend-memfd,id=mem,size={mem_mb}M,share=on",
                "-nodefaults", "-no-user-config", "-nographic", "-serial", "stdio", "-no-reboot",
                "-kernel", str(kernel), "-initrd", str(initrd), "-append", cmdline]
        for i, (kind, sock) in enumerate(devices):
            if sock is None:  # a device QEMU implements itself: kind is the whole option list
                args += kind
                continue
            args += ["-chardev", f"socket,id=vu{i},path={sock}"]
            if kind.startswith("virtio-net-device"):  # QEMU's virtio-net on a vhost-user netdev
                args += ["-netdev", f"vhost-user,id=n{i},chardev=vu{i}", "-device", f"{kind},netdev=n{i}"]
            else:
                args += ["-device", f"{kind},chardev=vu{i}"]
        self.lines: list[str] = []
        self.cond = threading.Condition()
        self.p = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  pass_fds=pass_fds)
        self.t = threading.Thread(target=self._read, daemon=True)
        self.t.start()

    def _read(self):
        for raw in self.p.stdout:
            with self.cond:
                self.lines.append(raw.decode(errors="replace").rstrip("\r\n"))
                self.cond.notify_all()
        with self.cond:
            self.cond.notify_all()

    def wait_line(self, prefix, timeout):
        end = time.monotonic() + timeout
        with self.cond:
            while True:
                for line in self.lines:
                    if line.startswith(prefix):
                        return line
                left = end - time.monotonic()
                if left <= 0 or (self.p.poll() is not None and not self.t.is_alive()):
                    return None
                self.cond.wait(min(left, 0.5))

    def found(self, prefix):
        return [line for line in self.lines if line.startswith(prefix)]

    def log(self):
        return "\n".join(self.lines[-80:])

    def close(self):
        if self.p.poll() is None:
            self.p.kill()
        self.p.wait()
