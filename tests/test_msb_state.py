"""The sandbox database: concurrent writers from several processes, reconciliation of dead
supervisors, the schema version; and the table/JSON shapes of `msb ls|ps|inspect` on rows
made here (no VM)."""
import json
import multiprocessing
import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from vmm.errors import VmmError
from vmm.home import Home
from vmm.sandbox.config import SandboxConfig
from vmm.sandbox.state import (SCHEMA_VERSION, SandboxExists, SandboxNotFound, StateDB,
                               boot_id, process_start_time)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("MSB_HOME", str(tmp_path / "home"))
    return Home()


def _worker(root, index, count):
    os.environ["MSB_HOME"] = root
    for i in range(count):
        with StateDB() as db:
            name = f"p{index}-{i}"
            db.insert(name, "img", "{}")
            db.update(name, status="stopped")
            db.claim(name, os.getpid())
            db.finish(name, os.getpid(), "stopped")
            db.list()


def test_concurrent_processes_never_corrupt(home):
    procs, per = 6, 25
    ctx = multiprocessing.get_context("spawn")
    workers = [ctx.Process(target=_worker, args=(str(home.root), i, per)) for i in range(procs)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(120)
        assert w.exitcode == 0
    with StateDB(home) as db:
        rows = db.list()
        assert len(rows) == procs * per
        assert {r.status for r in rows} == {"stopped"}
        assert all(r.pid is None for r in rows)
    con = sqlite3.connect(str(home.database))
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert con.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


def test_one_claim_wins(home):
    """Two supervisors claiming one sandbox: the second sees the first alive."""
    with StateDB(home) as db:
        db.insert("x", "img", "{}")
        sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        try:
            assert db.claim("x", sleeper.pid)
            assert not db.claim("x", os.getpid())
        finally:
            sleeper.kill()
            sleeper.wait()
        assert db.claim("x", os.getpid())   # the first one died: free again


def test_insert_twice_and_missing(home):
    with StateDB(home) as db:
        db.insert("x", "img", "{}")
        with pytest.raises(SandboxExists):
            db.insert("x", "img", "{}")
        with pytest.raises(SandboxNotFound, match="no sandbox named 'nope'"):
            db.get("nope")


def _mark_running(db, name, pid, start, boot, runtime):
    db.update(name, status="running", pid=pid, pid_start=start, boot_id=boot,
              runtime_dir=str(runtime), control_socket=str(runtime / "control.sock"))


@pytest.mark.parametrize("how", ["dead-pid", "recycled-pid", "rebooted"])
def test_running_row_without_supervisor_reads_crashed(home, tmp_path, how):
    runtime = tmp_path / "rt"
    runtime.mkdir()
    (runtime / "control.sock").write_bytes(b"")
    with StateDB(home) as db:
        db.insert("x", "img", "{}")
        if how == "dead-pid":
            p = subprocess.Popen(["true"])
            p.wait()
            _mark_running(db, "x", p.pid, 12345, boot_id(), runtime)
        elif how == "recycled-pid":   # our own pid, but another start time
            _mark_running(db, "x", os.getpid(), process_start_time(os.getpid()) - 1, boot_id(),
                          runtime)
        else:                         # same pid and start, another boot
            _mark_running(db, "x", os.getpid(), process_start_time(os.getpid()),
                          "00000000-0000-0000-0000-000000000000", runtime)
        row = db.get("x")
    assert row.status == "crashed"
    assert row.pid is None and row.control_socket is None
    assert not runtime.exists()   # stale sockets cleaned


def test_live_supervisor_row_stays_running(home, tmp_path):
    with StateDB(home) as db:
        db.insert("x", "img", "{}")
        _mark_running(db, "x", os.getpid(), process_start_time(os.getpid()), boot_id(), tmp_path)
        assert db.get("x").status == "running"
        assert db.get("x").supervisor_alive


def test_newer_schema_refused(home):
    StateDB(home).close()
    con = sqlite3.connect(str(home.database))
    con.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    con.close()
    with pytest.raises(VmmError, match="newer msb"):
        StateDB(home)


def test_runtime_dir_is_short(home, monkeypatch):
    monkeypatch.setenv("MSB_HOME", "/tmp/" + "very-long-home-" * 12)
    path = Home().runtime("a-sandbox-name-that-is-rather-long-too")
    assert len(str(path / "control.sock")) < 80
    assert Home().runtime("a") != Home().runtime("b")


# --- output shapes (subprocess, as users run it) ---------------------------------------------
def msb(home, *args):
    env = dict(os.environ, MSB_HOME=str(home.root), PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "vmm.cli", *args], capture_output=True,
                          text=True, env=env, timeout=60)


