"""`msb` end to end, as users type it: a subprocess per command, MSB_HOME in a temp dir, the
busybox test image loaded into the store with `msb image load` from an OCI layout, real
guests on the qemu engine.

Boots are the cost here (1-2 s each on TCG, more on a loaded host), so one named sandbox
walks through most of the lifecycle in order, and the other tests boot only what they
check.
"""
import fcntl
import json
import os
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest

from support.oci_fixtures import LAYER_MT, Image, Layer, sha256, write_layout
from support.proctable import children, named, wait_gone
from support.sandbox_image import MARKER, busybox_layer, have_busybox
from support.test_engine import ENGINE, engine_marks

from vmm.home import Home
from vmm.sandbox.state import StateDB

pytestmark = [pytest.mark.slow, *engine_marks(),
              pytest.mark.skipif(not have_busybox(), reason="no /bin/busybox (busybox-static)")]

ROOT = Path(__file__).resolve().parents[1]
IMAGE = "busybox:test"
PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
T = 180   # per command: a boot on a loaded TCG host can take a while


@pytest.fixture(scope="module")
def home(tmp_path_factory, kernel_path):
    root = tmp_path_factory.mktemp("msb-home")
    work = tmp_path_factory.mktemp("msb-image")
    raw = busybox_layer(work / "layer.tar").read_bytes()
    write_layout(work / "layout", [Image(layers=[Layer(raw, sha256(raw), LAYER_MT["none"])],
                                         env=[PATH])])
    r = msb_in(root, "image", "load", "-i", str(work / "layout"), "-t", IMAGE)
    assert r.returncode == 0, r.stderr
    yield root
    # Whatever a failed test left running must not outlive the run.
    for name in msb_in(root, "ls", "-q").stdout.split():
        msb_in(root, "rm", "-f", name)


def _env(root):
    return dict(os.environ, MSB_HOME=str(root), PYTHONPATH=str(ROOT), MSB_ENGINE=ENGINE)


def msb_in(root, *args, input=None, timeout=T):
    return subprocess.run([sys.executable, "-m", "vmm.cli", *args], capture_output=True,
                          text=True, env=_env(root), timeout=timeout,
                          input=input if input is not None else "")


def spawn_msb(root, *args):
    return subprocess.Popen([sys.executable, "-m", "vmm.cli", *args], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=_env(root))


def status_of(root, name):
    rows = json.loads(msb_in(root, "ls", "--format", "json").stdout)
    return {r["name"]: r["status"] for r in rows}.get(name)


def row_of(root, name):
    with StateDB(Home(root)) as db:
        return db.get(name)


