"""A sandbox's network (issue 10): published ports against QEMU's own user networking,
the egress policy's cost, and what a NIC adds to boot. Same kernel, same agent initramfs,
same busybox image on every side, in the same run; ours and the baseline alternate round
by round so a load change on the machine hits both.

    PYTHONPATH=$PWD python3 -m pytest benchmarks/bench_net.py --benchmark-only -p no:cacheprovider -s

- published-port TCP throughput host -> guest (64 MiB uploaded to a guest sink through
  127.0.0.1:H) and connect+request latency (connect, GET, a 512-byte reply, close; median
  and p99 over 200): our Sandbox (virtio-net + passt, our egress policy) against QEMU's
  virtio-net on `-netdev user,hostfwd=tcp:127.0.0.1:H-:G`. The baseline boots the same
  kernel, agent initramfs and image through vmm.Machine, with QEMU's NIC instead of ours
  (the agent's static eth0 config, 10.0.2.15/24 via 10.0.2.2, is user networking's own).
  Targets: throughput ratio (ours / QEMU) >= 0.8, latency ratio <= 1.25.
  Our side runs the default scope "public", as `msb run -p` does: the guest's replies
  pass as replies on tracked inbound flows (csrc/virtio/net_flows.c).
- guest download (64 MiB from a host loopback server through the gateway) with 100
  policy rules ahead of the scope vs none: throughput ratio >= 0.95.
- boot to ready, Sandbox.create() with the default network vs network=None: <= 1.05.

The conftest's table prints time ratios (ours / baseline, lower is better); the
throughput ratios (baseline time / ours) are printed here with -s and kept in extra_info.
"""
import os
import shutil
import socket
import statistics
import struct
import tempfile
import threading
import time
from pathlib import Path

import pytest

from support.sandbox_image import have_busybox

import vmm
from vmm.agent import DEFAULT_VSOCK_PORT, AgentClient
from vmm.devices import Disk, Vsock
from vmm.guest.agent import agent_initramfs
from vmm.guest.initramfs import compile_static
from vmm.net.network import GATEWAY, Network, guest_state, kernel_arg
from vmm.sandbox.agent_cmdline import agent_cmdline

pytestmark = [pytest.mark.skipif(not shutil.which("qemu-system-x86_64"), reason="no qemu-system-x86_64"),
              pytest.mark.skipif(not shutil.which("passt"), reason="no passt"),
              pytest.mark.skipif(not shutil.which("musl-gcc"), reason="no musl-gcc"),
              pytest.mark.skipif(not have_busybox(), reason="no /bin/busybox (busybox-static)")]

ENGINE = "qemu"
MEMORY_MIB = 512
MIB = 64
THROUGHPUT_ROUNDS = 7
LATENCY_REQUESTS = 200
BOOT_ROUNDS = 11
BODY_PORT, SINK_PORT = 8080, 8081
GUEST = Path(__file__).resolve().parent.parent / "tests" / "guest"
T = 60


@pytest.fixture(scope="module")
def helpers(tmp_path_factory):
    d = tmp_path_factory.mktemp("guest-helpers")
    return {name: compile_static(GUEST / f"{name}.c", d / name).read_bytes()
            for name in ("http_body", "tcp_sink")}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _OursGuest:
    """Our Sandbox with both guest ports published."""
    label = "Sandbox: virtio-net (ours) + passt"

    def __init__(self, image, kernel_path):
        self.sb = vmm.Sandbox.create(image, engine=ENGINE, memory_mib=MEMORY_MIB, kernel=kernel_path,
                                     network=Network(ports=[f"0:{BODY_PORT}", f"0:{SINK_PORT}"]))
        self.agent = self.sb
        self.ports = {p.guest: p.host for p in self.sb.network.ports}

    def stop(self):
        self.sb.stop()


