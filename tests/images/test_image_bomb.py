"""Decompression bombs and zeros (issue 12, finding 11): zero blocks are holes in the host
file, unpacking is bounded by an expansion ratio per layer and a total (both settable, the
error names the one hit), and an image whose layers were refused is marked unusable."""
import hashlib
import os
import subprocess
import sys
import tarfile
import types

import pytest

import vmm.images as images
from vmm.images.erofs import BLOCK_SIZE, DataArea
from vmm.images.errors import HostileImage, ImageError, ImageTooLarge
from vmm.images.rootfs import build_root_disk

from support.erofs_reader import ErofsReader, Sparse, Want, check_image
from support.layer_tars import T0, E, write_layer, write_zero_bomb
from support.oci_fixtures import Image, Layer, write_layout

MiB = 1 << 20


def allocated(path):
    return os.stat(path).st_blocks * 512


# -- holes --------------------------------------------------------------------------------------

def test_zero_blocks_become_holes_in_the_host_file(tmp_path):
    path = tmp_path / "area"
    with open(path, "wb") as f:
        area = DataArea(f)
        area.write(b"x" * 100)
        area.write(bytes(3 * BLOCK_SIZE - 100))       # the rest of x's block, then two zero blocks
        area.write(b"y" * BLOCK_SIZE + bytes(64 * BLOCK_SIZE) + b"z")
        first = area.end_run()
        area.write_zeros(256 * BLOCK_SIZE)              # a run that is all hole
        second = area.end_run()
    assert (first, second) == (1, 1 + 3 + 1 + 64 + 1)
    want = (bytes(BLOCK_SIZE) + b"x" * 100 + bytes(3 * BLOCK_SIZE - 100) + b"y" * BLOCK_SIZE
            + bytes(64 * BLOCK_SIZE) + b"z" + bytes(BLOCK_SIZE - 1) + bytes(256 * BLOCK_SIZE))
    assert path.read_bytes() == want
    # Blocks 0, x, y, z and the last one (written so the file really ends there): 5 of 326.
    assert allocated(path) <= 8 * BLOCK_SIZE, allocated(path)


def test_a_gigabyte_of_zeros_costs_no_disk(tmp_path):
    """Without any ratio limit a 1 GiB gzip bomb makes an image of a few blocks: its file
    is all holes (chunk-based, nothing mapped), on the host as in the image."""
    bomb = write_zero_bomb(tmp_path, "bomb", 1 << 30)
    out = tmp_path / "root.erofs"
    stats = build_root_disk([bomb], str(out), max_ratio=0)
    assert stats["file_bytes"] == 1 << 30
    assert stats["image_bytes"] == out.stat().st_size < 64 * 1024, stats
    assert stats["allocated_bytes"] == allocated(out) <= out.stat().st_size + BLOCK_SIZE
    reader = ErofsReader(out)
    node = reader.walk()[b"/zeros"]
    assert node.size == 1 << 30 and set(reader.chunk_table(node)) == {None}
    assert reader.pread(node, (1 << 30) - 10, 10) == bytes(10)
    subprocess.run(["fsck.erofs", str(out)], check=True, capture_output=True)


def test_large_sparse_looking_file_stays_sparse_and_reads_back(tmp_path):
    """A legitimate 48 MiB file that is mostly zeros (a plain tar member, not a GNU sparse
    one): its MiB chunks of zeros are holes in the image, the zeros around its data are
    holes in the host file, and everything reads back (our reader, fsck.erofs, and the
    kernel when it can loop-mount)."""
    size = 48 * MiB + 123
    islands = {0: os.urandom(5000), 20 * MiB + 77: os.urandom(BLOCK_SIZE * 3),
               size - 9000: os.urandom(9000)}
    data = bytearray(size)
    for offset, piece in islands.items():
        data[offset:offset + len(piece)] = piece
    # /var/end: its last chunk is a block of zeros and 100 bytes after it: that block is
    # filled back in, as a chunk's blocks must be contiguous.
    end = {0: b"h" * 10, 3 * MiB + BLOCK_SIZE: b"t" * 100}
    layer = write_layer(tmp_path, "l", [E("var/db", data=bytes(data)), E("small", data=b"s"),
                                        E("var/end", data=b"h" * 10 + bytes(3 * MiB + BLOCK_SIZE - 10)
                                          + b"t" * 100)],
                        "gzip")
    out = tmp_path / "root.erofs"
    stats = build_root_disk([layer], str(out))
    assert stats["image_bytes"] == out.stat().st_size < 5 * MiB, stats
    assert allocated(out) < 1 * MiB, stats
    want = {b"/": Want("dir", 0o755), b"/var": Want("dir", 0o755),
            b"/var/db": Want("file", data=Sparse(size, islands), mtime=(T0, 0)),
            b"/var/end": Want("file", data=Sparse(3 * MiB + BLOCK_SIZE + 100, end), mtime=(T0, 0)),
            b"/small": Want("file", data=b"s", mtime=(T0, 0))}
    check_image(out, want, tmp_path)   # reader, fsck.erofs, and the kernel where it can mount


