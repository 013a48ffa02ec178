"""Host directories in `msb run|create -v SRC:DEST[:ro]` (issue 14): a host path is made
absolute against the caller's directory and kept in the config, a missing source is one
clear error line (exit 2) before anything is pulled, recorded or booted, the supervisor
turns it into a HostDir, and `msb inspect` shows every mount with its kind.

The fast tests need no VM; the slow ones drive `msb` as a user would, on the busybox test
image (qemu engine), with a directory in the caller's working directory.
"""
import json
import os
import subprocess
import sys

import pytest

from vmm.errors import ConfigError
from vmm.home import Home
from vmm.sandbox import manager
from vmm.sandbox.config import SandboxConfig, VolumeSpec
from vmm.sandbox.state import StateDB
from vmm.sandbox.supervisor import Supervisor
from vmm.sandbox.volumes import HostDir, VolumeMount

from test_msb_lifecycle import IMAGE, ROOT, _env
from test_msb_volumes import make_home, real_guest

T = 180


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("MSB_HOME", str(tmp_path / "home"))
    return Home(tmp_path / "home")


def msb(*args, cwd=None, home_dir=None, timeout=60):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    if home_dir is not None:
        env = _env(home_dir)
    return subprocess.run([sys.executable, "-m", "vmm.cli", *args], capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL, cwd=cwd, env=env)


# --- fast: no VM ----------------------------------------------------------------------------
@pytest.mark.parametrize("spec,source,ro", [
    ("./src:/app", "{cwd}/src", False),
    ("src/../src/:/app", None, False),          # a bare name is a named volume, not a path
    ("../up:/app:ro", "{parent}/up", True),
    (".:/work", "{cwd}", False),
    ("/abs/x/:/x:rw", "/abs/x", False),
])
def test_host_paths_are_made_absolute_against_the_callers_directory(tmp_path, monkeypatch,
                                                                     spec, source, ro):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    if source is None:
        with pytest.raises(ConfigError, match="bad volume name"):
            VolumeSpec.parse(spec)
        return
    v = VolumeSpec.parse(spec)
    assert v == VolumeSpec(source.format(cwd=work, parent=tmp_path), spec.split(":")[1]
                           .rstrip("/"), "host", ro)
    cfg = SandboxConfig.build(volumes=[spec])
    assert SandboxConfig.from_json(cfg.to_json()) == cfg   # kept absolute in the database


def test_check_volumes_names_a_missing_or_wrong_source(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "file").write_text("x")
    (tmp_path / "dir").mkdir()
    os.symlink(tmp_path / "gone", tmp_path / "dangling")
    manager.check_volumes(SandboxConfig.build(volumes=["./dir:/app", "data:/data"]))
    for spec, why in (("./nope:/app", "does not exist"), ("./file:/app", "is not a directory"),
                      ("./dangling:/app", "is not a directory")):
        with pytest.raises(ConfigError) as e:
            manager.check_volumes(SandboxConfig.build(volumes=[spec]))
        src = spec.split(":")[0][2:]
        assert str(e.value) == f"volume {tmp_path}/{src}:/app: {tmp_path}/{src} {why}"


@pytest.mark.parametrize("command", ["run", "create"])
def test_missing_source_is_one_error_line_before_anything_happens(home, tmp_path, command):
    work = tmp_path / "work"
    work.mkdir()
    args = [command, "-v", "./src:/app", "--pull", "never", "no-such-image:1"]
    r = msb(*args, *(["--", "true"] if command == "run" else []), cwd=work)
    assert r.returncode == 2, r.stderr
    assert r.stderr == f"error: volume {work}/src:/app: {work}/src does not exist\n"
    # refused before the image was looked up (else: "no-such-image" not in the store),
    # and nothing was recorded
    assert not home.sandboxes.exists() or not list(home.sandboxes.iterdir())


def test_the_supervisor_mounts_host_dirs_next_to_named_volumes(home, tmp_path):
    from vmm.sandbox.volume_store import VolumeStore
    VolumeStore(home).create("data", "16M")
    src = tmp_path / "src"
    src.mkdir()
    cfg = SandboxConfig.build(volumes=["data:/data", f"{src}:/app:ro", f"{src}:/data/app"])
    got = Supervisor("box", ready_fd=None, run_command=False)._volumes(cfg)   # MSB_HOME: home
    assert isinstance(got[0], VolumeMount) and got[0].name == "data"
    assert got[1:] == [HostDir(str(src), "/app", True), HostDir(str(src), "/data/app")]


