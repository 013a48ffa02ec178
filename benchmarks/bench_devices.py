"""Issue 3's device benchmarks on real Linux under the QEMU engine (TCG), same guest, same
run, ratios against QEMU's own device back ends:

- virtio-blk: sequential O_DIRECT read and write of 256 MiB in the guest (busybox dd, 1 MiB
  blocks) on our vhost-user virtio-blk vs QEMU's built-in virtio-blk
  (-drive if=none,format=raw + -device virtio-blk-device), both disks in one guest which
  takes turns between them round by round; the whole benchmark pinned to one CPU, and
  again on any CPU (see the virtio-blk section for why). Target: time ratio <= 1.11
  (throughput >= 0.9).
- vsock: 256 MiB host -> guest and echoed back (throughput), and 64-byte round trips
  (median and p99 latency). No baseline: QEMU has no vsock back end of its own (only
  kernel vhost-vsock, absent here).
- virtio-net: the guest downloads from a TCP server on the host's loopback, through our
  virtio-net + passt vs QEMU's virtio-net on its user network (-netdev user). Target: time
  ratio <= 1.25 (throughput >= 0.8). A second group runs ours with passt's socket send
  buffer at 208 KiB (a stock host without CAP_NET_ADMIN) against ours with the usual 8 MiB:
  what passt's dropped batches cost (issue 10 item 5; see vmm/engines/net_backend.py). The
  three guests run at once and take turns round by round. A reference group runs the same
  download with QEMU's own virtio-net on passt (stream netdev), separating passt's cost
  from our device's; that QEMU is run by hand, in its own test, not alternated.

Intervals are measured between MARK lines the guest prints, timestamped on arrival at the
host (a console line costs well under a millisecond; every interval is seconds long).

    pytest benchmarks/bench_devices.py --benchmark-only -s
"""
import os
import shutil
import socket
import statistics
import threading
import time

import pytest

from support.devices_guest import GuestRun, build_initramfs, need_tools  # noqa: E402
from vmm.devices import Disk, Net, Vsock  # noqa: E402

BLK_MIB = 256
VSOCK_MIB = 256
VSOCK_ROUNDS = 3
PINGS = 2000
NET_MIB = int(os.environ.get("VMM_BENCH_NET_MIB", "64"))
NET_ROUNDS = 5
SMALL_SNDBUF = 212992 // 2  # the kernel doubles it: 208 KiB, the stock net.core.wmem_default
SMALL_GROUP = f"net download {NET_MIB} MiB, passt sndbuf 208 KiB vs 8 MiB"


@pytest.fixture(scope="module")
def initrd(tmp_path_factory):
    need_tools()
    return build_initramfs(tmp_path_factory.mktemp("bench-devices"))


@pytest.fixture(scope="module")
def blk_images(tmp_path_factory):
    """Two files of 257 MiB of non-zero data (a sparse file would flatter the read side):
    ours and QEMU's, so neither side reads or writes pages the other just touched."""
    d = tmp_path_factory.mktemp("blk")
    chunk = os.urandom(1 << 20)
    paths = (d / "ours.img", d / "qemu.img")
    for path in paths:
        with open(path, "wb") as f:
            for _ in range(BLK_MIB + 1):
                f.write(chunk)
    return paths


def _check_downloads(lines, benchmark):
    """Every download delivered all NET_MIB MiB. A reset that arrives after the last byte
    (seen through passt, see the note) is counted in extra_info, not failed: the bytes are
    what the benchmark times. Anything short fails."""
    results = [ln for ln in lines if ln.startswith(("TCP_SINK ", "TCP_SINK_FAIL"))]
    full = NET_MIB << 20
    short = [ln for ln in results if f"bytes={full} " not in ln and f"after {full} bytes" not in ln]
    assert not short, "\n".join(lines[-30:])
    resets = sum("TCP_SINK_FAIL" in ln for ln in results)
    benchmark.extra_info["resets_after_last_byte"] = resets
    if resets:
        print(f"\nnote: {resets} download(s) ended with a reset after the last byte")