class _QemuUserGuest:
    """The same kernel, agent initramfs and image through vmm.Machine, with QEMU's own
    virtio-net on user networking forwarding the two ports instead of our NIC."""
    label = "QEMU virtio-net + -netdev user,hostfwd"

    def __init__(self, image, kernel_path):
        self.ports = {BODY_PORT: _free_port(), SINK_PORT: _free_port()}
        fwd = ",".join(f"hostfwd=tcp:127.0.0.1:{h}-:{g}" for g, h in self.ports.items())
        self.dir = tempfile.mkdtemp(prefix="vmm-bench-qemu-user-")
        sock = os.path.join(self.dir, "agent.sock")
        net = kernel_arg(guest_state(Network(), []))   # 10.0.2.15/24 via 10.0.2.2: slirp's own
        self.machine = vmm.Machine(
            kernel_path, initrd=agent_initramfs(), engine=ENGINE, memory_mib=MEMORY_MIB,
            cmdline=agent_cmdline(writable=False, hostname=None, net=net),
            disks=[Disk(str(image), read_only=True, serial="image")], vsock=Vsock(3, sock),
            console=lambda data: None,
            options=vmm.QemuOptions(extra_args=["-netdev", f"user,id=u,{fwd}",
                                                "-device", "virtio-net-device,netdev=u"]))
        self.machine.start()
        try:
            self.agent = AgentClient.connect_when_ready(sock, DEFAULT_VSOCK_PORT, timeout=T,
                                                        alive=lambda: self.machine.wait(0) is None)
        except BaseException:
            self.machine.stop()
            raise

    def stop(self):
        self.agent.close()
        self.machine.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def _start_servers(guest, helpers):
    """The guest's body server (512 bytes) and upload sink, listening; the guest sends a
    frame first (passt learns its MAC from it, see the xfail in test_sandbox_net_ns.py)."""
    a = guest.agent
    a.fs.write("/tmp/http_body", helpers["http_body"], mode=0o755)
    a.fs.write("/tmp/body.bin", b"b" * 512)
    guest.procs = [a.exec_stream(["/tmp/http_body", str(BODY_PORT), "/tmp/body.bin"]),
                   a.exec_stream(["/tmp/http_body", str(SINK_PORT), "-"])]
    for _ in range(200):
        out = a.exec(["netstat", "-lnt"], timeout=T).stdout.decode()
        if f":{BODY_PORT} " in out and f":{SINK_PORT} " in out:
            break
        time.sleep(0.1)
    else:
        raise AssertionError("the guest's servers do not listen")
    a.exec(["ping", "-c", "1", "-W", "1", GATEWAY], timeout=T)


def _upload(port: int, payload: bytes) -> float:
    t0 = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=T) as c:
        c.settimeout(T)
        c.sendall(struct.pack(">Q", len(payload)))
        c.sendall(payload)
        reply = b""
        while not reply.endswith(b"\n"):
            chunk = c.recv(64)
            if not chunk:
                break
            reply += chunk
    elapsed = time.perf_counter() - t0
    assert reply == f"bytes={len(payload)}\n".encode(), reply
    return elapsed


def _request(port: int) -> float:
    t0 = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=T) as c:
        c.settimeout(T)
        c.sendall(b"GET / HTTP/1.0\r\n\r\n")
        reply = b""
        while chunk := c.recv(65536):
            reply += chunk
    elapsed = time.perf_counter() - t0
    assert reply.startswith(b"HTTP/1.0 200 ") and reply.endswith(b"b" * 512), reply[:100]
    return elapsed


@pytest.fixture(scope="module")
def guests(image, guest_kernel, helpers):
    both = {}
    try:
        both["ours"] = _OursGuest(image, guest_kernel)
        both["baseline"] = _QemuUserGuest(image, guest_kernel)
        for g in both.values():
            _start_servers(g, helpers)
        yield both
    finally:
        for g in both.values():
            g.stop()


def _p99(samples):
    s = sorted(samples)
    return s[min(len(s) - 1, int(len(s) * 0.99))]