def _insert(home, name, **cfg):
    with StateDB(home) as db:
        db.insert(name, "docker.io/library/busybox:test", SandboxConfig.build(**cfg).to_json())
    home.sandbox(name).mkdir(parents=True, exist_ok=True)


def test_inspect_shows_source_destination_mode_and_kind(home, tmp_path):
    src = tmp_path / "my src"
    src.mkdir()
    _insert(home, "box", volumes=["data:/data:ro", f"{src}:/app", f"{src}:/ref:ro"],
            tmpfs=["/scratch:8m"])
    text = msb("inspect", "box").stdout
    assert ("Mounts:\n"
            "  data -> /data (ro, named volume)\n"
            f"  {src} -> /app (rw, host directory)\n"
            f"  {src} -> /ref (ro, host directory)\n"
            "  tmpfs -> /scratch (rw, tmpfs, size 8m)\n") in text, text
    info = json.loads(msb("inspect", "box", "--format", "json").stdout)
    assert info["mounts"] == [
        {"source": "data", "destination": "/data", "mode": "ro", "kind": "named volume"},
        {"source": str(src), "destination": "/app", "mode": "rw", "kind": "host directory"},
        {"source": str(src), "destination": "/ref", "mode": "ro", "kind": "host directory"},
        {"source": "tmpfs", "destination": "/scratch", "mode": "rw", "kind": "tmpfs",
         "size": "8m"}]
    assert info["config"]["volumes"][1] == {"source": str(src), "dest": "/app", "kind": "host",
                                            "read_only": False}


# --- slow: real guests, driven as a user would ---------------------------------------------
@real_guest
def test_run_v_round_trip_ro_and_inspect(kernel_path, tmp_path):
    root = make_home(tmp_path)
    work = tmp_path / "project"
    (work / "src").mkdir(parents=True)
    (work / "src" / "file").write_text("from the host\n")
    m = lambda *a, **k: msb(*a, cwd=work, home_dir=root, timeout=T, **k)   # noqa: E731
    try:
        r = m("run", "-q", "-v", "./src:/app", IMAGE, "--", "cat", "/app/file")
        assert (r.returncode, r.stdout) == (0, "from the host\n"), r.stderr
        # rw: the guest's write is the host's file
        r = m("run", "-q", "-v", "./src:/app", IMAGE, "--", "sh", "-c",
              "echo from the guest > /app/out")
        assert r.returncode == 0, r.stderr
        assert (work / "src" / "out").read_text() == "from the guest\n"
        # ro: readable, not writable, and the host file is untouched
        r = m("run", "-q", "-v", "./src:/app:ro", IMAGE, "--", "sh", "-c",
              "cat /app/file; echo x > /app/file")
        assert r.stdout == "from the host\n" and r.returncode != 0, (r.stdout, r.stderr)
        assert "Read-only file system" in r.stderr or "Permission denied" in r.stderr, r.stderr
        assert (work / "src" / "file").read_text() == "from the host\n"
        # a named sandbox: inspect shows the mount as it is kept (absolute)
        r = m("create", "-q", "-n", "hd", "-v", "./src:/app:ro", IMAGE)
        assert r.returncode == 0, r.stderr
        text = m("inspect", "hd").stdout
        assert f"Mounts:\n  {work}/src -> /app (ro, host directory)\n" in text, text
        info = json.loads(m("inspect", "hd", "--format", "json").stdout)
        assert info["mounts"] == [{"source": f"{work}/src", "destination": "/app",
                                   "mode": "ro", "kind": "host directory"}]
        r = m("exec", "hd", "--", "sh", "-c", "grep ' /app ' /proc/mounts; cat /app/out")
        assert r.returncode == 0 and " virtiofs ro," in r.stdout, (r.stdout, r.stderr)
        assert r.stdout.endswith("from the guest\n")
        # a source removed while the sandbox is stopped: its next start says so
        assert m("stop", "hd").returncode == 0
        (work / "src" / "file").unlink()
        (work / "src" / "out").unlink()
        (work / "src").rmdir()
        r = m("start", "hd")
        assert r.returncode != 0 and f"{work}/src does not exist" in r.stderr, r.stderr
        assert "Traceback" not in r.stderr
    finally:
        for name in m("ls", "-q").stdout.split():
            m("rm", "-f", name)
