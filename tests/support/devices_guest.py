"""A real Linux guest for the Machine-API device tests and benchmarks: the project's kernel
and a busybox initramfs built here, booted through vmm.Machine (QEMU engine) with disks,
vsock and nets. The guest runs one scenario script (SCRIPT=<name> on the kernel command
line) and prints KEY lines; GuestRun timestamps every console line on arrival."""
from __future__ import annotations

import shutil
import stat
import threading
import time
from pathlib import Path

import pytest

import vmm
from support.test_engine import ENGINE
from vmm.guest import initramfs, kernel

HERE = Path(__file__).resolve().parent
GUEST = HERE.parent / "guest"   # tests/guest: guest-side sources

DHCP_SCRIPT = """#!/bin/busybox sh
# udhcpc hook: apply the lease, remember the router (the host's loopback, through passt's
# gateway mapping or QEMU user networking's 10.0.2.2).
case "$1" in
    bound|renew)
        ip addr add "$ip/$mask" dev "$interface"
        ip route add default via "$router"
        echo "$router" > /tmp/gateway ;;
esac
"""

# Scenario scripts, sourced by tests/guest/devices_init.sh with the command line's
# KEY=value words in the environment.
SCRIPTS = {
    "disks": """
for d in /sys/block/vd*; do
    echo "DISK name=${d##*/} size=$(cat $d/size) ro=$(cat $d/ro) serial=$(cat $d/serial 2>/dev/null)"
done
""",
    # TOKEN into token.txt on the ext4 disk with serial RW; checks the disk RO is read-only.
    "blk_write": """
. /scripts/disks
RWDEV=$(disk_by_serial "$RW") || echo "BLK_FAIL no disk with serial $RW"
if mount -t ext4 "$RWDEV" /mnt/a; then
    echo "$TOKEN" > /mnt/a/token.txt && sync && echo "BLK_WRITE ok"
    umount /mnt/a && echo "BLK_UMOUNT ok"
else
    echo "BLK_FAIL mount $RWDEV"
fi
if [ -n "$RO" ]; then
    RODEV=$(disk_by_serial "$RO")
    echo "RO_SYSFS $(cat /sys/block/${RODEV#/dev/}/ro)"
    if dd if=/dev/zero of="$RODEV" bs=4096 count=1 oflag=direct 2>/dev/null; then
        echo "RO_DEV_WRITE allowed"; else echo "RO_DEV_WRITE refused"; fi
    if mount -t ext4 -o ro "$RODEV" /mnt/b; then
        echo "RO_READ $(cat /mnt/b/hello.txt)"
        if echo x > /mnt/b/new.txt 2>/dev/null; then
            echo "RO_FS_WRITE allowed"; else echo "RO_FS_WRITE refused"; fi
        umount /mnt/b
    else
        echo "RO_FAIL mount $RODEV"
    fi
fi
""",
    "blk_read": """
RWDEV=$(disk_by_serial "$RW") || echo "BLK_FAIL no disk with serial $RW"
if mount -t ext4 "$RWDEV" /mnt/a; then
    echo "BLK_READ $(cat /mnt/a/token.txt)"
    umount /mnt/a
else
    echo "BLK_FAIL mount $RWDEV"
fi
""",
    # Host-initiated (guest listens on VPORT) and guest-initiated (to host port HPORT)
    # vsock streams at once, NCONN each, NBYTES each way, checked byte for byte.
    "vsock": """
/bin/vsock_probe echo "$VPORT" "$NCONN" &
/bin/vsock_probe send "$HPORT" "$NCONN" "$NBYTES"
wait
""",
    # Every device touched once: disks listed, DHCP on eth0.
    "touch": """
. /scripts/disks
net_up
""",
    # One TCP connection to the host's loopback server on PORT through eth0.
    "net": """
net_up && /bin/tcp_sink "$(cat /tmp/gateway)" "$PORT"
""",
    # Benchmarks: sequential O_DIRECT reads (OP=read) or writes (OP=write) of MIB MiB, ROUNDS
    # times, on each disk named by serial in SERIALS (comma-separated), taking turns: round i
    # starts with the (i mod n)-th disk. Each pass sits between `MARK start_<serial> i` and
    # `MARK end_<serial> i`.
    "bench_blk": """
nth() { _n=$1; shift; shift "$_n"; echo "$1"; }
LIST=$(echo "$SERIALS" | tr , ' ')
n=$(echo $LIST | wc -w)
i=0
while [ $i -lt "$ROUNDS" ]; do
    k=0
    while [ $k -lt $n ]; do
        s=$(nth $(( (i + k) % n )) $LIST)
        dev=$(disk_by_serial "$s") || { echo "BENCH_FAIL no disk with serial $s"; break; }
        mark start_$s $i
        if [ "$OP" = write ]; then
            dd if=/dev/zero of=$dev bs=1M count="$MIB" oflag=direct 2>/dev/null || echo "BENCH_FAIL write"
        else
            dd if=$dev of=/dev/null bs=1M count="$MIB" iflag=direct 2>/dev/null || echo "BENCH_FAIL read"
        fi
        mark end_$s $i
        k=$((k + 1))
    done
    i=$((i + 1))
done
""",
    # Benchmarks: vsock echo servers the host drives (throughput on VPORT, latency on LPORT).
    "bench_vsock": """
/bin/vsock_probe echo "$LPORT" 1 &
/bin/vsock_probe echo "$VPORT" "$NCONN"
wait
""",
    # Benchmarks: ROUNDS downloads from the host's loopback server on PORT. With STEP=1
    # each round waits for a line on the console first: the host starts the rounds of
    # several guests in turn.
    "bench_net": """
if net_up; then
    echo "NET_UP"
    i=0
    while [ $i -lt "$ROUNDS" ]; do
        [ "$STEP" = 1 ] && read -r _
        mark start $i
        /bin/tcp_sink "$(cat /tmp/gateway)" "$PORT" nohash
        mark end $i
        i=$((i + 1))
    done
fi
""",
}


