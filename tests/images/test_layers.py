"""Layer semantics on the in-memory tree (layers.py), stream handling and the zstd frame
check (layerstream.py)."""
import io
import os
import stat
import tarfile

import pytest
import zstandard

from support.layer_tars import T0, E, compress, tar_bytes, write_layer  # noqa: E402

from vmm.images import layers as L  # noqa: E402
from vmm.images import layerstream as S  # noqa: E402
from vmm.images.erofs import BLOCK_SIZE, DataArea  # noqa: E402
from vmm.images.errors import HostileImage, ImageError, ImageTooLarge  # noqa: E402
from vmm.images.fstree import Dir, File, Special, Symlink  # noqa: E402


class Built:
    def __init__(self):
        self.image = io.BytesIO()
        self.area = DataArea(self.image)
        self.root = Dir(stat.S_IFDIR | 0o755)
        self.applier = L.LayerApplier(self.root, self.area, L.Budget(1 << 30, 10000))

    def apply(self, tmp_path, entries, compression="none", name=None):
        layer = write_layer(tmp_path, name or f"layer{len(os.listdir(tmp_path))}", entries,
                            compression)
        index = getattr(self, "_index", 0) + 1
        self._index = index
        stream = S.LayerStream(layer.path, layer.media_type, f"layer {index}", lambda n: None)
        try:
            self.applier.apply(stream, index)
        finally:
            stream.close()
        return self

    def get(self, path):
        node = self.root
        for part in path.strip("/").split("/"):
            if part:
                node = node.children[os.fsencode(part)]
        return node

    def names(self, path="/"):
        return sorted(n.decode() for n in self.get(path).children)

    def data(self, path):
        node = self.get(path)
        assert node.chunk_map is None
        self.image.flush()
        raw = self.image.getvalue()
        full = node.size - len(node.tail)
        start = node.blkaddr * BLOCK_SIZE
        return raw[start:start + full] + node.tail


def test_whiteouts_delete_lower_entries_and_whole_directories(tmp_path):
    b = Built().apply(tmp_path, [E("a/x", data=b"1"), E("a/y", data=b"2"), E("d/e/f", data=b"3")])
    b.apply(tmp_path, [E("a/.wh.x"), E(".wh.d"), E("a/.wh.missing"), E("nothere/.wh.z")])
    assert b.names() == ["a"]
    assert b.names("a") == ["y"]
    assert b.applier.stats["whiteouts"] == 4


def test_opaque_dir_hides_lower_contents_keeps_this_layers(tmp_path):
    b = Built().apply(tmp_path, [E("o/old1", data=b"1"), E("o/sub/old2", data=b"2"),
                                 E("o/keep", "dir")])
    b.apply(tmp_path, [E("o", "dir", mode=0o700), E("o/early", data=b"e"),
                       E("o/sub", "dir"), E("o/.wh..wh..opq"), E("o/late", data=b"l")])
    assert b.names("o") == ["early", "late", "sub"]
    assert b.names("o/sub") == []          # lower contents under a re-declared subdir go too
    assert stat.S_IMODE(b.get("o").mode) == 0o700


def test_aufs_metadata_whiteouts_are_ignored(tmp_path):
    b = Built().apply(tmp_path, [E("a", data=b"a"), E(".wh..wh.plnk", "dir"),
                                 E(".wh..wh.aufs")])
    assert b.names() == ["a"]


def test_directory_over_directory_keeps_children_and_takes_new_metadata(tmp_path):
    b = Built().apply(tmp_path, [E("d", "dir", xattrs={"user.a": b"1"}), E("d/c", data=b"c")])
    b.apply(tmp_path, [E("d", "dir", mode=0o711, uid=5, mtime=T0 + 9,
                         xattrs={"user.b": b"2"})])
    d = b.get("d")
    assert b.names("d") == ["c"]
    assert (stat.S_IMODE(d.mode), d.uid, d.mtime) == (0o711, 5, T0 + 9)
    assert d.xattrs == {b"user.b": b"2"}       # the upper directory's own, as overlayfs shows


def test_entries_replace_whatever_had_their_name(tmp_path):
    b = Built().apply(tmp_path, [E("f", data=b"f"), E("d/x", data=b"x"),
                                 E("s", "symlink", link="d")])
    b.apply(tmp_path, [E("f", "dir"), E("d", data=b"now file"), E("s", "fifo")])
    assert type(b.get("f")) is Dir and type(b.get("d")) is File
    assert stat.S_ISFIFO(b.get("s").mode)
    assert b.data("d") == b"now file"


