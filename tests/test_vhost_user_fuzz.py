"""Random vhost-user message sequences against our back end, in a child process
(support/fuzz_vhost_user.py): a crash, a hang, a stalled event loop, a wrong read after
the run, leaked guest memory or fds fail the test. VMM_FUZZ_SEED replays a seed,
VMM_FUZZ_ROUNDS the exact number of rounds a run made (printed), VMM_FUZZ_SECONDS sets
the time budget."""
import os
import subprocess
import sys

import pytest

TESTS = os.path.dirname(os.path.abspath(__file__))
SECONDS = min(float(os.environ.get("VMM_FUZZ_SECONDS", "4")), 600)


@pytest.mark.fuzz
def test_vhost_user_message_sequence_fuzz(tmp_path):
    seed = int(os.environ.get("VMM_FUZZ_SEED") or int.from_bytes(os.urandom(4), "little"))
    rounds = os.environ.get("VMM_FUZZ_ROUNDS")
    print(f"vhost-user fuzz: seed {seed} (replay with VMM_FUZZ_SEED={seed})")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        p for p in [TESTS, os.path.dirname(TESTS), os.environ.get("PYTHONPATH", "")] if p))
    argv = [sys.executable, "-m", "support.fuzz_vhost_user", str(SECONDS), str(seed), str(tmp_path)]
    if rounds:
        argv.append(rounds)
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=SECONDS + 120, env=env)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"vhost-user fuzz seed {seed} hung (replay: VMM_FUZZ_SEED={seed}):\n{e.stdout}\n{e.stderr}")
    print(r.stdout)
    assert r.returncode == 0, (f"vhost-user fuzz seed {seed} failed (rc {r.returncode}; replay: VMM_FUZZ_SEED={seed}"
                               f" and the rounds below):\n{r.stdout}\n{r.stderr[-4000:]}")
    stats = dict(kv.split("=") for kv in r.stdout.split())
    print(f"replay exactly: VMM_FUZZ_SEED={seed} VMM_FUZZ_ROUNDS={stats['rounds']}")
    # The run did real work: rounds ran and requests reached the disk.
    assert int(stats["rounds"]) >= (int(rounds) if rounds else 5) and int(stats["requests"]) > 0
