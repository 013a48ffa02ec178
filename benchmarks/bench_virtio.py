"""virtio devices over vhost-user against QEMU's own devices, same guest, same run.

    python benchmarks/bench_virtio.py [--mib 256] [--rounds 3] [--boots 2] [--only blk|net|vsock]

- blk: sequential write (dd bs=1M conv=fsync) and read (after drop_caches) of N MiB of
  /dev/vda inside a QEMU-TCG guest: our virtio-blk over vhost-user against QEMU's built-in
  virtio-blk-device on the same kind of raw file (cache=writeback, like our page-cache I/O).
  Target ratio (ours/QEMU throughput) >= 0.9.
- net: a guest TCP download of N MiB from a server on the host's loopback through passt:
  our virtio-net over vhost-user (passt on a socketpair) against QEMU's virtio-net-device
  with `-netdev stream` to passt's socket. Target >= 0.8.
- vsock (no QEMU baseline here: QEMU's vhost-vsock needs the host kernel's vhost, which
  these machines lack): N MiB host->guest and guest->host, and 64-byte round trips.

Times come from the guest's clock (dd, the probe) or the host's (vsock): the median of
rounds x boots, with boots of ours and QEMU's alternating.
The guest is TCG-emulated, so absolute numbers are not the product's; ratios are the point.
"""
import argparse
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from virtio_e2e import Qemu, build_initramfs, find_kernel  # noqa: E402
from vmm.devices import Disk, Net, VhostUserServer, Vsock  # noqa: E402

HEAD = """#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev 2>/dev/null
mkdir -p /tmp
"""
TAIL = """echo ALL_DONE
reboot -f
"""
NS = re.compile(r"ns=(\d+)")
BOOTS = 2  # boots per role, alternating; set by --boots


def blk_init(mib, rounds):
    body = f"""now() {{ /bin/vsock_probe now; }}
for i in $(seq {rounds}); do
    t0=$(now); dd if=/dev/zero of=/dev/vda bs=1M count={mib} conv=fsync 2>/dev/null; t1=$(now)
    echo "BLK_WRITE ns=$((t1 - t0))"
    echo 3 > /proc/sys/vm/drop_caches
    t0=$(now); dd if=/dev/vda of=/dev/null bs=1M count={mib} 2>/dev/null; t1=$(now)
    echo "BLK_READ ns=$((t1 - t0))"
    echo 3 > /proc/sys/vm/drop_caches
done
"""
    return HEAD + body + TAIL


def net_init(port, rounds):
    body = f"""ip link set lo up
ip link set eth0 up
udhcpc -i eth0 -n -q -t 5 -s /bin/dhcp.sh >/dev/null 2>&1
gw=$(cat /tmp/gateway)
for i in $(seq {rounds}); do /bin/vsock_probe tcpget $gw {port}; done
"""
    return HEAD + body + TAIL


def vsock_init(mib):
    body = f"""/bin/vsock_probe sink 1234
/bin/vsock_probe echo 1235 1
/bin/vsock_probe source 5000 {mib << 20}
"""
    return HEAD + body + TAIL


def run(kernel, initrd, devices, timeout=600, mem_mb=512, during=None, pass_fds=()):
    # Two vCPUs, though the guest (no ACPI, no MP table) brings up one: with a single vCPU
    # QEMU's TCG drops the guest's memory barriers, and device threads (ours over
    # vhost-user, QEMU's own iothread) then lose kicks and interrupts now and then; QEMU's
    # virtio-net stalled for good that way in a 256 MiB download.
    q = Qemu(kernel, initrd, devices, mem_mb=mem_mb, pass_fds=pass_fds, smp=2)
    try:
        if during:
            during(q)
        if not q.wait_line("ALL_DONE", timeout):
            raise RuntimeError("guest did not finish:\n" + q.log())
        q.p.wait(60)
        return q.lines
    finally:
        q.close()


def mbps(mib, seconds):
    return mib / seconds if seconds > 0 else float("inf")