# -- limits -------------------------------------------------------------------------------------

@pytest.mark.parametrize("compression", ["gzip", "zstd"])
def test_expansion_ratio_stops_the_decompressor_early(tmp_path, compression):
    bomb = write_zero_bomb(tmp_path, "bomb", 1 << 30, compression)
    blob = os.path.getsize(bomb.path)
    read = []
    out = tmp_path / "root.erofs"
    with pytest.raises(ImageTooLarge) as caught:
        build_root_disk([bomb], str(out), max_ratio=10, ratio_floor=8 * MiB,
                        progress=lambda done, total: read.append(done))
    text = str(caught.value)
    assert "layer 1" in text and "expansion ratio" in text and "MSB_IMAGE_MAX_RATIO" in text
    assert str(max(8 * MiB, 10 * blob)) in text
    assert not out.exists()
    # Refused after unpacking about 10x, not after the whole GiB: most of the blob unread.
    assert read[-1] < blob // 4 or read[-1] < 2 * MiB, (read[-1], blob)


def test_ratio_floor_lets_small_compressible_layers_through(tmp_path):
    layer = write_layer(tmp_path, "l", [E("zeros", data=bytes(32 * MiB))], "gzip")
    assert os.path.getsize(layer.path) * 100 < 32 * MiB        # far over the ratio...
    build_root_disk([layer], str(tmp_path / "o"))                # ...but under the floor


def test_total_limit_is_named(tmp_path):
    bomb = write_zero_bomb(tmp_path, "bomb", 64 * MiB)
    with pytest.raises(ImageTooLarge, match="max_bytes.*MSB_IMAGE_MAX_UNPACKED"):
        build_root_disk([bomb], str(tmp_path / "o"), max_bytes=16 * MiB, max_ratio=0)


# -- through the store: root_disk(), the environment, and the unusable mark ----------------------

def bomb_image(tmp_path, size, name="local/bomb:1"):
    bomb = write_zero_bomb(tmp_path, "bomb-layer", size)
    raw = hashlib.sha256()
    info = tarfile.TarInfo("zeros")
    info.size, info.mtime, info.mode = size, 1_700_000_000, 0o644
    raw.update(info.tobuf(format=tarfile.GNU_FORMAT))
    zeros = bytes(16 * MiB)
    left = size + 1024
    while left:
        raw.update(zeros[:min(left, len(zeros))])
        left -= min(left, len(zeros))
    with open(bomb.path, "rb") as f:
        layer = Layer(f.read(), "sha256:" + raw.hexdigest(), bomb.media_type)
    write_layout(tmp_path / "layout", [Image([layer])])
    images.import_layout(tmp_path / "layout", name)
    return name


def msb(*args):
    p = subprocess.run([sys.executable, "-m", "vmm.cli", *args], capture_output=True, text=True,
                       env=dict(os.environ), timeout=60)
    assert "Traceback" not in p.stderr, p.stderr
    return p


def no_build_allowed(monkeypatch):
    """Stand in a builder that fails the test: the refusal must come from the mark."""
    mod = types.ModuleType("vmm.images.rootfs")

    def build_root_disk(*args, **kwargs):
        pytest.fail("the root disk was built again")
    mod.build_root_disk = build_root_disk
    mod.LayerSource = lambda **kw: kw
    monkeypatch.setitem(sys.modules, "vmm.images.rootfs", mod)


