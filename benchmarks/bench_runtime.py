"""vmm-runtime through containerd (issue 15, "Benchmarks"), alternated round by round:

    PYTHONPATH=$PWD python3 -m pytest benchmarks/bench_runtime.py --benchmark-only -p no:cacheprovider -s

- `ctr run --rm` of the busybox image running `true`, to the command's exit: ours
  (`--runc-binary vmm-runtime`) against runc (a container, for scale) and against our own
  `msb run` of the same image (an unnamed run is removed when it ends): target within 1.5x of `msb run`.
- 20 containers started at once through containerd (`ctr run -d`), each then exec'd into:
  all run, all are cleaned up (no monitor, VM or state directory left); starts per second
  printed.

containerd runs as a private daemon here (tests/test_runtime_clients.py has the same
set-up), with no network namespace for the containers (`ctr run` without --net-host gives
each a new, empty one: the VMs get no NIC, as runc's containers get only loopback).
"""
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from support.runtime_clients import busybox_archive, runtime_executable
from support.sandbox_image import have_busybox

ROOT = Path(__file__).resolve().parent.parent
IMAGE = "localhost/vmm-bench/busybox:1"
ROUNDS = 5
CONCURRENT = 20
T = 300

pytestmark = [pytest.mark.skipif(os.geteuid() != 0, reason="containerd needs root"),
              pytest.mark.skipif(not shutil.which("containerd") or not shutil.which("runc"),
                                 reason="no containerd or runc"),
              pytest.mark.skipif(not have_busybox(), reason="no /bin/busybox (busybox-static)"),
              pytest.mark.skipif(not os.path.exists("/usr/lib/qemu/virtiofsd"),
                                 reason="no /usr/lib/qemu/virtiofsd")]


@pytest.fixture(scope="module")
def env():
    d = Path(tempfile.mkdtemp(prefix="vmm-bench-rt-"))
    busybox_archive(d, IMAGE)
    runtime = runtime_executable(d, "qemu")
    sock = d / "c.sock"
    (d / "config.toml").write_text(f'version = 2\nroot = "{d}/root"\nstate = "{d}/state"\n'
                                   f'[grpc]\n  address = "{sock}"\n'
                                   '[plugins."io.containerd.grpc.v1.cri"]\n  disable = true\n')
    log = open(d / "containerd.log", "wb")
    daemon = subprocess.Popen(["containerd", "--config", str(d / "config.toml")], stdout=log, stderr=log)
    ctr = ["ctr", "--address", str(sock), "--namespace", f"bench-{uuid.uuid4().hex[:6]}"]
    deadline = time.monotonic() + 30
    while subprocess.run(ctr + ["version"], capture_output=True).returncode != 0:
        assert daemon.poll() is None and time.monotonic() < deadline
        time.sleep(0.2)
    subprocess.run(ctr + ["image", "import", str(d / "busybox.tar")], check=True, capture_output=True)
    msb_env = dict(os.environ, MSB_HOME=str(d / "msb"), MSB_ENGINE="qemu",
                   PYTHONPATH=str(ROOT), PYTHONPYCACHEPREFIX=str(d / "pyc"))
    yield {"ctr": ctr, "runtime": str(runtime), "dir": d, "msb": msb_env}
    daemon.terminate()
    daemon.wait(30)
    log.close()
    shutil.rmtree(d, ignore_errors=True)


def _timed(argv, env=None):
    t0 = time.perf_counter()
    r = subprocess.run(argv, capture_output=True, text=True, timeout=T, env=env)
    assert r.returncode == 0, (argv, r.stderr[-2000:])
    return time.perf_counter() - t0


def _ctr_run(env, runtime, name):
    return _timed(env["ctr"] + ["run", "--rm", "--runc-binary", runtime, IMAGE, name, "true"])


def test_ctr_run_vs_msb_run(benchmark, alternate, env):
    _timed([sys.executable, "-m", "vmm.cli", "run", "-q", "--", "true"], env["msb"])  # image in
    n = iter(range(10**6))
    alternate(benchmark, "ctr run --rm (vmm-runtime) vs msb run",
              ours=("ctr run --rm --runc-binary vmm-runtime",
                    lambda: _ctr_run(env, env["runtime"], f"o{next(n)}")),
              baseline=("msb run -- true (an unnamed run is removed)",
                        lambda: _timed([sys.executable, "-m", "vmm.cli", "run", "-q", "--",
                                        "true"], env["msb"])),
              rounds=ROUNDS, target="target <= 1.5")


def test_ctr_run_vs_runc(benchmark, alternate, env):
    n = iter(range(10**6))
    alternate(benchmark, "ctr run --rm (vmm-runtime) vs runc",
              ours=("ctr run --rm --runc-binary vmm-runtime",
                    lambda: _ctr_run(env, env["runtime"], f"v{next(n)}")),
              baseline=("ctr run --rm (runc: a container, for scale)",
                        lambda: _ctr_run(env, shutil.which("runc"), f"r{next(n)}")),
              rounds=ROUNDS, target="for scale")


def _leftovers(tag: str):
    found = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                cmd = open(f"/proc/{d}/cmdline", "rb").read()
            except OSError:
                continue
            if b"vmm.runtime" in cmd and tag.encode() in cmd:
                found.append(int(d))
    return found


def test_twenty_at_once(benchmark, env, capsys):
    ctr, runtime = env["ctr"], env["runtime"]
    names = [f"many{i}" for i in range(CONCURRENT)]
    result = {}

    def all_at_once():
        t0 = time.perf_counter()
        with ThreadPoolExecutor(CONCURRENT) as pool:
            list(pool.map(lambda n: _timed(ctr + ["run", "-d", "--runc-binary", runtime, IMAGE, n,
                                                  "sleep", "1000"]), names))
        result["seconds"] = time.perf_counter() - t0
    benchmark.pedantic(all_at_once, rounds=1, iterations=1)
    try:
        for n in names:   # each one runs: exec into it
            r = subprocess.run(ctr + ["task", "exec", "--exec-id", "x", n, "true"],
                               capture_output=True, text=True, timeout=T)
            assert r.returncode == 0, (n, r.stderr)
    finally:
        for n in names:
            subprocess.run(ctr + ["task", "kill", "-s", "SIGKILL", n], capture_output=True, timeout=T)
        for n in names:
            deadline = time.monotonic() + 60
            while subprocess.run(ctr + ["task", "delete", n], capture_output=True,
                                 timeout=T).returncode != 0 and time.monotonic() < deadline:
                time.sleep(0.5)
            subprocess.run(ctr + ["container", "rm", n], capture_output=True, timeout=T)
    left = [p for n in names for p in _leftovers(n)]
    assert not left, f"monitors still running: {left}"
    rate = CONCURRENT / result["seconds"]
    benchmark.extra_info.update(containers=CONCURRENT, seconds=round(result["seconds"], 2),
                                starts_per_s=round(rate, 2), per_core=round(rate / os.cpu_count(), 2))
    with capsys.disabled():
        print(f"\n{CONCURRENT} containers through containerd at once: all running in "
              f"{result['seconds']:.1f} s ({rate:.2f} starts/s, {rate / os.cpu_count():.2f} per core); "
              "all exec'd into, all cleaned up")