def wait_until(pred, timeout=20.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_named_sandbox_lifecycle(home):
    m = lambda *a, **k: msb_in(home, *a, **k)   # noqa: E731
    r = m("run", "--name", "box", "-d", "-m", "256M", "-e", "GREETING=hi", "-p", "0:8080",
          "--tmpfs", "/scratch:8m", IMAGE)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "box\n"
    assert re.search(r"^Starting box\nStarted box \(\d+\.\d+s\)$", r.stderr, re.M), r.stderr
    assert status_of(home, "box") == "running"
    ls = m("ls").stdout.splitlines()
    assert re.fullmatch(r"NAME +IMAGE +STATUS +CREATED", ls[0])
    assert re.match(r"box +docker.io/library/busybox:test +running +\d{4}-", ls[1])
    ps = m("ps").stdout.splitlines()[1]
    assert ps.split()[:2] == ["box", "docker.io/library/busybox:test"]
    port = int(re.search(r"127\.0\.0\.1:(\d+)->8080/tcp$", ps).group(1))
    assert port != 0   # the host port the sandbox really got

    # (Traffic through a published port is the network layer's, tests/test_sandbox_net.py.)
    r = m("exec", "box", "--", "sh", "-c", "grep ' /scratch tmpfs' /proc/mounts")
    assert r.returncode == 0 and "size=8192k" in r.stdout, (r.stdout, r.stderr)
    info = json.loads(m("inspect", "box", "--format", "json").stdout)
    assert info["status"] == "running" and info["config"]["memory_mib"] == 256

    # exec: streams apart, exit codes through, 127/126 from the agent, env/workdir/hostname
    r = m("exec", "box", "--", "sh", "-c", "echo out; echo err >&2; exit 3")
    assert (r.returncode, r.stdout, r.stderr) == (3, "out\n", "err\n")
    assert m("exec", "box", "--", "no-such-command").returncode == 127
    assert m("exec", "box", "--", "/etc/not-executable.sh").returncode == 126
    r = m("exec", "box", "-e", "X=1", "-w", "/tmp", "--", "sh", "-c",
          "echo $GREETING $X $(pwd) $(hostname); cat /etc/image-marker")
    assert r.stdout == f"hi 1 /tmp box\n{MARKER.decode()}", r.stderr
    r = m("exec", "box", "--", "cat", input="piped stdin\n")
    assert r.stdout == "piped stdin\n"
    r = m("exec", "-u", "nobody", "box", "--", "id", "-u")
    assert r.stdout == "65534\n", r.stderr
    r = m("exec", "--timeout", "1s", "box", "--", "sleep", "30")
    assert r.returncode == 124 and "did not finish within 1s; killed" in r.stderr
    r = m("exec", "-t", "box", "--", "sh", "-c", "tty")
    assert r.returncode == 0 and r.stdout.startswith("/dev/pts/"), (r.stdout, r.stderr)

    # metrics
    met = json.loads(m("metrics", "box", "--format", "json").stdout)
    assert set(met) >= {"name", "timestamp", "cpu_percent", "memory_bytes", "memory_limit_bytes",
                        "disk_read_bytes", "disk_write_bytes", "net_rx_bytes", "net_tx_bytes",
                        "uptime_secs"}
    assert met["memory_limit_bytes"] == 256 << 20
    assert 0 < met["memory_bytes"] < 256 << 20
    assert met["disk_read_bytes"] > 0
    table = m("metrics").stdout.splitlines()
    assert re.fullmatch(r"NAME +CPU +MEMORY +DISK READ +DISK WRITE +NET RX +NET TX +UPTIME "
                        r"+TIMESTAMP", table[0])

    # reuse: a warning, the flags ignored, the sandbox left running
    r = m("run", "--name", "box", "-c", "2", IMAGE, "--", "sh", "-c", "nproc")
    assert r.returncode == 0 and r.stdout == "1\n"
    assert "warning: sandbox box exists; reusing it, so cpus (creation flags) are ignored" \
        in r.stderr
    r = m("run", "--name", "box", IMAGE, "--", "true")   # nothing to ignore: no warning
    assert r.returncode == 0 and "warning" not in r.stderr
    assert status_of(home, "box") == "running"
    assert "already running" in m("start", "box").stderr

    # files survive stop/start; exec on a stopped sandbox starts it
    assert m("exec", "box", "--", "sh", "-c", "echo kept > /root/file").returncode == 0
    r = m("stop", "box")
    assert r.returncode == 0, r.stderr
    assert status_of(home, "box") == "stopped"
    assert "not running" in m("stop", "box").stderr
    # two execs at once on the stopped sandbox: one boot, both run
    procs = [spawn_msb(home, "exec", "box", "--", "cat", "/root/file") for _ in range(2)]
    for p in procs:
        out, err = p.communicate(timeout=T)
        assert (p.returncode, out) == (0, "kept\n"), err
        assert "Starting box" in err
    assert status_of(home, "box") == "running"

    # the log holds what commands printed, with exec ids, and the system entries
    entries = [json.loads(line) for line in
               (Home(home).sandbox_logs("box") / "sandbox.jsonl").read_text().splitlines()]
    assert {"t", "s", "d", "id"} <= set(entries[0])
    assert any(e["s"] == "stdout" and e["d"] == "kept\n" and e["id"] for e in entries)
    assert any(e["s"] == "stderr" and e["d"] == "err\n" for e in entries)
    assert any(e["s"] == "system" and "started" in e["d"] for e in entries)
    assert any(e["s"] == "system" and "stopped" in e["d"] for e in entries)

    # a killed supervisor: crashed, nothing left running, `start` brings the files back
    row = row_of(home, "box")
    # every socket of the run is inside its runtime directory (vhost-user ones included)
    assert row.agent_socket.startswith(row.runtime_dir + "/")
    if ENGINE == "qemu":
        assert list(Path(row.runtime_dir).glob("vmm-vhost-*/vda.sock"))
    kids = children(row.pid, recursive=True)
    assert named(kids, "qemu") or ENGINE != "qemu"
    os.kill(row.pid, signal.SIGKILL)
    wait_until(lambda: status_of(home, "box") == "crashed", 10, "crashed")
    left = wait_gone(kids, timeout=5)
    assert not left, f"left running after the supervisor died: {left}"
    assert not Path(row.runtime_dir).exists()
    r = m("start", "box")
    assert r.returncode == 0, r.stderr
    assert m("exec", "box", "--", "cat", "/root/file").stdout == "kept\n"

    # --replace: a fresh sandbox under the same name
    r = m("run", "--name", "box", "--replace", "-d", IMAGE)
    assert r.returncode == 0, r.stderr
    assert m("exec", "box", "--", "cat", "/root/file").returncode == 1

    r = m("rm", "box")
    assert r.returncode == 1 and "running; stop it first or use -f" in r.stderr
    r = m("rm", "-f", "box")
    assert r.returncode == 0 and "Removed box" in r.stderr
    assert status_of(home, "box") is None
    assert not Home(home).sandbox("box").exists()


def test_unnamed_run_is_removed_when_it_ends(home):
    r = msb_in(home, "run", "-q", IMAGE, "--", "sh", "-c", "echo hello; exit 5")
    assert (r.returncode, r.stdout, r.stderr) == (5, "hello\n", "")
    # no image at all: the offline default image, built on first use
    r = msb_in(home, "run", "--", "sh", "-c", "echo hello; grep ^ID= /etc/os-release")
    assert (r.returncode, r.stdout) == (0, "hello\nID=msb-default\n"), r.stderr
    assert re.search(r"^Started msb-[0-9a-f]{8} \(", r.stderr, re.M), r.stderr
    assert json.loads(msb_in(home, "ls", "--format", "json").stdout) == []
    assert list(Home(home).sandboxes.iterdir()) == []


def test_killing_msb_exec_ends_the_guest_process(home):
    assert msb_in(home, "run", "--name", "k", "-d", "-q", IMAGE).returncode == 0
    try:
        for sig in (signal.SIGTERM, signal.SIGKILL, signal.SIGHUP):
            p = spawn_msb(home, "exec", "k", "--", "sh", "-c", "echo $$ > /tmp/fg; exec sleep 1000")
            wait_until(lambda: msb_in(home, "exec", "k", "--", "test", "-s", "/tmp/fg")
                       .returncode == 0, 30, "the guest process")
            p.send_signal(sig)
            p.wait(10)
            wait_until(lambda: msb_in(home, "exec", "k", "--", "sh", "-c",
                                      "kill -0 $(cat /tmp/fg)").returncode != 0,
                       10, f"the guest process to end after {sig.name}")
            msb_in(home, "exec", "k", "--", "rm", "/tmp/fg")
        # what the command itself put in the background keeps running
        r = msb_in(home, "exec", "k", "--", "sh", "-c",
                   "sleep 1000 >/dev/null 2>&1 & echo $! > /tmp/bg")
        assert r.returncode == 0
        assert msb_in(home, "exec", "k", "--", "sh", "-c", "kill -0 $(cat /tmp/bg)").returncode == 0
        # Ctrl-C (SIGINT) reaches the guest process, whose exit code comes back. (The
        # background sleep ignores SIGINT, as a non-interactive shell's jobs do, so its
        # output goes elsewhere: an open stdout would keep the exec session going.)
        p = spawn_msb(home, "exec", "k", "--", "sh", "-c",
                      "trap 'echo got-int; exit 7' INT; touch /tmp/armed; "
                      "sleep 100 >/dev/null 2>&1 & wait")
        wait_until(lambda: msb_in(home, "exec", "k", "--", "test", "-e", "/tmp/armed")
                   .returncode == 0, 30, "the trap")
        p.send_signal(signal.SIGINT)
        out, _ = p.communicate(timeout=20)
        assert (p.returncode, out) == (7, "got-int\n")
    finally:
        msb_in(home, "rm", "-f", "k")


def test_idle_timeout_stops_an_unused_sandbox(home):
    # `run -d` with a command: the supervisor runs it, its output goes to the log
    r = msb_in(home, "run", "--name", "idle", "-d", "-q", "--idle-timeout", "2s", IMAGE,
               "--", "sh", "-c", "echo main-out")
    assert r.returncode == 0, r.stderr
    try:
        # an exec longer than the timeout keeps it in use
        r = msb_in(home, "exec", "idle", "--", "sleep", "4")
        assert r.returncode == 0
        assert status_of(home, "idle") == "running"
        wait_until(lambda: status_of(home, "idle") == "stopped", 20, "the idle stop")
        log = [json.loads(line) for line in
               (Home(home).sandbox_logs("idle") / "sandbox.jsonl").read_text().splitlines()]
        assert any(e["s"] == "stdout" and e["d"] == "main-out\n" and e["id"] for e in log)
        assert any(e["s"] == "system" and "--idle-timeout" in e["d"] for e in log)
    finally:
        msb_in(home, "rm", "-f", "idle")


def _set_size(fd, rows, cols):
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def _read_until(fd, needle, timeout=30.0):
    buf = b""
    deadline = time.monotonic() + timeout
    while needle not in buf and time.monotonic() < deadline:
        r, _, _ = select.select([fd], [], [], 0.5)
        if r:
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                break
            if not chunk:
                break
            buf += chunk
    return buf


def test_terminal_gets_a_pty_that_follows_resizes(home):
    assert msb_in(home, "run", "--name", "tty", "-d", "-q", IMAGE).returncode == 0
    master, slave = os.openpty()
    try:
        _set_size(slave, 30, 100)
        p = subprocess.Popen([sys.executable, "-m", "vmm.cli", "exec", "tty", "--", "sh", "-c",
                              "stty size; read x; stty size; exit 4"],
                             stdin=slave, stdout=slave, stderr=slave, env=_env(home))
        os.close(slave)
        assert b"30 100" in _read_until(master, b"30 100")
        _set_size(master, 50, 132)
        p.send_signal(signal.SIGWINCH)   # what the terminal does for its foreground job
        time.sleep(0.5)
        os.write(master, b"\r")          # raw mode: Enter reaches the guest's PTY as typed
        assert b"50 132" in _read_until(master, b"50 132")
        assert p.wait(30) == 4
    finally:
        os.close(master)
        msb_in(home, "rm", "-f", "tty")


def test_max_duration_and_forced_stop(home):
    r = msb_in(home, "run", "--name", "short", "-d", "-q", "--max-duration", "2s", IMAGE)
    assert r.returncode == 0, r.stderr
    r2 = msb_in(home, "run", "--name", "forced", "-d", "-q", IMAGE)
    assert r2.returncode == 0, r2.stderr
    try:
        row = row_of(home, "forced")
        kids = children(row.pid, recursive=True)
        r = msb_in(home, "stop", "-f", "forced")
        assert r.returncode == 0, r.stderr
        assert status_of(home, "forced") == "stopped"
        assert not wait_gone(kids, timeout=5)
        assert msb_in(home, "exec", "-q", "forced", "--", "true").returncode == 0  # boots again
        wait_until(lambda: status_of(home, "short") == "stopped", 30, "the --max-duration stop")
        log = (Home(home).sandbox_logs("short") / "sandbox.jsonl").read_text()
        assert "--max-duration of 2s reached" in log
    finally:
        msb_in(home, "rm", "-f", "short", "forced")


def test_sandboxes_started_at_once(home):
    names = [f"par{i}" for i in range(4)]
    procs = [spawn_msb(home, "run", "--name", n, "-d", "-q", "-m", "128M", IMAGE) for n in names]
    try:
        for p in procs:
            out, err = p.communicate(timeout=T)
            assert p.returncode == 0, err
        listing = json.loads(msb_in(home, "ls", "--format", "json").stdout)
        rows = {r["name"]: r["status"] for r in listing}
        assert all(rows[n] == "running" for n in names), rows
        for n in names:   # each answers as itself
            assert msb_in(home, "exec", n, "--", "hostname").stdout == f"{n}\n"
    finally:
        msb_in(home, "rm", "-f", *names)
    assert msb_in(home, "ls", "-q").stdout == ""