def _report(benchmark, compare, group, role, label, target, samples, mib, key=None):
    median = statistics.median(samples)
    key = key or role
    benchmark.extra_info.update({f"{key}_samples_s": [round(s, 4) for s in samples],
                                 f"{key}_median_s": round(median, 4),
                                 f"{key}_mib_per_s": round(mib / median, 1)})
    print(f"\n{group} {role}: median {median:.3f}s = {mib / median:.1f} MiB/s "
          f"(samples {', '.join(f'{s:.3f}' for s in samples)})")
    compare(benchmark, group, role, label, target, seconds=median)


# --- virtio-blk ---------------------------------------------------------------------------
# One guest has both disks, ours (serial "ours", vhost-user) and QEMU's built-in (serial
# "qemu"), each on its own host file, and takes turns between them round by round: the same
# guest, the same load, the same host page-cache state for both.
#
# Why the write used to be bimodal (0.33 s or 0.50 s): not the host file's page cache,
# writeback or alignment. A 1 MiB O_DIRECT write is one or two requests served one at a
# time, and each of ours costs two wake-ups across processes (QEMU's vCPU thread kicks our
# device thread; ours signals QEMU back). When the scheduler puts our device thread on the
# same CPU as QEMU's vCPU thread (which sleeps while the guest waits), a wake-up is cheap;
# on the other CPU it is an IPI through this host's software hypervisor plus a wait behind
# whatever runs there. Pinned to one CPU both sides took 0.33-0.36 s (ratio 0.97-1.1);
# ours and QEMU forced onto different CPUs took ours 0.87-1.24 s against QEMU's 0.55 s
# (ratio 1.6-2.2). QEMU's built-in device stays within one process, so its wake-ups stay
# near. So the headline groups pin the benchmark (our process, its device threads and
# QEMU) to one CPU, and the "any CPU" groups show what placement costs.

BLK_ROUNDS = 8
BLK_CASES = [(op, pin) for op in ("write", "read") for pin in (True, False)]


class _OneCpu:
    """Pins this process, every thread of it (threads that serve devices may be started by
    an older thread, and inherit its affinity) and so every process it starts to one
    allowed CPU for the duration."""

    def __init__(self, pin):
        self.pin = pin

    @staticmethod
    def _set(cpus):
        for tid in os.listdir("/proc/self/task"):
            try:
                os.sched_setaffinity(int(tid), cpus)
            except (ProcessLookupError, FileNotFoundError):
                pass    # a thread that ended meanwhile

    def __enter__(self):
        self.saved = os.sched_getaffinity(0)
        if self.pin:
            self._set({min(self.saved)})
        return self

    def __exit__(self, *exc):
        if self.pin:
            self._set(self.saved)


@pytest.mark.parametrize("op,pin", BLK_CASES,
                         ids=[f"{o}-{'one-cpu' if p else 'any-cpu'}" for o, p in BLK_CASES])
def test_blk_sequential(benchmark, compare, initrd, blk_images, op, pin):
    ours_img, qemu_img = blk_images
    env = {"OP": op, "MIB": BLK_MIB, "ROUNDS": BLK_ROUNDS, "SERIALS": "ours,qemu"}
    drive = ["-drive", f"file={qemu_img},if=none,id=d,format=raw",
             "-device", "virtio-blk-device,drive=d,serial=qemu"]
    got = {}

    def once():
        with _OneCpu(pin), GuestRun(initrd, "bench_blk", env, qemu_args=drive,
                                    disks=[Disk(str(ours_img), serial="ours")]) as g:
            status = g.run_to_end(600)
            assert status.kind == "shutdown", (status, g.log())
            assert not g.found("BENCH_FAIL"), g.log()
            got.update(ours=g.intervals("start_ours", "end_ours"),
                       qemu=g.intervals("start_qemu", "end_qemu"))
    benchmark.pedantic(once, rounds=1, iterations=1)
    assert len(got["ours"]) == len(got["qemu"]) == BLK_ROUNDS, got
    # The guest's first pass on each disk (round 0) warms its page cache and the host's
    # mappings: a warm-up, never in a median.
    ours, qemu = got["ours"][1:], got["qemu"][1:]
    group = f"blk seq {op} {BLK_MIB} MiB" + ("" if pin else " (any CPU)")
    paired = statistics.median(o / q for o, q in zip(ours, qemu))
    benchmark.extra_info.update(median_paired_ratio=round(paired, 4), pinned_to_one_cpu=pin)
    _report(benchmark, compare, group, "ours", "vhost-user virtio-blk (ours)",
            "target ratio <= 1.11" if pin else "", ours, BLK_MIB)
    _report(benchmark, compare, group, "baseline", "QEMU built-in virtio-blk", "", qemu, BLK_MIB)
    print(f"{group}: paired ratio (median of per-round ratios) {paired:.3f}")