def test_published_port_throughput(benchmark, compare, guests, capsys):
    payload = os.urandom(1 << 20) * MIB
    samples = {"ours": [], "baseline": []}

    def rounds():
        for _ in range(THROUGHPUT_ROUNDS):
            for role, g in guests.items():      # alternating
                samples[role].append(_upload(g.ports[SINK_PORT], payload))
    for role, g in guests.items():              # warm both paths once
        _upload(g.ports[SINK_PORT], payload)
    benchmark.pedantic(rounds, rounds=1, iterations=1)
    med = {r: statistics.median(s) for r, s in samples.items()}
    ratio = med["baseline"] / med["ours"]       # throughput ours / baseline
    group = f"published port upload {MIB} MiB"
    for role, g in guests.items():
        compare(benchmark, group, role, g.label, "time ratio <= 1.25 (throughput >= 0.8)",
                seconds=med[role])
    benchmark.extra_info.update(
        throughput_ratio=round(ratio, 3),
        **{f"{r}_mib_s": round(MIB / m, 1) for r, m in med.items()},
        **{f"{r}_samples_s": [round(x, 3) for x in s] for r, s in samples.items()})
    with capsys.disabled():
        print(f"\n{group}: ours {MIB / med['ours']:.0f} MiB/s, QEMU user {MIB / med['baseline']:.0f} "
              f"MiB/s; throughput ratio {ratio:.3f} (target >= 0.8)")


def test_published_port_request_latency(benchmark, compare, guests, capsys):
    samples = {"ours": [], "baseline": []}

    def rounds():
        for _ in range(LATENCY_REQUESTS):
            for role, g in guests.items():
                samples[role].append(_request(g.ports[BODY_PORT]))
    for g in guests.values():
        for _ in range(10):
            _request(g.ports[BODY_PORT])
    benchmark.pedantic(rounds, rounds=1, iterations=1)
    med = {r: statistics.median(s) for r, s in samples.items()}
    p99 = {r: _p99(s) for r, s in samples.items()}
    for role, g in guests.items():
        compare(benchmark, "published port connect+request median", role, g.label,
                "ratio <= 1.25", seconds=med[role])
        compare(benchmark, "published port connect+request p99", role, g.label,
                "ratio <= 1.25", seconds=p99[role])
    benchmark.extra_info.update(
        median_ratio=round(med["ours"] / med["baseline"], 3),
        p99_ratio=round(p99["ours"] / p99["baseline"], 3),
        **{f"{r}_median_ms": round(m * 1e3, 3) for r, m in med.items()},
        **{f"{r}_p99_ms": round(m * 1e3, 3) for r, m in p99.items()})
    with capsys.disabled():
        print(f"\nconnect+request over {LATENCY_REQUESTS}: ours median {med['ours'] * 1e3:.2f} ms "
              f"p99 {p99['ours'] * 1e3:.2f} ms; QEMU user median {med['baseline'] * 1e3:.2f} ms "
              f"p99 {p99['baseline'] * 1e3:.2f} ms; ratios median "
              f"{med['ours'] / med['baseline']:.3f}, p99 {p99['ours'] / p99['baseline']:.3f} "
              "(target <= 1.25)")


# --- the egress policy's cost --------------------------------------------------------------

RULES = [f"deny@198.51.100.{i}/32:tcp:443" for i in range(100)]   # none matches the download


class _Source:
    """A loopback server: per connection, MIB MiB, then a half-close; the time from accept
    to the guest's close (it read everything) is the download's."""

    def __init__(self):
        self.payload = os.urandom(1 << 20) * MIB
        self.srv = socket.socket()
        self.srv.bind(("127.0.0.1", 0))
        self.srv.listen(4)
        self.port = self.srv.getsockname()[1]
        self.times = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                c, _ = self.srv.accept()
            except OSError:
                return
            with c:
                t0 = time.perf_counter()
                c.sendall(self.payload)
                c.shutdown(socket.SHUT_WR)
                while c.recv(65536):
                    pass
                self.times.append(time.perf_counter() - t0)

    def close(self):
        self.srv.close()


def _download(sb, src: _Source) -> float:
    n = len(src.times)
    r = sb.exec(["/tmp/tcp_sink", GATEWAY, str(src.port), "nohash"], timeout=T)
    assert r.code == 0 and f"bytes={MIB << 20} ".encode() in r.stdout, r
    for _ in range(100):
        if len(src.times) > n:
            return src.times[n]
        time.sleep(0.01)
    raise AssertionError("the source did not see the guest close")


