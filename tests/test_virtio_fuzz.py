"""Bounded fuzz runs in child processes: the virtqueue walker (random descriptors,
indirect tables, ring indices) must neither crash, hang, nor write outside guest RAM; the
vsock device must survive random packets and host clients and still work afterwards.

Replay a failure exactly with the seed and round count its message names:
VMM_FUZZ_SEED=<seed> VMM_FUZZ_ROUNDS=<n>; VMM_FUZZ_SECONDS sets the time budget otherwise."""
import os
import subprocess
import sys

import pytest

from support.fuzz_budget import ChildProgress, fuzz_rounds, fuzz_seconds, fuzz_seed, replay

TESTS = os.path.dirname(os.path.abspath(__file__))
# The runners import `support.*` (tests/) and `vmm` (the checkout above it, or PYTHONPATH).
env = dict(os.environ, PYTHONPATH=os.pathsep.join(
    p for p in [TESTS, os.path.dirname(TESTS), os.environ.get("PYTHONPATH", "")] if p))


def run_fuzzer(module, name, seconds, args, tmp_path):
    """Runs support.<module> SECONDS ROUNDS SEED ARGS... PROGRESS; returns its stats (the
    `key=value` words it prints). A failure names the seed and the rounds to replay it,
    even when the child died of a signal."""
    seed, rounds = fuzz_seed(name), fuzz_rounds()
    progress = ChildProgress(str(tmp_path / "rounds"))
    cmd = [sys.executable, "-m", f"support.{module}", str(seconds), str(rounds or 0), str(seed), *args,
           progress.path]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 90, env=env)
    done = progress.rounds()
    assert r.returncode == 0, (f"{name}: seed {seed} failed in round {done} (rc {r.returncode}); replay: "
                               f"{replay('VMM_FUZZ_SEED', seed, done)}\n{r.stdout}\n{r.stderr[-3000:]}")
    print(r.stdout)
    return dict(kv.split("=") for kv in r.stdout.split())


@pytest.mark.fuzz
def test_queue_walker_fuzz(tmp_path):
    disk = tmp_path / "fuzz.img"
    disk.write_bytes(bytes(64 * 512))
    stats = run_fuzzer("fuzz_queue", "queue walker fuzz", fuzz_seconds(5), [str(disk)], tmp_path)
    # The run did real work: requests served, bad chains rejected, broken queues reset
    # (unless it replays a given number of rounds, maybe a few).
    if fuzz_rounds() is None:
        assert int(stats["rounds"]) > 100 and int(stats["requests"]) > 0


@pytest.mark.fuzz
def test_vsock_packet_fuzz(tmp_path):
    stats = run_fuzzer("fuzz_vsock", "vsock packet fuzz", fuzz_seconds(3), [str(tmp_path)], tmp_path)
    if fuzz_rounds() is None:
        assert int(stats["packets"]) > 100