# --- virtio-net -------------------------------------------------------------------------

class _LoopbackSource:
    """A TCP server on 127.0.0.1 sending NET_MIB MiB to each connection, then closing."""

    def __init__(self):
        self.payload = os.urandom(1 << 20) * NET_MIB
        self.srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.srv.bind(("127.0.0.1", 0))
        self.srv.listen(4)
        self.port = self.srv.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        try:
            while True:
                c, _ = self.srv.accept()
                with c:
                    c.sendall(self.payload)
        except OSError:
            pass

    def close(self):
        self.srv.close()


NET_SIDES = {  # name: (label, GuestRun keyword arguments, passt send buffer or None)
    "ours": ("virtio-net (ours) + passt", lambda: {"nets": [Net(backend="passt")]}, None),
    "small": ("virtio-net (ours) + passt, 208 KiB", lambda: {"nets": [Net(backend="passt")]},
              SMALL_SNDBUF),
    "baseline": ("QEMU virtio-net + -netdev user", lambda: {"qemu_args": [
        "-netdev", "user,id=u", "-device", "virtio-net-device,netdev=u"]}, None),
}


def _until(cond, g, what, timeout=300.0):
    end = time.monotonic() + timeout
    while not cond():
        assert not g.found("NET_FAIL") and not g.found("BENCH_FAIL"), g.log()
        assert g.machine.wait(0) is None, f"the guest ended before {what}:\n{g.log()}"
        assert time.monotonic() < end, f"no {what} within {timeout}s:\n{g.log()}"
        time.sleep(0.005)