def test_hard_links_share_the_inode_and_take_the_link_header_metadata(tmp_path):
    b = Built().apply(tmp_path, [E("a/f", data=b"data", mode=0o600)])
    b.apply(tmp_path, [E("b/g", "hardlink", link="a/f", mode=0o640, uid=7, mtime=T0 + 1),
                       E("c/h", "hardlink", link="/b/g")])
    f, g, h = b.get("a/f"), b.get("b/g"), b.get("c/h")
    assert f is g is h
    assert (stat.S_IMODE(f.mode), f.uid, f.mtime) == (0o644, 0, T0)   # the last header wins
    b.apply(tmp_path, [E("a/.wh.f")])
    assert b.get("b/g") is g      # whiteout of one name leaves the others


def test_hard_link_to_symlink_shares_the_symlink_and_is_never_followed(tmp_path):
    b = Built().apply(tmp_path, [E("s", "symlink", link="/etc/shadow"),
                                 E("h", "hardlink", link="s", mode=0o600)])
    assert b.get("h") is b.get("s")
    assert stat.S_IMODE(b.get("s").mode) == 0o777


def test_parent_symlinks_resolve_inside_the_tree(tmp_path):
    b = Built().apply(tmp_path, [
        E("usr/lib", "dir"), E("lib", "symlink", link="usr/lib"),
        E("bin", "symlink", link="/usr/bin"),
        E("usr/share/x", "dir"), E("usr/share/up", "symlink", link="../../lib"),
        E("chain", "symlink", link="bin"),
    ])
    b.apply(tmp_path, [E("lib/a.so", data=b"a"), E("bin/sh", data=b"sh"),
                       E("usr/share/up/b.so", data=b"b"), E("chain/ls", data=b"ls"),
                       E("lib/.wh.a.so")])
    assert b.names("usr/lib") == ["b.so"]
    assert b.names("usr/bin") == ["ls", "sh"]
    assert type(b.get("lib")) is Symlink and type(b.get("chain")) is Symlink


def test_implied_directories_are_root_owned_0755(tmp_path):
    b = Built().apply(tmp_path, [E("a/b/c/file", data=b"x", uid=3, mtime=T0 + 3)])
    for path in ("a", "a/b", "a/b/c"):
        node = b.get(path)
        assert (node.mode, node.uid, node.mtime) == (stat.S_IFDIR | 0o755, 0, T0 + 3)


def test_root_entry_sets_root_metadata(tmp_path):
    b = Built().apply(tmp_path, [E("./", "dir", mode=0o700, uid=0, mtime=T0 + 4),
                                 E("/", "dir", mode=0o751)])
    assert stat.S_IMODE(b.root.mode) == 0o751


def test_devices_fifos_and_metadata(tmp_path):
    b = Built().apply(tmp_path, [
        E("c", "chr", dev=(4095, 0xFFFFF), mode=0o620, gid=5),
        E("k", "blk", dev=(8, 1)),
        E("p", "fifo", mode=0o622),
        E("x", data=b"", uid=0xFFFFFFFE, gid=70000, pax={"mtime": "-1.25"}),
    ])
    c = b.get("c")
    assert type(c) is Special and c.rdev == (4095, 0xFFFFF) and c.gid == 5
    assert stat.S_ISBLK(b.get("k").mode) and b.get("k").rdev == (8, 1)
    assert b.get("p").mode == stat.S_IFIFO | 0o622
    x = b.get("x")
    assert (x.uid, x.gid, x.mtime, x.mtime_nsec) == (0xFFFFFFFE, 70000, -2, 750_000_000)


def test_small_files_and_tails_wait_inline_full_blocks_go_to_the_data_area(tmp_path):
    sizes = {"small": 100, "half": 2048, "over": 2049, "multi": 2 * BLOCK_SIZE + 10,
             "exact": BLOCK_SIZE, "empty": 0}
    b = Built().apply(tmp_path, [E(n, data=os.urandom(s)) for n, s in sizes.items()])
    tails = {n: len(b.get(n).tail) for n in sizes}
    assert tails == {"small": 100, "half": 2048, "over": 0, "multi": 10, "exact": 0, "empty": 0}
    assert b.area.next_block == 1 + 1 + 2 + 1     # block 0; over; multi's 2 full; exact


def test_data_is_copied_exactly(tmp_path):
    payload = os.urandom(3 << 20) + b"tail"
    b = Built().apply(tmp_path, [E("f", data=payload), E("g", data=b"g" * 5000)], "gzip")
    assert b.data("f") == payload and b.data("g") == b"g" * 5000