def need_tools():
    for tool in ("qemu-system-x86_64", "musl-gcc", "busybox"):
        if not shutil.which(tool):
            pytest.skip(f"{tool} is not installed")


def _cpio(entries) -> bytes:
    """A newc archive of (name, mode, data, (major, minor))."""
    return initramfs.newc_archive(entries)


def build_initramfs(dest: Path) -> Path:
    """busybox, the init above, the scenario scripts and two static probes."""
    probes = {}
    for name in ("vsock_probe", "tcp_sink"):
        probes[name] = kernel.compile_static(GUEST / f"{name}.c", dest / name).read_bytes()
    d, f = stat.S_IFDIR | 0o755, stat.S_IFREG | 0o755
    none = (0, 0)
    entries = [(n, d, b"", none) for n in ("bin", "dev", "proc", "sys", "mnt", "scripts")]
    entries += [("dev/console", stat.S_IFCHR | 0o600, b"", (5, 1)),
                ("init", f, (GUEST / "devices_init.sh").read_bytes(), none),
                ("bin/busybox", f, Path(shutil.which("busybox")).read_bytes(), none),
                ("bin/dhcp.sh", f, DHCP_SCRIPT.encode(), none)]
    entries += [(f"bin/{n}", f, data, none) for n, data in probes.items()]
    entries += [(f"scripts/{n}", f, text.encode(), none) for n, text in SCRIPTS.items()]
    out = dest / "devices-initramfs.cpio"
    out.write_bytes(_cpio(entries))
    return out


class GuestRun:
    """A Machine running one scenario; console lines kept with their arrival time."""

    def __init__(self, initrd, script, env=None, memory_mib=256, qemu_args=(), **devices):
        words = [f"SCRIPT={script}"] + [f"{k}={v}" for k, v in (env or {}).items()]
        self.lines = []  # (monotonic seconds, text)
        self._partial = b""
        self._cond = threading.Condition()
        options = vmm.QemuOptions(extra_args=qemu_args) if qemu_args else None
        self.machine = vmm.Machine(kernel.guest_kernel(), initrd=initrd, engine=ENGINE,
                                   cmdline="quiet " + " ".join(words), memory_mib=memory_mib,
                                   console=self._on_console, options=options, **devices)

    def _on_console(self, data: bytes) -> None:
        now = time.monotonic()
        with self._cond:
            parts = (self._partial + data).split(b"\n")
            self._partial = parts.pop()
            for p in parts:
                self.lines.append((now, p.decode(errors="replace").rstrip("\r")))
            self._cond.notify_all()

    def __enter__(self):
        self.machine.start()
        return self

    def __exit__(self, *exc):
        self.machine.stop()

    def wait_line(self, prefix, timeout=120.0):
        """The first line starting with prefix (waiting for it), or None."""
        end = time.monotonic() + timeout
        with self._cond:
            while True:
                for _, line in self.lines:
                    if line.startswith(prefix):
                        return line
                left = end - time.monotonic()
                if left <= 0 or self.machine.wait(0) is not None:
                    return None
                self._cond.wait(min(left, 0.2))

    def run_to_end(self, timeout=120.0):
        """Wait for the guest to end. Fails at once, not at the timeout, when a device
        counts an error: none of the scenarios provokes one, and a device that has given up
        (a net back end declared down) would otherwise leave the guest waiting forever."""
        end = time.monotonic() + timeout
        while True:
            status = self.machine.wait(min(0.5, max(0.0, end - time.monotonic())))
            if status is not None:
                return status
            bad = [d for d in self.machine.device_stats if d["errors"]]
            assert not bad, f"device errors while the guest runs: {bad}\n{self.log()}"
            assert time.monotonic() < end, f"guest still running after {timeout}s:\n{self.log()}"

    def found(self, prefix):
        return [line for _, line in self.lines if line.startswith(prefix)]

    def marks(self, name):
        """Arrival times of `MARK name <i>` lines, by i."""
        out = {}
        for t, line in self.lines:
            w = line.split()
            if len(w) == 3 and w[0] == "MARK" and w[1] == name:
                out[int(w[2])] = t
        return out

    def intervals(self, start, end):
        a, b = self.marks(start), self.marks(end)
        return [b[i] - a[i] for i in sorted(a) if i in b]

    def log(self, n=60):
        return "\n".join(line for _, line in self.lines[-n:])