def test_net_download(benchmark, compare, initrd, monkeypatch):
    """Three guests up at once (ours with the usual 8 MiB passt send buffer, ours with 208
    KiB, QEMU's user network), each waiting on its console before a round: the host starts
    one round in each in turn, the first rotating, so the downloads alternate. Round 0 is a
    warm-up, never in a median."""
    if not shutil.which("passt"):
        pytest.skip("passt is not installed")
    from vmm.engines.net_backend import SNDBUF_ENV
    src = _LoopbackSource()
    env = {"PORT": src.port, "ROUNDS": NET_ROUNDS + 1, "STEP": 1}
    names = list(NET_SIDES)
    guests = {}
    try:
        for name in names:
            _, kwargs, sndbuf = NET_SIDES[name]
            with monkeypatch.context() as mp:   # passt reads it when the machine starts
                if sndbuf is not None:
                    mp.setenv(SNDBUF_ENV, str(sndbuf))
                guests[name] = GuestRun(initrd, "bench_net", env, **kwargs())
                guests[name].__enter__()
        for name, g in guests.items():
            _until(lambda: g.found("NET_UP"), g, "the network")

        def all_rounds():
            for i in range(NET_ROUNDS + 1):
                k = i % len(names)
                for name in names[k:] + names[:k]:
                    g = guests[name]
                    g.machine.send_console(b"go\n")
                    _until(lambda: i in g.marks("end"), g, f"round {i}")
        benchmark.pedantic(all_rounds, rounds=1, iterations=1)
        # Taking turns means no two downloads overlapped (a guest that did not wait on its
        # console would run all its rounds at once, alongside the others').
        spans = sorted((g.marks("start")[i], g.marks("end")[i]) for g in guests.values()
                       for i in range(NET_ROUNDS + 1))
        assert all(b[0] >= a[1] for a, b in zip(spans, spans[1:])), spans
        samples = {}
        for name, g in guests.items():
            status = g.run_to_end(120)
            assert status.kind == "shutdown", (status, g.log())
            _check_downloads([line for _, line in g.lines], benchmark)
            samples[name] = g.intervals("start", "end")[1:]
            assert len(samples[name]) == NET_ROUNDS, g.log()
    finally:
        for g in guests.values():
            g.__exit__(None, None, None)
        src.close()
    group = f"net download {NET_MIB} MiB"
    _report(benchmark, compare, group, "ours", NET_SIDES["ours"][0], "target ratio <= 1.25",
            samples["ours"], NET_MIB)
    _report(benchmark, compare, group, "baseline", NET_SIDES["baseline"][0], "",
            samples["baseline"], NET_MIB)
    _report(benchmark, compare, SMALL_GROUP, "ours", NET_SIDES["small"][0], "",
            samples["small"], NET_MIB, key="small_sndbuf")
    compare(benchmark, SMALL_GROUP, "baseline", NET_SIDES["ours"][0] + ", 8 MiB",
            seconds=statistics.median(samples["ours"]))
    # The passt reference below is a hand-run QEMU in its own test: not alternated.
    compare(benchmark, f"net download {NET_MIB} MiB via passt", "ours", NET_SIDES["ours"][0],
            seconds=statistics.median(samples["ours"]))


def _qemu_on_passt_intervals(initrd, port):
    """QEMU's own virtio-net on passt (a stream netdev on a socketpair we hand to both), run
    by hand: it separates what passt costs from what our device costs."""
    import subprocess
    from vmm.guest import kernel
    from vmm.engines.net_backend import passt_socketpair
    ours, theirs = passt_socketpair()  # passt's send buffer as in our own passt back end
    passt = subprocess.Popen(["passt", "--foreground", "--quiet", "--fd", str(theirs.fileno())],
                             pass_fds=[theirs.fileno()], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    theirs.close()
    fd = ours.fileno()
    argv = ["qemu-system-x86_64", "-M", "microvm,x-option-roms=off,isa-serial=on,rtc=on,acpi=off",
            "-accel", "tcg", "-cpu", "max", "-m", "256", "-nodefaults", "-no-user-config",
            "-nographic", "-no-reboot", "-serial", "stdio",
            "-kernel", str(kernel.guest_kernel()), "-initrd", str(initrd),
            "-append", f"console=ttyS0 reboot=t panic=-1 quiet SCRIPT=bench_net PORT={port} "
                       f"ROUNDS={NET_ROUNDS}",
            "-netdev", f"stream,id=n,addr.type=fd,addr.str={fd}",
            "-device", "virtio-net-device,netdev=n"]
    q = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, pass_fds=[fd])
    ours.close()
    starts, ends, log = {}, {}, []
    try:
        for raw in q.stdout:
            now = time.monotonic()
            line = raw.decode(errors="replace").strip()
            log.append(line)
            w = line.split()
            if len(w) == 3 and w[0] == "MARK":
                (starts if w[1] == "start" else ends)[int(w[2])] = now
        q.wait(30)
    finally:
        if q.poll() is None:
            q.kill()
            q.wait()
        passt.terminate()
        passt.wait(10)
    out = [ends[i] - starts[i] for i in sorted(starts) if i in ends]
    assert len(out) == NET_ROUNDS, "\n".join(log[-30:])
    return out, log


