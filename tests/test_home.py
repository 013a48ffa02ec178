"""MSB_HOME and its layout (vmm/home.py), and the image store's paths built on it."""
from pathlib import Path

import pytest

from vmm.errors import ConfigError
from vmm.home import Home, msb_home
from vmm.images.paths import StorePaths


def test_msb_home_defaults_to_dot_microsandbox(monkeypatch):
    monkeypatch.delenv("MSB_HOME", raising=False)
    assert msb_home() == Path.home() / ".microsandbox"
    assert Home().root == Path.home() / ".microsandbox"


def test_msb_home_is_read_when_used(tmp_path, monkeypatch):
    monkeypatch.setenv("MSB_HOME", str(tmp_path))
    assert Home().root == tmp_path
    assert Home(tmp_path / "other").root == tmp_path / "other"


def test_layout(tmp_path):
    """The names on disk: changing one strands every existing user's images."""
    h = Home(tmp_path)
    rel = {k: str(v.relative_to(tmp_path)) for k, v in vars(h).items() if k != "root"}
    assert rel == {"images": "images", "image_blobs": "images/blobs", "image_tmp": "images/tmp",
                   "image_locks": "images/locks", "image_disks": "images/disks",
                   "image_index": "images/index.db", "sandboxes": "sandboxes",
                   "database": "msb.db",
                   "volumes": "volumes"}
    assert h.sandbox("astro-demo") == tmp_path / "sandboxes" / "astro-demo"


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "../escape", "nul\0"])
def test_a_sandbox_name_cannot_leave_sandboxes(tmp_path, name):
    with pytest.raises(ConfigError, match="sandbox name"):
        Home(tmp_path).sandbox(name)


def test_store_paths_sit_in_the_home_layout(tmp_path):
    p = StorePaths(tmp_path)
    assert (p.root, p.blobs, p.tmp, p.locks, p.disks, p.db) == (
        tmp_path / "images", tmp_path / "images/blobs", tmp_path / "images/tmp",
        tmp_path / "images/locks", tmp_path / "images/disks", tmp_path / "images/index.db")
    digest = "sha256:" + "ab" * 32
    assert p.blob(digest) == tmp_path / "images/blobs/sha256" / ("ab" * 32)
    assert p.partial(digest) == tmp_path / "images/tmp" / f"sha256-{'ab' * 32}.partial"
    assert p.disk(digest) == tmp_path / "images/disks" / f"sha256-{'ab' * 32}.erofs"
    assert p.lock("gc") == tmp_path / "images/locks/gc.lock"
    assert StorePaths(str(tmp_path)).root == tmp_path / "images"