def test_download_with_100_rules(benchmark, compare, image, guest_kernel, helpers, capsys):
    src = _Source()
    sbs = {}
    try:
        sbs["ours"] = vmm.Sandbox.create(image, engine=ENGINE, memory_mib=MEMORY_MIB, kernel=guest_kernel,
                                         network=Network(scope="host", rules=RULES))
        sbs["baseline"] = vmm.Sandbox.create(image, engine=ENGINE, memory_mib=MEMORY_MIB,
                                             kernel=guest_kernel, network=Network(scope="host"))
        for sb in sbs.values():
            sb.fs.write("/tmp/tcp_sink", helpers["tcp_sink"], mode=0o755)
            _download(sb, src)                  # warm
        samples = {"ours": [], "baseline": []}

        def rounds():
            for _ in range(THROUGHPUT_ROUNDS):
                for role, sb in sbs.items():
                    samples[role].append(_download(sb, src))
        benchmark.pedantic(rounds, rounds=1, iterations=1)
        hits = {row["rule"]: row["hits"] for row in sbs["ours"].network.stats()["rules"]}
        assert all(hits[r] == 0 for r in RULES)  # every frame walked all 100 and went on
    finally:
        for sb in sbs.values():
            sb.stop()
        src.close()
    med = {r: statistics.median(s) for r, s in samples.items()}
    ratio = med["baseline"] / med["ours"]
    compare(benchmark, f"guest download {MIB} MiB, 100 rules", "ours", "100 rules + scope host",
            "time ratio <= 1.053 (throughput >= 0.95)", seconds=med["ours"])
    compare(benchmark, f"guest download {MIB} MiB, 100 rules", "baseline", "scope host, no rules",
            seconds=med["baseline"])
    benchmark.extra_info.update(throughput_ratio=round(ratio, 3),
                                **{f"{r}_mib_s": round(MIB / m, 1) for r, m in med.items()})
    with capsys.disabled():
        print(f"\nguest download {MIB} MiB: 100 rules {MIB / med['ours']:.0f} MiB/s, none "
              f"{MIB / med['baseline']:.0f} MiB/s; throughput ratio {ratio:.3f} (target >= 0.95)")


# --- boot ------------------------------------------------------------------------------------

def _boot(image, kernel_path, network) -> float:
    t0 = time.perf_counter()
    sb = vmm.Sandbox.create(image, engine=ENGINE, memory_mib=MEMORY_MIB, kernel=kernel_path,
                            network=network)
    try:
        return time.perf_counter() - t0
    finally:
        sb.stop()


def test_boot_to_ready_with_a_network(benchmark, compare, image, guest_kernel, capsys):
    samples = {"ours": [], "baseline": []}
    _boot(image, guest_kernel, None)            # warm caches (agent initramfs, page cache)

    def rounds():
        for _ in range(BOOT_ROUNDS):
            samples["ours"].append(_boot(image, guest_kernel, Network()))
            samples["baseline"].append(_boot(image, guest_kernel, None))
    benchmark.pedantic(rounds, rounds=1, iterations=1)
    med = {r: statistics.median(s) for r, s in samples.items()}
    compare(benchmark, "sandbox boot to ready, NIC vs none", "ours", "network=Network()",
            "ratio <= 1.05", seconds=med["ours"])
    compare(benchmark, "sandbox boot to ready, NIC vs none", "baseline", "network=None",
            seconds=med["baseline"])
    # Boot times on a shared machine spread widely (0.6-1.5 s here, outliers of seconds);
    # the best of each side is shown too, as the least disturbed estimate.
    best = {r: min(s) for r, s in samples.items()}
    benchmark.extra_info.update(ratio=round(med["ours"] / med["baseline"], 3),
                                best_ratio=round(best["ours"] / best["baseline"], 3),
                                **{f"{r}_samples_s": [round(x, 3) for x in s] for r, s in samples.items()})
    with capsys.disabled():
        print(f"\nboot to ready: with a NIC {med['ours'] * 1e3:.0f} ms, without "
              f"{med['baseline'] * 1e3:.0f} ms; ratio {med['ours'] / med['baseline']:.3f} (target <= 1.05); "
              f"best of {BOOT_ROUNDS}: {best['ours'] * 1e3:.0f} vs {best['baseline'] * 1e3:.0f} ms, "
              f"ratio {best['ours'] / best['baseline']:.3f}")