def test_net_download_qemu_virtio_net_on_passt(benchmark, compare, initrd):
    """Reference: the same download through passt with QEMU's virtio-net (group "net
    download via passt": ours vs this)."""
    if not shutil.which("passt"):
        pytest.skip("passt is not installed")
    src = _LoopbackSource()
    out = []
    try:
        benchmark.pedantic(lambda: out.append(_qemu_on_passt_intervals(initrd, src.port)),
                           rounds=1, iterations=1)
        (out, log), = out
        _check_downloads(log, benchmark)
    finally:
        src.close()
    _report(benchmark, compare, f"net download {NET_MIB} MiB via passt", "baseline",
            "QEMU virtio-net + passt (stream)", "", out, NET_MIB)


# --- virtio-vsock -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def vsock_guest(initrd, tmp_path_factory):
    path = str(tmp_path_factory.mktemp("vsock") / "v.sock")
    env = {"VPORT": 1234, "LPORT": 1235, "NCONN": VSOCK_ROUNDS + 1}
    with GuestRun(initrd, "bench_vsock", env, vsock=Vsock(cid=3, socket_path=path)) as g:
        assert g.wait_line("VSOCK_LISTENING 1234", 60), g.log()
        assert g.wait_line("VSOCK_LISTENING 1235", 60), g.log()
        yield path, g


def _connect(path, port):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(120)
    s.connect(path)
    s.sendall(f"CONNECT {port}\n".encode())
    line = b""
    while not line.endswith(b"\n"):
        d = s.recv(1)
        if not d:
            raise AssertionError(f"vsock CONNECT {port}: closed after {line!r}")
        line += d
    assert line.startswith(b"OK "), line
    return s


def _echo_transfer(path, data):
    """Send data to the guest's echo server while reading the echo; bytes match checked by
    length and a sampled comparison (full compare costs more than the transfer)."""
    s = _connect(path, 1234)
    sender = threading.Thread(target=lambda: (s.sendall(data), s.shutdown(socket.SHUT_WR)))
    sender.start()
    got = bytearray()
    buf = bytearray(1 << 20)
    view = memoryview(buf)
    while True:
        n = s.recv_into(view)
        if not n:
            break
        got += view[:n]
    sender.join()
    s.close()
    assert len(got) == len(data) and got[::4099] == data[::4099]


def test_vsock_echo_throughput(benchmark, vsock_guest):
    path, g = vsock_guest
    data = os.urandom(1 << 20) * VSOCK_MIB
    _echo_transfer(path, data[: 1 << 20])  # warm-up connection (uses one of NCONN)
    benchmark.pedantic(_echo_transfer, args=(path, data), rounds=VSOCK_ROUNDS, iterations=1)
    median = benchmark.stats.stats.median
    benchmark.extra_info.update(mib_each_way=VSOCK_MIB,
                                mib_per_s_each_way=round(VSOCK_MIB / median, 1))
    print(f"\nvsock echo {VSOCK_MIB} MiB each way: median {median:.3f}s = "
          f"{VSOCK_MIB / median:.1f} MiB/s each way")


def test_vsock_round_trip_latency(benchmark, vsock_guest):
    path, g = vsock_guest
    s = _connect(path, 1235)
    msg = b"x" * 64
    samples = []

    def rounds():
        for _ in range(PINGS):
            t0 = time.perf_counter()
            s.sendall(msg)
            got = b""
            while len(got) < len(msg):
                d = s.recv(len(msg) - len(got))
                assert d, "guest closed the latency connection"
                got += d
            samples.append(time.perf_counter() - t0)
    benchmark.pedantic(rounds, rounds=1, iterations=1)
    s.close()
    samples.sort()
    med, p99 = statistics.median(samples), samples[int(len(samples) * 0.99)]
    benchmark.extra_info.update(round_trips=PINGS, median_us=round(med * 1e6, 1),
                                p99_us=round(p99 * 1e6, 1))
    print(f"\nvsock 64-byte round trip: median {med * 1e6:.0f} us, p99 {p99 * 1e6:.0f} us "
          f"({PINGS} round trips)")
