"""End to end: a real Linux guest under QEMU (TCG) using our blk, vsock and net devices
over vhost-user: ext4 read-write on one disk (read back after a second boot), a read-only
disk, vsock traffic both ways with checksums (host-initiated and guest-initiated, several
connections at once), and DHCP plus a TCP request to the host's loopback through passt.

    VMM_E2E_VSOCK_CONNS=10 VMM_E2E_VSOCK_BYTES=$((64<<20)) pytest tests/test_virtio_qemu.py
runs the issue's full vsock load (10 connections, 64 MiB each way, each direction)."""
import hashlib
import os
import shutil
import socket
import subprocess
import threading
import time

import pytest

from support.virtio_e2e import Qemu, build_initramfs, find_kernel
from vmm.devices import Disk, Net, Vsock
from vmm.engines.virtio_device import open_device
from vmm.engines.vhost_user_server import VhostUserServer

pytestmark = [pytest.mark.slow, pytest.mark.qemu]

NCONN = int(os.environ.get("VMM_E2E_VSOCK_CONNS", "4"))
NBYTES = int(os.environ.get("VMM_E2E_VSOCK_BYTES", str(1 << 20)))


def _need(tool):
    if not shutil.which(tool):
        pytest.skip(f"{tool} not installed")


def make_ext4(path, size_mb, files):
    src = path.with_suffix(".d")
    src.mkdir()
    for name, data in files.items():
        (src / name).write_bytes(data)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-d", str(src), str(path), f"{size_mb}M"], check=True)


def debugfs_cat(img, name):
    r = subprocess.run(["debugfs", "-R", f"cat /{name}", str(img)], capture_output=True)
    return r.stdout


MAC = "02:56:4d:4d:00:01"


def loopback_http_server():
    """A one-route HTTP server on 127.0.0.1 (what the guest reaches through passt)."""
    import http.server

    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            srv.hits += 1
            body = b"hello-from-host-loopback"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
    srv.hits = 0
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


def echo_server(lst, results):
    """Host side of guest-initiated connections: echo everything, count bytes."""
    def serve(c):
        n = 0
        while True:
            d = c.recv(65536)
            if not d:
                break
            c.sendall(d)
            n += len(d)
        c.shutdown(socket.SHUT_WR)
        results.append(n)
        c.close()
    threads = []
    for _ in range(NCONN):
        c, _ = lst.accept()
        t = threading.Thread(target=serve, args=(c,), daemon=True)
        t.start()
        threads.append(t)
    for t in threads:
        t.join(120)


def host_client(path, port, conn, results):
    """Host-initiated: CONNECT through the Unix socket, send a pattern, check the echo."""
    data = hashlib.shake_256(f"host-{conn}".encode()).digest(NBYTES)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(120)
    s.connect(path)
    s.sendall(f"CONNECT {port}\n".encode())
    line = b""
    while not line.endswith(b"\n"):
        line += s.recv(1)
    assert line.startswith(b"OK "), line
    t = threading.Thread(target=lambda: (s.sendall(data), s.shutdown(socket.SHUT_WR)), daemon=True)
    t.start()
    got = bytearray()
    while True:
        d = s.recv(65536)
        if not d:
            break
        got += d
    t.join()
    if bytes(got) == data:
        results.append(True)
    else:
        bad = next((i for i, (a, b) in enumerate(zip(got, data)) if a != b), min(len(got), len(data)))
        results.append(f"conn {conn}: got {len(got)} of {len(data)} bytes, first difference at {bad}")