def _fake(home, name, ports=(), command=()):
    cfg = SandboxConfig.build(image="busybox:test", ports=list(ports), command=list(command))
    with StateDB(home) as db:
        db.insert(name, "docker.io/library/busybox:test", cfg.to_json())
        db.update(name, status="stopped", image_config=json.dumps({"cmd": ["sh"]}))


def test_empty_listing_says_so_on_stderr(home):
    for cmd in (["ls"], ["list"], ["ps"], ["status", "-a"]):
        r = msb(home, *cmd)
        assert r.returncode == 0, r.stderr
        assert r.stdout == ""
        assert r.stderr.strip() == "No sandboxes found."
    r = msb(home, "ls", "--format", "json")
    assert json.loads(r.stdout) == []


def test_ls_table_shape(home):
    _fake(home, "alpha")
    _fake(home, "b")
    r = msb(home, "ls")
    lines = r.stdout.splitlines()
    assert re.fullmatch(r"NAME +IMAGE +STATUS +CREATED", lines[0])
    assert len(lines) == 3
    col = lines[0].index("IMAGE")
    for line in lines[1:]:   # left-aligned: every column starts where its header does
        assert line[col:].startswith("docker.io/library/busybox:test")
        assert re.search(r" stopped +\d{4}-\d\d-\d\d \d\d:\d\d:\d\d$", line)
    assert msb(home, "ls", "-q").stdout.split() == ["alpha", "b"]
    assert msb(home, "ls", "--running").stderr.strip() == "No sandboxes found."
    assert len(msb(home, "ls", "--stopped").stdout.splitlines()) == 3


def test_ps_and_inspect_shapes(home):
    _fake(home, "web", ports=["4324:4321"], command=["node", "app.js"])
    r = msb(home, "ps", "-a")
    header, row = r.stdout.splitlines()
    assert re.fullmatch(r"NAME +IMAGE +COMMAND +STATUS +PORTS", header)
    assert row.split()[0] == "web"
    assert "node app.js" in row and row.endswith("127.0.0.1:4324->4321/tcp")
    assert msb(home, "ps").stderr.strip() == "No sandboxes found."   # not running
    info = json.loads(msb(home, "inspect", "web", "--format", "json").stdout)
    assert set(info) >= {"name", "status", "config", "created_at", "updated_at"}
    assert info["name"] == "web" and info["status"] == "stopped"
    assert info["config"]["ports"] == ["4324:4321"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", info["created_at"])


def test_unknown_sandbox_is_one_error_line(home):
    for cmd in (["inspect", "nope"], ["start", "nope"], ["exec", "nope", "--", "true"],
                ["stop", "nope"], ["rm", "nope"], ["metrics", "nope"]):
        r = msb(home, *cmd)
        assert r.returncode == 1, (cmd, r.stderr)
        assert r.stderr.strip() == "error: no sandbox named 'nope'", cmd


def test_missing_host_volume_refused_before_anything(home):
    r = msb(home, "create", "-v", "./no-such-src:/app", "busybox:test")
    assert r.returncode == 2
    assert "no-such-src does not exist" in r.stderr   # (test_msb_hostdir.py: the rest)
    # A named volume is accepted (tests/test_msb_volumes.py); an image that cannot be had
    # fails the run before the volume is made.
    r = msb(home, "run", "--pull", "never", "-v", "cache:/c", "busybox:test", "--", "true")
    assert r.returncode == 1 and "--pull never" in r.stderr
    assert msb(home, "ls", "-q").stdout == ""
    assert msb(home, "volume", "ls", "-q").stdout == ""


def test_bad_flags_are_usage_errors(home):
    for cmd in (["run", "-m", "lots", "x"], ["run", "--idle-timeout", "soon", "x"],
                ["create", "-e", "SURELY_UNSET_VAR_12345", "x"], ["run", "--net", "moon", "x"]):
        r = msb(home, *cmd)
        assert r.returncode == 2, (cmd, r.stderr)
        assert r.stderr.startswith("error: ") and len(r.stderr.strip().splitlines()) == 1