def bench_blk(kernel, tmp, mib, rounds):
    img = tmp / "blk.img"
    initrd = build_initramfs(tmp, init=blk_init(mib, rounds))
    samples = {"ours": ([], []), "qemu": ([], [])}
    # Alternate the two, several boots each: the machine is shared and noisy.
    for role in ("ours", "qemu") * BOOTS:
        img.unlink(missing_ok=True)
        with open(img, "wb") as f:
            f.truncate((mib + 16) << 20)
        if role == "ours":
            dev = Disk(str(img)).open()
            srv = VhostUserServer(dev, str(tmp / "blk.sock"))
            devices = [("vhost-user-blk", srv.path)]
        else:
            devices = [(["-drive", f"file={img},format=raw,if=none,id=d0,cache=writeback",
                         "-device", "virtio-blk-device,drive=d0"], None)]
        try:
            lines = run(kernel, initrd, devices)
        finally:
            if role == "ours":
                srv.stop()
                dev.close()
        if not any(x.startswith("BLK_WRITE") for x in lines):
            raise RuntimeError(f"{role}: no dd results:\n" + "\n".join(lines[-30:]))
        samples[role][0].extend(int(NS.search(x).group(1)) / 1e9 for x in lines if x.startswith("BLK_WRITE"))
        samples[role][1].extend(int(NS.search(x).group(1)) / 1e9 for x in lines if x.startswith("BLK_READ"))
    return {role: (mbps(mib, statistics.median(w)), mbps(mib, statistics.median(r))) for role, (w, r) in samples.items()}


def tcp_source_server(nbytes):
    """Sends nbytes to every connection on 127.0.0.1, then closes it."""
    lst = socket.socket()
    lst.bind(("127.0.0.1", 0))
    lst.listen(8)
    chunk = bytes(1 << 20)

    def serve():
        while True:
            try:
                c, _ = lst.accept()
            except OSError:
                return
            left = nbytes
            try:
                while left:
                    n = c.send(chunk[:min(left, len(chunk))])
                    left -= n
            except OSError:
                pass
            c.close()
    threading.Thread(target=serve, daemon=True).start()
    return lst


