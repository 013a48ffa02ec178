"""Named volumes in `msb run|create -v NAME:/path[:ro]`: parsed and kept in the config,
created on first use (read-write only), mounted by the supervisor, shown by `msb
inspect`, and what one sandbox writes is there for the next. Host paths (`-v ./src:/app`)
are in test_msb_hostdir.py.

The fast tests need no VM; the slow one boots two sandboxes on the busybox test image.
"""
import json
import subprocess
import sys

import pytest

from vmm.errors import ConfigError, VmmError
from vmm.home import Home
from vmm.sandbox import manager
from vmm.sandbox.config import SandboxConfig, VolumeSpec
from vmm.sandbox.volume_store import VolumeStore

from support.oci_fixtures import LAYER_MT, Image, Layer, sha256, write_layout
from support.sandbox_image import busybox_layer, have_busybox
from support.test_engine import engine_marks
from test_msb_lifecycle import IMAGE, PATH, msb_in   # the same image and CLI helper


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("MSB_HOME", str(tmp_path / "home"))
    return Home(tmp_path / "home")


def msb(*args):
    return subprocess.run([sys.executable, "-m", "vmm.cli", *args], capture_output=True,
                          text=True, timeout=60, stdin=subprocess.DEVNULL)


# --- fast: no VM ----------------------------------------------------------------------------
def test_named_and_host_volumes_parse_and_round_trip(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = SandboxConfig.build(volumes=["data:/data", "ref:/ref/:ro", "./src:/app"])
    assert cfg.volumes == (VolumeSpec("data", "/data", "named"),
                           VolumeSpec("ref", "/ref", "named", True),   # trailing / dropped
                           VolumeSpec(f"{tmp_path}/src", "/app", "host"))   # made absolute
    assert SandboxConfig.from_json(cfg.to_json()) == cfg
    assert [str(v) for v in cfg.volumes] == ["data:/data", "ref:/ref:ro", f"{tmp_path}/src:/app"]


@pytest.mark.parametrize("volumes,match", [
    (["data:/proc/x"], "under /proc"),
    (["data:/"], "cannot be mounted at /"),
    (["data:/a/../b"], "'..'"),
    (["data:/d", "other:/d/"], "both mounted at /d"),
    (["da ta:/d"], "bad volume name"),
    (["data:/d:rx"], "holds ':'"),
])
def test_bad_volumes_are_config_errors(volumes, match):
    with pytest.raises(ConfigError, match=match):
        SandboxConfig.build(volumes=volumes)


def test_tmpfs_and_volume_at_one_path_refused():
    with pytest.raises(ConfigError, match="both mounted"):
        SandboxConfig.build(volumes=["data:/scratch"], tmpfs=["/scratch"])




def test_missing_volume_created_on_first_use_rw_only(home, capfd):
    store = VolumeStore(home)
    assert manager.ensure_volumes(SandboxConfig.build(volumes=["data:/data"])) == ["data"]
    assert store.exists("data") and "Created volume data" in capfd.readouterr().err
    # existing: left as it is, nothing said
    assert manager.ensure_volumes(SandboxConfig.build(volumes=["data:/data:ro"]),
                                  quiet=False) == []
    assert capfd.readouterr().err == ""
    with pytest.raises(VmmError, match="'ghost' not found: a read-only mount"):
        manager.ensure_volumes(SandboxConfig.build(volumes=["ghost:/g:ro"]))
    assert not store.exists("ghost")


# --- slow: real guests ----------------------------------------------------------------------
def real_guest(fn):
    """Marks of a test that boots the busybox image with msb (as test_msb_lifecycle's)."""
    for mark in (pytest.mark.slow, *engine_marks(),
                 pytest.mark.skipif(not have_busybox(), reason="no /bin/busybox (busybox-static)")):
        fn = mark(fn)
    return fn


@real_guest
def test_volume_outlives_the_sandbox_and_ro_is_enforced(kernel_path, tmp_path):
    root = make_home(tmp_path)
    m = lambda *a, **k: msb_in(root, *a, **k)   # noqa: E731
    try:
        r = m("run", "--name", "v1", "-d", "-v", "data:/data", IMAGE)
        assert r.returncode == 0, r.stderr
        assert "Created volume data" in r.stderr
        assert VolumeStore(Home(root)).info("data")["in_use"] == "rw"
        r = m("exec", "v1", "--", "sh", "-c", "echo kept > /data/f; grep ' /data ' /proc/mounts")
        assert r.returncode == 0 and " rw" in r.stdout, (r.stdout, r.stderr)
        assert "data -> /data (rw, named volume)" in m("inspect", "v1").stdout
        info = json.loads(m("inspect", "v1", "--format", "json").stdout)
        assert info["config"]["volumes"] == [{"source": "data", "dest": "/data",
                                              "kind": "named", "read_only": False}]
        r = m("run", "-q", "-v", "data:/data", IMAGE, "--", "true")   # one rw user at a time
        assert r.returncode == 1 and "in use by another sandbox" in r.stderr, r.stderr
        r = m("volume", "rm", "data")   # attached: refused
        assert r.returncode == 1 and "in use" in r.stderr
        assert m("rm", "-f", "v1").returncode == 0
        # a new sandbox, read-only: sees the file, cannot write
        r = m("run", "-q", "-v", "data:/data:ro", IMAGE, "--", "sh", "-c",
              "cat /data/f; touch /data/g")
        assert r.stdout == "kept\n", r.stderr
        assert r.returncode == 1 and "Read-only file system" in r.stderr
        r = m("run", "-q", "-v", "ghost:/g:ro", IMAGE, "--", "true")
        assert r.returncode == 1 and "'ghost' not found" in r.stderr
        assert m("volume", "rm", "data").returncode == 0
    finally:
        for name in m("ls", "-q").stdout.split():
            m("rm", "-f", name)


def make_home(root):
    """An MSB_HOME of its own with the busybox test image loaded, as test_msb_lifecycle's."""
    work = root / "image"
    work.mkdir(parents=True)
    raw = busybox_layer(work / "layer.tar").read_bytes()
    write_layout(work / "layout", [Image(layers=[Layer(raw, sha256(raw), LAYER_MT["none"])],
                                         env=[PATH])])
    r = msb_in(root / "home", "image", "load", "-i", str(work / "layout"), "-t", IMAGE)
    assert r.returncode == 0, r.stderr
    return root / "home"
