"""`msb volume create|ls|rm` as users type it: `python -m vmm.cli` in a private MSB_HOME.
Output shapes, exit statuses and error lines. Fast tier."""
import json
import os
import subprocess
import sys

import pytest

from vmm.home import Home
from vmm.sandbox.volume_store import VolumeStore
from vmm.sandbox.volumes import lock_mounts

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def home(tmp_path):
    return tmp_path / "msb-home"


def msb(home, *args):
    env = dict(os.environ, MSB_HOME=str(home), PYTHONPATH=ROOT)
    env.pop("MSB_TRACEBACK", None)
    return subprocess.run([sys.executable, "-m", "vmm.cli", *args], capture_output=True,
                          text=True, env=env, timeout=60)


def test_empty_list(home):
    r = msb(home, "volume", "ls")
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "No volumes found.\n")
    r = msb(home, "volume", "ls", "--format", "json")
    assert (r.returncode, json.loads(r.stdout)) == (0, [])
    r = msb(home, "volume", "list", "-q")
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "")


def test_create_ls_rm(home):
    r = msb(home, "volume", "create", "data")
    assert (r.returncode, r.stdout, r.stderr) == (0, "data\n", "")
    r = msb(home, "volume", "create", "cache", "--size", "64M")
    assert r.returncode == 0, r.stderr
    r = msb(home, "volume", "ls")
    assert r.returncode == 0 and r.stderr == ""
    header, *rows = r.stdout.splitlines()
    assert header.split() == ["NAME", "SIZE", "ON", "DISK", "IN", "USE", "CREATED"]
    assert header.index("SIZE") > header.index("NAME") and header.startswith("NAME ")
    assert [row.split()[0] for row in rows] == ["cache", "data"]
    assert rows[0].split()[1:3] == ["64.0", "MiB"] and rows[1].split()[1:3] == ["4.0", "GiB"]
    # Left-aligned columns: every row's cells start where the header's do.
    for col in ("SIZE", "ON DISK", "IN USE", "CREATED"):
        start = header.index(col)
        assert all(row[start - 1] == " " and row[start] != " " for row in rows), (col, rows)
    assert all(row.split()[-3] == "-" for row in rows)  # not in use
    r = msb(home, "volume", "ls", "--format", "json")
    vols = json.loads(r.stdout)
    assert [v["name"] for v in vols] == ["cache", "data"]
    assert set(vols[0]) == {"name", "path", "size_bytes", "disk_bytes", "created_at", "in_use"}
    assert vols[1]["size_bytes"] == 4 << 30 and vols[1]["disk_bytes"] < 256 << 20
    assert vols[1]["path"] == str(Home(home).volumes / "data.ext4")
    assert msb(home, "volume", "ls", "-q").stdout == "cache\ndata\n"
    r = msb(home, "volume", "rm", "data", "cache")
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "Removed data\nRemoved cache\n")
    assert msb(home, "volume", "ls", "-q").stdout == ""


@pytest.mark.parametrize("args,code,message", [
    (["volume", "create", "a/b"], 2, "error: bad volume name 'a/b'"),
    (["volume", "create", "x", "--size", "big"], 2, "error: disk size 'big' is not a size"),
    (["volume", "create"], 2, "error: Missing argument 'NAME'"),
    (["volume", "rm"], 2, "error: Missing argument 'NAMES...'"),
    (["volume", "rm", "nope"], 1, "error: volume 'nope' not found"),
    (["volume", "ls", "--format", "yaml"], 2, "error: Invalid value for '--format'"),
    (["volume", "frob"], 2, "error: No such command 'frob'"),
])
def test_errors_are_one_line(home, args, code, message):
    r = msb(home, *args)
    assert r.returncode == code, r
    assert r.stderr.startswith(message) and r.stderr.count("\n") == 1, r.stderr
    assert "Traceback" not in r.stderr


def test_create_existing_and_rm_in_use(home):
    assert msb(home, "volume", "create", "v", "--size", "32M").returncode == 0
    r = msb(home, "volume", "create", "v")
    assert (r.returncode, r.stderr) == (1, "error: volume 'v' already exists\n")
    store = VolumeStore(Home(home))
    locks = lock_mounts([store.mount("v", "/v")])  # as a running sandbox holds it
    try:
        r = msb(home, "volume", "ls")
        assert r.stdout.splitlines()[1].split()[-3] == "rw"
        # -f forgives a missing name, never an attached volume; the others still go.
        assert msb(home, "volume", "create", "w", "--size", "32M").returncode == 0
        r = msb(home, "volume", "rm", "-f", "v", "gone", "w")
        assert r.returncode == 1
        assert r.stderr == ("error: volume 'v' is in use by a sandbox; stop it first\n"
                            "Removed w\n")
    finally:
        locks[0].release()
    assert msb(home, "volume", "ls", "-q").stdout == "v\n"
    r = msb(home, "volume", "remove", "v")
    assert (r.returncode, r.stderr) == (0, "Removed v\n")