def test_linux_guest_blk_and_vsock_over_vhost_user(tmp_path):
    _need("qemu-system-x86_64")
    _need("musl-gcc")
    _need("mkfs.ext4")
    kernel = find_kernel()
    if not kernel or not kernel.exists():
        pytest.skip("no guest kernel (vmm.kernel.guest_kernel() or $VMM_KERNEL)")
    http = loopback_http_server()
    initrd = build_initramfs(tmp_path, NCONN, NBYTES, netport=http.server_address[1])
    rw_img, ro_img = tmp_path / "rw.img", tmp_path / "ro.img"
    make_ext4(rw_img, 32, {"hello.txt": b"hello from the host\n"})
    make_ext4(ro_img, 8, {"hello.txt": b"read-only hello\n"})
    ro_before = ro_img.read_bytes()
    vpath = str(tmp_path / "vsock.sock")
    lst = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    lst.bind(f"{vpath}_5000")
    lst.listen(16)
    lst.settimeout(120)

    devs = [open_device(Disk(str(rw_img), serial="rw-disk")), open_device(Disk(str(ro_img), read_only=True, serial="ro-disk")),
            open_device(Vsock(3, vpath))]
    kinds = ["vhost-user-blk", "vhost-user-blk", "vhost-user-vsock-device"]
    if shutil.which("passt"):
        devs.append(open_device(Net(backend="passt")))
        kinds.append(f"virtio-net-device,mac={MAC}")
    socks = [str(tmp_path / f"vu{i}.sock") for i in range(len(devs))]
    servers = [VhostUserServer(d, s) for d, s in zip(devs, socks)]
    guest_results, host_results = [], []
    t0 = time.monotonic()
    q = Qemu(kernel, initrd, list(zip(kinds, socks)))
    try:
        srv_thread = threading.Thread(target=echo_server, args=(lst, guest_results), daemon=True)
        srv_thread.start()
        assert q.wait_line("VSOCK_LISTENING", 120), q.log()
        clients = [threading.Thread(target=host_client, args=(vpath, 1234, i, host_results), daemon=True)
                   for i in range(NCONN)]
        for c in clients:
            c.start()
        done = q.wait_line("ALL_DONE", 300)
        for c in clients:
            c.join(60)
        srv_thread.join(60)
        q.p.wait(60)
        elapsed = time.monotonic() - t0
        log = q.log()
        assert done, log
        disks = {line.split("serial=")[1]: line for line in q.found("DISK ")}
        assert "ro=0" in disks["rw-disk"] and "size=65536" in disks["rw-disk"], log
        assert "ro=1" in disks["ro-disk"] and "size=16384" in disks["ro-disk"], log
        assert q.found("RW_READ hello from the host"), log
        assert q.found("RW_UMOUNT ok"), log
        assert q.found("RO_READ read-only hello"), log
        assert q.found("RO_WRITE refused"), log
        assert q.found("SEND_ALL OK") and q.found("ECHO_ALL OK"), log
        assert host_results == [True] * NCONN, (host_results, log)
        assert sorted(guest_results) == [NBYTES] * NCONN, (guest_results, log)
        if len(devs) > 3:
            assert q.found(f"NET_MAC {MAC}"), log
            assert q.found("NET_REPLY HTTP hello-from-host-loopback"), log
            assert http.hits, "the host server saw no request"
        print(f"\nguest run {elapsed:.1f}s, vsock {NCONN} conns x {NBYTES} bytes each way, each direction")
    finally:
        q.close()
        http.shutdown()
        for s in servers:
            s.stop()
        counters = [d.counters() for d in devs]
        for d in devs:
            d.close()
    # After the guest is gone: its writes are on the host file, the read-only one is untouched.
    assert debugfs_cat(rw_img, "guest.txt") == b"written by the guest\n"
    assert ro_img.read_bytes() == ro_before
    # ... and a second boot reads back what the first one wrote, through our device again.
    big_md5 = q.found("RW_BIG ")[0].split()[1]
    again = tmp_path / "again"
    again.mkdir()
    init2 = ("#!/bin/busybox sh\n/bin/busybox --install -s /bin\nexport PATH=/bin\n"
             "mount -t devtmpfs dev /dev\nmkdir -p /mnt\nmount -t ext4 /dev/vda /mnt\n"
             "echo \"AGAIN $(cat /mnt/guest.txt) $(md5sum /mnt/big.bin | cut -d' ' -f1)\"\n"
             "umount /mnt\necho ALL_DONE\nreboot -f\n")
    dev = open_device(Disk(str(rw_img), serial="rw-disk"))
    srv = VhostUserServer(dev, str(again / "vu.sock"))
    q2 = Qemu(kernel, build_initramfs(again, init=init2), [("vhost-user-blk", srv.path)])
    try:
        assert q2.wait_line("ALL_DONE", 120), q2.log()
        assert q2.found(f"AGAIN written by the guest {big_md5}"), q2.log()
    finally:
        q2.close()
        srv.stop()
        dev.close()
    assert counters[0]["bytes_written"] > 4 << 20 and counters[1]["bytes_written"] == 0
    assert counters[2]["connections"] == 2 * NCONN
    if len(counters) > 3:
        assert counters[3]["frames_in"] > 0 and counters[3]["frames_out"] > 0
    print("counters:", counters)