def bench_net(kernel, tmp, mib, rounds):
    if not shutil.which("passt"):
        return None
    lst = tcp_source_server(mib << 20)
    initrd = build_initramfs(tmp, init=net_init(lst.getsockname()[1], rounds))
    samples = {"ours": [], "qemu": []}
    for role in ("ours", "qemu") * BOOTS:
        if role == "ours":
            dev = Net(backend="passt", mac="02:56:4d:4d:00:02").open()
            srv = VhostUserServer(dev, str(tmp / "net.sock"))
            devices = [("virtio-net-device,mac=02:56:4d:4d:00:02", srv.path)]
        else:
            # passt on one end of a socketpair, QEMU's stream netdev on the other (passt's
            # own socket path is created inside its sandbox here, invisible to QEMU).
            ours_end, passt_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            passt = subprocess.Popen(["passt", "-f", "-q", "--fd", str(passt_end.fileno())],
                                     pass_fds=[passt_end.fileno()], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
            passt_end.close()
            fd = ours_end.fileno()
            devices = [(["-netdev", f"stream,id=n0,addr.type=fd,addr.str={fd}",
                         "-device", "virtio-net-device,netdev=n0,mac=02:56:4d:4d:00:02"], None)]
        try:
            lines = run(kernel, initrd, devices, pass_fds=() if role == "ours" else (fd,))
        finally:
            if role == "ours":
                srv.stop()
                dev.close()
            else:
                ours_end.close()
                passt.kill()
                passt.wait()
        got = [re.search(r"bytes=(\d+) ns=(\d+)", x) for x in lines if x.startswith("TCPGET ")]
        secs = [int(m.group(2)) / 1e9 for m in got if int(m.group(1)) == mib << 20]
        if len(secs) != rounds:
            raise RuntimeError(f"{role}: incomplete downloads:\n" + "\n".join(lines[-30:]))
        samples[role].extend(secs)
    lst.close()
    return {role: mbps(mib, statistics.median(secs)) for role, secs in samples.items()}


def bench_vsock(kernel, tmp, mib, pings=2000):
    vpath = str(tmp / "v.sock")
    initrd = build_initramfs(tmp, init=vsock_init(mib))
    out = {}
    lst = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    lst.bind(f"{vpath}_5000")
    lst.listen(1)
    lst.settimeout(300)

    def connect(port):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(300)
        s.connect(vpath)
        s.sendall(f"CONNECT {port}\n".encode())
        line = b""
        while not line.endswith(b"\n"):
            line += s.recv(1)
        assert line.startswith(b"OK"), line
        return s

    def during(q):
        assert q.wait_line("VSOCK_LISTENING 1234", 120), q.log()
        s = connect(1234)
        chunk = bytes(1 << 20)
        t = time.perf_counter()
        for _ in range(mib):
            s.sendall(chunk)
        s.shutdown(socket.SHUT_WR)
        assert s.recv(2) == b"OK"
        out["host_to_guest"] = mbps(mib, time.perf_counter() - t)
        s.close()
        assert q.wait_line("VSOCK_LISTENING 1235", 120), q.log()
        s = connect(1235)
        msg = b"x" * 64
        lat = []
        for _ in range(pings):
            t = time.perf_counter()
            s.sendall(msg)
            got = b""
            while len(got) < 64:
                got += s.recv(64 - len(got))
            lat.append(time.perf_counter() - t)
        s.close()
        lat.sort()
        out["rtt_median_us"] = statistics.median(lat) * 1e6
        out["rtt_p99_us"] = lat[int(len(lat) * 0.99)] * 1e6
        c, _ = lst.accept()
        t = time.perf_counter()
        n = 0
        while True:
            d = c.recv(1 << 20)
            if not d:
                break
            n += len(d)
        out["guest_to_host"] = mbps(mib, time.perf_counter() - t)
        assert n == mib << 20, n

    dev = Vsock(3, vpath).open()
    srv = VhostUserServer(dev, str(tmp / "vsock-vu.sock"))
    try:
        run(kernel, initrd, [("vhost-user-vsock-device", srv.path)], during=during)
    finally:
        srv.stop()
        dev.close()
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mib", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--boots", type=int, default=2, help="guest boots per role, alternating (default 2)")
    ap.add_argument("--only", choices=["blk", "net", "vsock"])
    a = ap.parse_args()
    global BOOTS
    BOOTS = a.boots
    kernel = find_kernel()
    if not kernel:
        sys.exit("no guest kernel: set VMM_KERNEL or build one (vmm.kernel.guest_kernel())")
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        if a.only in (None, "blk"):
            r = bench_blk(kernel, tmp, a.mib, a.rounds)
            (ow, orr), (qw, qr) = r["ours"], r["qemu"]
            print(f"blk  write {a.mib} MiB: ours {ow:7.1f} MiB/s  qemu {qw:7.1f} MiB/s  ratio {ow / qw:.2f} (target >= 0.9)")
            print(f"blk  read  {a.mib} MiB: ours {orr:7.1f} MiB/s  qemu {qr:7.1f} MiB/s  ratio {orr / qr:.2f} (target >= 0.9)")
        if a.only in (None, "net"):
            r = bench_net(kernel, tmp, a.mib, a.rounds)
            if r:
                print(f"net  download {a.mib} MiB via passt: ours {r['ours']:7.1f} MiB/s  qemu {r['qemu']:7.1f} MiB/s  "
                      f"ratio {r['ours'] / r['qemu']:.2f} (target >= 0.8)")
        if a.only in (None, "vsock"):
            r = bench_vsock(kernel, tmp, a.mib)
            print(f"vsock {a.mib} MiB host->guest {r['host_to_guest']:7.1f} MiB/s, guest->host {r['guest_to_host']:7.1f} MiB/s, "
                  f"64-byte round trip median {r['rtt_median_us']:.0f} us, p99 {r['rtt_p99_us']:.0f} us")


if __name__ == "__main__":
    main()
