"""`python -m vmm bench density` for real on the qemu engine (slow): every sandbox ready,
memory numbers present, and nothing left running afterwards, after a normal run and
after Ctrl-C in the middle of the concurrent starts.

Leftovers are found by a marker in the environment of the run, which every process it
starts (QEMU, passt) inherits: no other process on the host carries it. QEMU would die
with the run's process anyway (it is spawned to), so what shows that the run itself
cleaned up is its temporary files: the sandboxes' runtime dirs and vhost-user socket
dirs go in a directory of the test's own (TMPDIR, XDG_RUNTIME_DIR), which must end
empty."""
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from support.sandbox_image import have_busybox

ROOT = Path(__file__).resolve().parents[1]
MARK = "VMM_DENSITY_TEST_MARK"

pytestmark = [pytest.mark.slow, pytest.mark.qemu,
              pytest.mark.skipif(not shutil.which("qemu-system-x86_64"),
                                 reason="no qemu-system-x86_64"),
              pytest.mark.skipif(not have_busybox(), reason="no /bin/busybox (busybox-static)")]


def _marked(mark):
    """(pid, command name) of every process whose environment carries mark."""
    needle = f"{MARK}={mark}".encode()
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as f:
                if needle in f.read().split(b"\0"):
                    with open(f"/proc/{name}/comm") as c:
                        found.append((int(name), c.read().strip()))
        except OSError:
            continue
    return found


@pytest.fixture
def run_tmp():
    # Short: sandbox runtime dirs hold Unix sockets (108-byte paths).
    d = tempfile.mkdtemp(prefix="dens-", dir="/tmp")
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _density(mark, run_tmp, *args):
    env = dict(os.environ, PYTHONPATH=str(ROOT), TMPDIR=run_tmp, XDG_RUNTIME_DIR=run_tmp,
               **{MARK: mark})
    return subprocess.Popen([sys.executable, "-m", "vmm", "bench", "density", "--engine", "qemu",
                             *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, cwd=ROOT)


def _gone(mark, timeout=15):
    deadline = time.monotonic() + timeout
    while _marked(mark) and time.monotonic() < deadline:
        time.sleep(0.1)
    return _marked(mark)


def test_three_sandboxes_all_ready_measured_and_cleaned_up(kernel_path, image, tmp_path, run_tmp):
    mark = uuid.uuid4().hex
    proc = _density(mark, run_tmp, "--count", 3, "--settle", 1, "--image", image,
                    "--out", tmp_path / "out", "--json")
    out, err = proc.communicate(timeout=900)
    assert proc.returncode == 0, err[-3000:]
    assert _gone(mark) == [], "processes of the run left behind"
    assert os.listdir(run_tmp) == [], "temporary files of the run left behind"
    report = json.loads(out)
    assert report["engine"] == "qemu" and report["config"]["count"] == 3
    for mode in ("sequential", "concurrent"):
        r = report["modes"][mode]
        assert r["ready"] == 3 and r["errors"] == [], r
        assert len(r["ready_at_s"]) == 3 and r["time_to_all_ready_s"] == max(r["ready_at_s"])
        assert r["starts_per_s"] == pytest.approx(3 / r["time_to_all_ready_s"], rel=0.01)
        assert r["starts_per_s_per_core"] == pytest.approx(
            r["starts_per_s"] / report["host"]["cores"], rel=0.01)
        mem = r["memory"]
        assert mem["qemu_processes"] == 3 and mem["helper_processes"] == 0
        p = mem["per_sandbox_mib"]
        # QEMU: a whole process each (its binary alone is megabytes), guest RAM the guest
        # touched (the kernel at least) but not all of the 256 MiB: nothing preallocated.
        assert 8 < p["qemu"]["pss"] <= p["qemu"]["rss"]
        assert 4 < p["qemu"]["pss_guest_ram"] < 200
        assert p["qemu"]["rss_beyond_guest_ram"] > 0 and p["qemu"]["threads"] >= 2
        assert isinstance(p["ours"]["pss"], float) and p["ours"]["rss"] is not None
        assert p["total"]["pss"] == pytest.approx(p["qemu"]["pss"] + p["ours"]["pss"], abs=0.05)
        assert mem["ours_base_mib"]["pss"] > 5
    for name in ("density.json", "density.png", "density.svg"):
        assert (tmp_path / "out" / name).stat().st_size > 0


def test_ctrl_c_during_concurrent_starts_leaves_nothing(kernel_path, image, run_tmp):
    mark = uuid.uuid4().hex
    proc = _density(mark, run_tmp, "--count", 3, "--mode", "concurrent", "--image", image)
    try:
        deadline = time.monotonic() + 600
        # The warm-up sandbox's QEMU comes and goes first; then three boot at once.
        while len([p for p, comm in _marked(mark) if comm.startswith("qemu")]) < 3:
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "the concurrent starts never began"
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err[-3000:]
    assert err.splitlines()[-1] == "error: interrupted"
    assert "Traceback" not in err
    assert _gone(mark) == [], "processes of the run left behind"
    assert os.listdir(run_tmp) == [], "temporary files of the run left behind"
