"""vmm.engines.child_process: a spawned child dies with its owner process, however the owner
dies, and not when the thread that asked for it ends (no VM: `sleep` stands in for QEMU)."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import psutil
import pytest

from vmm.engines.child_process import spawn

ROOT = Path(__file__).resolve().parents[1]

OWNER = textwrap.dedent("""
    import json, subprocess, sys, threading, time
    from vmm.engines.child_process import spawn
    box = {}
    t = threading.Thread(target=lambda: box.setdefault("p", spawn(["sleep", "600"])))
    t.start(); t.join()          # the asking thread is gone before the owner dies
    time.sleep(0.3)
    print(json.dumps({"pid": box["p"].pid, "alive": box["p"].poll() is None}), flush=True)
    time.sleep(600)
""")


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM])
def test_child_dies_with_its_owner(how):
    owner = subprocess.Popen([sys.executable, "-c", OWNER], stdout=subprocess.PIPE, text=True,
                             env=dict(os.environ, PYTHONPATH=str(ROOT)))
    try:
        info = json.loads(owner.stdout.readline())
        assert info["alive"], "the child died with the thread that spawned it"
        child = psutil.Process(info["pid"])
        owner.send_signal(how)
        owner.wait(10)
        gone, alive = psutil.wait_procs([child], timeout=5)
        assert not [p for p in alive if p.status() != psutil.STATUS_ZOMBIE]
    finally:
        if owner.poll() is None:
            owner.kill()
            owner.wait()


def test_spawn_is_popen():
    p = spawn([sys.executable, "-c", "import sys; print(sys.stdin.read().upper())"],
              stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    out, _ = p.communicate(b"hi", timeout=30)
    assert (p.returncode, out) == (0, b"HI\n")
    with pytest.raises(FileNotFoundError):
        spawn(["/nonexistent/program"])
    with pytest.raises(ValueError, match="preexec_fn"):
        spawn(["true"], preexec_fn=lambda: None)


def test_spawn_from_many_threads():
    procs = []
    lock = threading.Lock()

    def one():
        p = spawn(["true"])
        with lock:
            procs.append(p)
    threads = [threading.Thread(target=one) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [p.wait(30) for p in procs] == [0] * 8
