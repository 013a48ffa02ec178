"""root_disk(): the per-image disk cache around rootfs.build_root_disk.

The caching tests stand a fake builder in for vmm.images.rootfs (they test the cache, not
the filesystem); the last test uses the real builder when it exists.
"""
import os
import shutil
import subprocess
import sys
import textwrap
import types
from dataclasses import dataclass

import pytest

import vmm.images as images
from vmm.images.errors import ImageError, ImageNotFound

from support.oci_fixtures import Dir, File, Image, make_layer, write_layout

pytestmark = pytest.mark.usefixtures("msb_home")


def fake_rootfs(calls):
    @dataclass
    class LayerSource:
        path: str
        media_type: str

    def build_root_disk(layers, out_path, *, progress=None, **limits):
        calls.append([(l.path, l.media_type) for l in layers])
        with open(out_path, "wb") as f:
            for l in layers:
                f.write(open(l.path, "rb").read())
        return {"layers": len(layers)}

    mod = types.ModuleType("vmm.images.rootfs")
    mod.LayerSource, mod.build_root_disk = LayerSource, build_root_disk
    return mod


@pytest.fixture
def layout_image(tmp_path):
    layers = [make_layer([Dir("etc"), File("etc/a", b"a")], "gzip"), make_layer([File("b", b"b")], "zstd")]
    write_layout(tmp_path / "layout", [Image(layers)])
    images.import_layout(tmp_path / "layout", "local/disk:1")
    return layers


def test_built_once_and_cached(layout_image, monkeypatch):
    calls = []
    monkeypatch.setitem(sys.modules, "vmm.images.rootfs", fake_rootfs(calls))
    path = images.root_disk("local/disk:1")
    assert path.name.endswith(".erofs") and path.exists()
    assert path.read_bytes() == b"".join(l.blob for l in layout_image)
    assert [mt for _, mt in calls[0]] == [l.media_type for l in layout_image]
    assert images.root_disk("local/disk:1") == path and len(calls) == 1
    assert images.inspect("local/disk:1")["root_disk"] == str(path)
    images.remove("local/disk:1")
    assert not path.exists()
    with pytest.raises(ImageNotFound):
        images.root_disk("local/disk:1")


def test_failed_build_leaves_no_disk(layout_image, monkeypatch, msb_home):
    mod = fake_rootfs([])

    def broken(layers, out_path, *, progress=None, **limits):
        open(out_path, "wb").write(b"half")
        raise ImageError("hostile layer")
    mod.build_root_disk = broken
    monkeypatch.setitem(sys.modules, "vmm.images.rootfs", mod)
    with pytest.raises(ImageError, match="hostile layer"):
        images.root_disk("local/disk:1")
    images_dir = msb_home / "images"
    assert not list((images_dir / "disks").iterdir()) and not list((images_dir / "tmp").iterdir())


BUILD_SCRIPT = textwrap.dedent("""
    import sys, time, types
    from dataclasses import dataclass
    @dataclass
    class LayerSource:
        path: str
        media_type: str
    def build_root_disk(layers, out_path, *, progress=None, **limits):
        with open(sys.argv[1], "a") as log:
            log.write("build\\n")
        time.sleep(0.5)
        open(out_path, "wb").write(b"disk")
        return {}
    mod = types.ModuleType("vmm.images.rootfs")
    mod.LayerSource, mod.build_root_disk = LayerSource, build_root_disk
    sys.modules["vmm.images.rootfs"] = mod
    import vmm.images as images
    print(images.root_disk("local/disk:1"))
""")


def test_two_processes_build_once(layout_image, tmp_path):
    log = tmp_path / "builds.log"
    procs = [subprocess.Popen([sys.executable, "-c", BUILD_SCRIPT, str(log)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, env=dict(os.environ)) for _ in range(2)]
    outs = [p.communicate(timeout=30) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert outs[0][0] == outs[1][0]
    assert log.read_text() == "build\n"


def test_real_builder_makes_an_erofs_disk(layout_image, tmp_path):
    path = images.root_disk("local/disk:1")
    with open(path, "rb") as f:
        f.seek(1024)
        assert f.read(4) == bytes.fromhex("e2e1f5e0")   # EROFS superblock magic
    if not shutil.which("fsck.erofs"):
        return
    subprocess.run(["fsck.erofs", f"--extract={tmp_path / 'x'}", str(path)], check=True,
                   capture_output=True)
    assert (tmp_path / "x" / "etc" / "a").read_bytes() == b"a"
    assert (tmp_path / "x" / "b").read_bytes() == b"b"