def test_pax_sparse_layout_keeps_holes(tmp_path):
    pieces = [(0, b"a" * 10), (BLOCK_SIZE * 10 + 5, b"b" * 5000), (1 << 30, b"c")]
    size = (1 << 30) + 1
    data = b"".join(chunk for _, chunk in pieces)
    info = tarfile.TarInfo("sp")
    info.size = len(data)
    info.pax_headers = {"GNU.sparse.map": ",".join(f"{o},{len(c)}" for o, c in pieces),
                        "GNU.sparse.size": str(size), "GNU.sparse.numblocks": "3"}
    b = Built().apply(tmp_path, [(info, data)])
    node = b.get("sp")
    assert node.size == size and node.chunk_map is not None
    mapped = [i for i, a in enumerate(node.chunk_map) if a != File.CHUNK_HOLE]
    chunk = BLOCK_SIZE << node.chunkbits
    assert mapped == sorted({0, (BLOCK_SIZE * 10 + 5) // chunk,
                             (BLOCK_SIZE * 10 + 5005) // chunk, (1 << 30) // chunk})
    raw = b.image.getvalue()
    addr = node.chunk_map[(BLOCK_SIZE * 10 + 5) // chunk] * BLOCK_SIZE
    within = (BLOCK_SIZE * 10 + 5) % chunk
    assert raw[addr + within:addr + within + 5000] == b"b" * 5000
    assert raw[addr:addr + within] == bytes(within)


@pytest.mark.parametrize("sparse_map, error", [
    ("0,10,5,10", HostileImage),            # overlapping regions
    ("100,10,0,10", HostileImage),          # out of order
    ("0,10,990,20", HostileImage),          # past the end
])
def test_bad_sparse_maps_are_refused(tmp_path, sparse_map, error):
    info = tarfile.TarInfo("sp")
    info.size = 20
    info.pax_headers = {"GNU.sparse.map": sparse_map, "GNU.sparse.size": "1000"}
    with pytest.raises(error, match="sparse"):
        Built().apply(tmp_path, [(info, b"x" * 20)])


def test_absurd_apparent_size_is_refused(tmp_path):
    info = tarfile.TarInfo("sp")
    info.size = 1
    info.pax_headers = {"GNU.sparse.map": "0,1", "GNU.sparse.size": str(1 << 60)}
    with pytest.raises(ImageTooLarge):
        Built().apply(tmp_path, [(info, b"x")])


def test_sparse_zero_fill_counts_against_the_limit(tmp_path):
    # 64 one-byte regions in a huge file: chunks grow, and each chunk is written whole.
    size = 1 << 43
    regions = [(i * (size // 64), 1) for i in range(64)]
    info = tarfile.TarInfo("sp")
    info.size = 64
    info.pax_headers = {"GNU.sparse.map": ",".join(f"{o},{n}" for o, n in regions),
                        "GNU.sparse.size": str(size)}
    b = Built()
    b.applier.budget.max_bytes = 64 << 20
    with pytest.raises(ImageTooLarge, match="max_bytes"):
        b.apply(tmp_path, [(info, b"x" * 64)])


def test_huge_pax_header_is_refused_before_it_is_read(tmp_path):
    info = tarfile.TarInfo("x")
    info.pax_headers = {"comment": "c" * (9 << 20)}
    with pytest.raises(HostileImage, match="header"):
        Built().apply(tmp_path, [(info, b"")], "gzip")


def test_names_longer_than_255_bytes_are_refused(tmp_path):
    with pytest.raises(ImageError, match="255"):
        Built().apply(tmp_path, [E("d/" + "x" * 256, data=b"x")])


def test_bad_symlink_targets_are_refused(tmp_path):
    with pytest.raises(ImageError, match="symlink target"):
        Built().apply(tmp_path, [E("s", "symlink", link="")])
    with pytest.raises(ImageError, match="symlink target"):
        Built().apply(tmp_path, [E("s", "symlink", link="x" * 4096)])


def test_unsupported_entry_types_are_refused(tmp_path):
    info = tarfile.TarInfo("v")
    info.type = b"V"
    with pytest.raises(ImageError, match="entry type"):
        Built().apply(tmp_path, [(info, b"")])


def test_hardlink_to_missing_or_whited_out_target_is_refused(tmp_path):
    b = Built().apply(tmp_path, [E("f", data=b"f")])
    b.apply(tmp_path, [E(".wh.f")])
    with pytest.raises(ImageError, match="does not exist"):
        b.apply(tmp_path, [E("h", "hardlink", link="f")])


def test_tar_without_end_marker_is_accepted(tmp_path):
    raw = tar_bytes([E("a", data=b"a")])
    trimmed = raw[:512 + 512]       # header + data block, no zero blocks
    path = tmp_path / "l"
    path.write_bytes(trimmed)
    b = Built()
    stream = S.LayerStream(str(path), "", "layer 1", lambda n: None)
    b.applier.apply(stream, 1)
    assert b.names() == ["a"]


# -- media types and the zstd frame walker ---------------------------------------------------

@pytest.mark.parametrize("media_type, compression", [
    ("application/vnd.oci.image.layer.v1.tar", "none"),
    ("application/vnd.oci.image.layer.v1.tar+gzip", "gzip"),
    ("application/vnd.oci.image.layer.v1.tar+zstd", "zstd"),
    ("application/vnd.oci.image.layer.nondistributable.v1.tar+gzip", "gzip"),
    ("application/vnd.docker.image.rootfs.diff.tar.gzip", "gzip"),
    ("application/vnd.docker.image.rootfs.foreign.diff.tar.gzip", "gzip"),
    ("", None),
])
def test_media_types(media_type, compression):
    assert S.media_compression(media_type) == compression


@pytest.mark.parametrize("media_type", ["application/vnd.oci.image.config.v1+json",
                                        "application/vnd.oci.image.layer.v1.tar+bzip2",
                                        "text/plain"])
def test_non_layer_media_types_are_refused(media_type):
    with pytest.raises(ImageError, match="media type"):
        S.media_compression(media_type)


def _zstd_stream():
    return b"".join(_zstd_frames())


def _zstd_frames():
    return [zstandard.ZstdCompressor(level=1, write_checksum=True).compress(os.urandom(300000)),
              zstandard.ZstdCompressor(level=1).compress(b"z" * 100000),
              b"\x50\x2a\x4d\x18" + (5).to_bytes(4, "little") + b"skip!",
              zstandard.ZstdCompressor(level=3, write_content_size=False).compress(b"")]


def _frame_ends():
    ends, pos = set(), 0
    for frame in _zstd_frames():
        pos += len(frame)
        ends.add(pos)
    return ends


def test_zstd_walker_accepts_whole_streams_fed_in_any_pieces():
    data = _zstd_stream()
    for piece in (1, 7, 4096, len(data)):
        walker = S.ZstdFrames()
        for i in range(0, len(data), piece):
            walker.feed(data[i:i + piece])
        assert walker.complete() and walker.frames == 3


def test_zstd_walker_notices_every_truncation():
    data = _zstd_stream()
    ends = _frame_ends()   # a cut exactly between frames leaves whole frames: undetectable
    for cut in list(range(0, 40)) + list(range(len(data) - 60, len(data))):
        walker = S.ZstdFrames()
        walker.feed(data[:cut])
        assert walker.complete() == (cut in ends and cut > 0), cut


def test_zstd_walker_refuses_trailing_garbage():
    walker = S.ZstdFrames()
    with pytest.raises(ValueError):
        walker.feed(_zstd_stream() + b"garbage")


def test_truncated_zstd_layer_names_the_layer(tmp_path):
    raw = compress(tar_bytes([E("a", data=os.urandom(10000))]), "zstd")
    for cut in (len(raw) - 1, len(raw) - 4, len(raw) // 2):
        path = tmp_path / "l"
        path.write_bytes(raw[:cut])
        stream = S.LayerStream(str(path), "", "layer 3 (abc)", lambda n: None)
        with pytest.raises(ImageError, match=r"layer 3 \(abc\)"):
            Built().applier.apply(stream, 3)


def test_opaque_keeps_directories_this_layer_only_implies(tmp_path):
    b = Built().apply(tmp_path, [E("o/sub/old", data=b"1"), E("o/gone", data=b"2")])
    b.apply(tmp_path, [E("o/.wh..wh..opq"), E("o/sub/new", data=b"n")])
    assert b.names("o") == ["sub"] and b.names("o/sub") == ["new"]


def test_paths_longer_than_path_max_are_refused(tmp_path):
    with pytest.raises(ImageError, match="4096"):
        Built().apply(tmp_path, [E("/".join(["d" * 200] * 21), data=b"x")])


def test_implied_directories_count_against_max_entries(tmp_path):
    b = Built()
    b.applier.budget.max_entries = 50
    with pytest.raises(ImageTooLarge, match="max_entries"):
        b.apply(tmp_path, [E("/".join(["d"] * 100) + "/f", data=b"x")])


def test_many_huge_sparse_maps_are_refused(tmp_path):
    entries = []
    for i in range(300):
        info = tarfile.TarInfo(f"sp{i}")
        info.size = 1
        info.pax_headers = {"GNU.sparse.map": "0,1", "GNU.sparse.size": str(1 << 30)}
        entries.append((info, b"x"))
    b = Built()
    b.applier.budget.max_maps = 16 << 20       # 1 MiB of map per file: trips at the 17th
    with pytest.raises(ImageTooLarge, match="sparse file maps") as caught:
        b.apply(tmp_path, entries)
    assert "sp16" in str(caught.value)
