"""Bounded fuzz runs in child processes: the virtqueue walker (random descriptors,
indirect tables, ring indices) must neither crash, hang, nor write outside guest RAM; the
vsock device must survive random packets and host clients and still work afterwards."""
import os
import subprocess
import sys

FUZZ_SECONDS = float(os.environ.get("VMM_FUZZ_SECONDS", "5"))


def _seed(name: str) -> int:
    """$VMM_FUZZ_SEED replays a run exactly (its failure message names the seed); else a
    fresh one, printed so a passing run can be replayed too."""
    seed = int(os.environ.get("VMM_FUZZ_SEED") or int.from_bytes(os.urandom(4), "little"))
    print(f"{name}: seed {seed} (replay with VMM_FUZZ_SEED={seed})")
    return seed
TESTS = os.path.dirname(os.path.abspath(__file__))
# The runners import `support.*` (tests/) and `vmm` (the checkout above it, or PYTHONPATH).
env = dict(os.environ, PYTHONPATH=os.pathsep.join(
    p for p in [TESTS, os.path.dirname(TESTS), os.environ.get("PYTHONPATH", "")] if p))


def test_queue_walker_fuzz(tmp_path):
    disk = tmp_path / "fuzz.img"
    disk.write_bytes(bytes(64 * 512))
    seed = _seed("queue walker fuzz")
    r = subprocess.run([sys.executable, "-m", "support.fuzz_queue", str(FUZZ_SECONDS), str(seed), str(disk)],
                       capture_output=True, text=True, timeout=FUZZ_SECONDS + 60, env=env)
    assert r.returncode == 0, f"fuzz seed {seed} failed (replay: VMM_FUZZ_SEED={seed}) (rc {r.returncode}):\n{r.stdout}\n{r.stderr[-3000:]}"
    print(r.stdout)
    # The run did real work: requests served, bad chains rejected, broken queues reset.
    stats = dict(kv.split("=") for kv in r.stdout.split())
    assert int(stats["rounds"]) > 100 and int(stats["requests"]) > 0


def test_vsock_packet_fuzz(tmp_path):
    seed = _seed("vsock packet fuzz")
    secs = min(FUZZ_SECONDS, 3.0)
    r = subprocess.run([sys.executable, "-m", "support.fuzz_vsock", str(secs), str(seed), str(tmp_path)],
                       capture_output=True, text=True, timeout=secs + 60, env=env)
    assert r.returncode == 0, f"vsock fuzz seed {seed} failed (replay: VMM_FUZZ_SEED={seed}) (rc {r.returncode}):\n{r.stdout}\n{r.stderr[-3000:]}"
    stats = dict(kv.split("=") for kv in r.stdout.split())
    assert int(stats["packets"]) > 100