def test_limits_from_the_environment_and_the_unusable_mark(tmp_path, msb_home, monkeypatch):
    ref = bomb_image(tmp_path, 256 * MiB)
    monkeypatch.setenv("MSB_IMAGE_MAX_UNPACKED", "64M")
    monkeypatch.setenv("MSB_IMAGE_MAX_RATIO", "0")
    with pytest.raises(ImageTooLarge, match="more than 67108864 bytes.*MSB_IMAGE_MAX_UNPACKED"):
        images.root_disk(ref)
    [row] = images.list()
    assert row["usable"] is False and "MSB_IMAGE_MAX_UNPACKED" in row["unusable_reason"]
    ls = msb("image", "ls")
    assert ls.returncode == 0 and "unusable: " in ls.stdout and "67108864" in ls.stdout
    inspect = msb("image", "inspect", ref)
    assert inspect.returncode == 0 and "Status:" in inspect.stdout and "unusable" in inspect.stdout
    # The next attempt says why at once, without unpacking anything.
    with monkeypatch.context() as m:
        no_build_allowed(m)
        with pytest.raises(ImageTooLarge, match=f"image docker.io/{ref} is unusable.*67108864"):
            images.root_disk(ref)
        with pytest.raises(ImageTooLarge, match="unusable"):
            images.root_disk(ref, max_unpacked=32 * MiB)          # a lower limit: still no
    run = msb("run", ref, "--", "true")         # fails before any VM: no engine needed
    assert run.returncode == 1 and run.stderr.count("\n") == 1, run.stderr
    assert run.stderr.startswith(f"error: image docker.io/{ref} is unusable: ")
    assert "MSB_IMAGE_MAX_UNPACKED" in run.stderr
    # A raised limit (argument or environment) is worth another try; it builds, sparsely.
    disk = images.root_disk(ref, max_unpacked=1 << 30)
    assert images.list()[0]["usable"] is True
    assert disk.stat().st_size < 64 * 1024 and allocated(disk) < 64 * 1024
    assert "ok" == msb("image", "ls").stdout.splitlines()[1].split()[-1]


def test_ratio_from_the_environment(tmp_path, msb_home, monkeypatch):
    """MSB_IMAGE_MAX_RATIO reaches the build (the floor is lowered through the API: this
    256 MiB bomb is under the default 1 GiB one)."""
    from vmm.images import limits
    from vmm.images.disk import root_disk
    from vmm.images.store import Store
    ref = bomb_image(tmp_path, 256 * MiB)
    monkeypatch.setenv("MSB_IMAGE_MAX_RATIO", "3")
    store = Store()
    try:
        with pytest.raises(ImageTooLarge, match="expansion ratio: 3 times"):
            root_disk(store, store.lookup("docker.io/" + ref), limits=limits.current(ratio_floor=MiB))
    finally:
        store.close()
    assert images.root_disk(ref).exists()     # the default floor lets 256 MiB through


def test_bad_limit_values_are_named(tmp_path, msb_home, monkeypatch):
    ref = bomb_image(tmp_path, 1 * MiB)
    for name, value in (("MSB_IMAGE_MAX_UNPACKED", "lots"), ("MSB_IMAGE_MAX_RATIO", "-2")):
        with monkeypatch.context() as m:
            m.setenv(name, value)
            with pytest.raises(ImageError, match=f"{name}: bad"):
                images.root_disk(ref)
    assert images.list()[0]["usable"] is True       # a bad setting is not the image's fault
    assert images.root_disk(ref, max_unpacked=2 * MiB).exists()


def test_hostile_layers_mark_the_image_until_it_is_stored_again(tmp_path, msb_home, monkeypatch):
    evil = write_layer(tmp_path, "evil", [E("a/../../etc/passwd", data=b"x")], "gzip")
    with open(evil.path, "rb") as f:
        blob = f.read()
    write_layout(tmp_path / "layout", [Image([Layer(blob, "sha256:" + "0" * 64, evil.media_type)])])
    images.import_layout(tmp_path / "layout", "local/evil:1")
    with pytest.raises(HostileImage, match=r"'\.\.'"):
        images.root_disk("local/evil:1")
    assert "'..'" in images.list()[0]["unusable_reason"]
    with monkeypatch.context() as m:
        no_build_allowed(m)
        with pytest.raises(HostileImage, match="unusable.*msb image rm"):
            images.root_disk("local/evil:1", max_unpacked=1 << 40)   # no limit helps here
    images.import_layout(tmp_path / "layout", "local/evil:1")       # stored again: retried
    assert images.list()[0]["usable"] is True
    with pytest.raises(HostileImage, match=r"contains '\.\.'"):
        images.root_disk("local/evil:1")
    images.remove("local/evil:1")
    assert images.list() == []


def test_a_store_from_before_the_marks_gets_their_table(tmp_path, msb_home):
    import sqlite3
    from vmm.images.store import Store
    bomb_image(tmp_path, 1 * MiB)
    Store().close()
    db = sqlite3.connect(msb_home / "images" / "index.db")
    db.execute("DROP TABLE image_notes")
    db.commit()
    db.close()
    [row] = images.list()                      # opened again: the table is back
    assert row["usable"] is True and row["warnings"] == []
    with pytest.raises(ImageTooLarge):
        images.root_disk(row["reference"], max_unpacked=MiB // 2, max_ratio=0)
    assert images.list()[0]["usable"] is False
