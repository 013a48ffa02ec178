"""build_root_disk end to end: layer blobs in, EROFS image out, checked entry by entry with
an independent reader, fsck.erofs (check + extract) and, where root can loop-mount, the
host kernel's own EROFS driver."""
import os
import shutil
import struct
import subprocess
import tarfile

import pytest

from support.erofs_reader import ErofsReader, Sparse, Want, check_image  # noqa: E402
from support.layer_tars import T0, E, tar_bytes, write_layer  # noqa: E402

from vmm.images.errors import HostileImage, ImageError, ImageTooLarge  # noqa: E402
from vmm.images.rootfs import LayerSource, build_root_disk  # noqa: E402

GiB = 1 << 30
CAP_NET_BIND = struct.pack("<IIIII", 0x02000001, 1 << 10, 0, 0, 0)   # vfs_cap_data v2
LONG = "n" * 255


def blob(size, seed):
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += f"{seed}:{counter};".encode()
        counter += 1
    return bytes(out[:size])


def _lower_layer():
    many = [E(f"many/entry-{i:04d}-" + "m" * 30, data=b"%d" % i) for i in range(400)]
    deep = "deep/" + "/".join(f"d{i}" for i in range(60))
    return [
        E("./", "dir", mode=0o755),
        E("etc", "dir"), E("etc/passwd", data=blob(5200, "passwd-1")),
        E("bin", "dir"), E("bin/su", data=b"\x7fELF su", mode=0o4755),
        E("bin/sg", data=b"sg", mode=0o2755, gid=50),
        E("sbin", "dir"), E("sbin/su-hard", "hardlink", link="bin/su", mode=0o4755),
        E("tmp", "dir", mode=0o1777),
        E("dev", "dir"), E("dev/null", "chr", mode=0o666, dev=(1, 3)),
        E("dev/loop0", "blk", mode=0o660, gid=6, dev=(7, 0)),
        E("dev/wide", "chr", dev=(300, 70000)),
        E("run", "dir"), E("run/fifo", "fifo", mode=0o600),
        E("home/user", "dir", uid=1000, gid=1000, mode=0o700),
        E("home/user/notes", data=b"mine", uid=1000, gid=1000, mode=0o600),
        E("data", "dir"),
        E("data/labelled", data=b"x", xattrs={"user.comment": b"hello",
                                              "trusted.t": b"\x00\x01",
                                              "security.capability": CAP_NET_BIND}),
        E("old", "dir"), E("old/a", data=b"a"), E("old/sub", "dir"),
        E("old/sub/b", data=b"b"),
        E("opq", "dir"), E("opq/lower1", data=b"1"), E("opq/sub", "dir"),
        E("opq/sub/lower2", data=b"2"),
        E("link", "symlink", link="bin/su"), E("abslink", "symlink", link="/etc/passwd"),
        E("dangling", "symlink", link="../../nowhere/x"),
        E("empty"),
        E(deep + "/leaf", data=b"deep"),
        *many,
        E("long", "dir"), E("long/" + LONG, data=b"long"),
        E(f"long/{LONG[:-1]}d/f", data=b"in a long-named dir"),
        E("sizes", "dir"), E("sizes/multi", data=blob(3 * 4096 + 100, "m")),
        E("sizes/exact", data=blob(8192, "e")),
        E("sizes/inline-max", data=blob(2048, "i")),
        E("sizes/over-inline", data=blob(2049, "o")),
        E("sizes/ns", data=b"t", pax={"mtime": "1700000000.123456789"}),
        E("replace-me", data=b"file"), E("dir2file", "dir"),
        E("dir2file/child", data=b"c"),
        E("usr", "dir"), E("usr/lib64", "dir"), E("lib64", "symlink", link="usr/lib64"),
        E("lib", "dir"), E("lib/libc.so", data=b"libc"),
    ]


def _upper_layer():
    return [
        E(".wh.old"),                                   # whiteout of a whole directory
        E("opq", "dir", mode=0o750, mtime=T0 + 5),
        E("opq/.wh..wh..opq"), E("opq/new", data=b"new"),
        E("etc/passwd", data=blob(300, "passwd-2"), mtime=T0 + 10),
        E("replace-me", "dir"), E("replace-me/child", data=b"now a dir"),
        E("dir2file", data=b"now a file"),
        E("usr/lib/libc-hl", "hardlink", link="lib/libc.so"),   # into a lower layer
        E("lib64/ld.so", data=b"ld", mode=0o755),              # through an in-tree symlink
        E("/abs/file", data=b"abs"),
        E("etc", "dir", mode=0o750, mtime=T0 + 20),
        E(".wh.never-existed"),
    ]


def _sparse_layer(tmp_path):
    """A 5 GiB + 7 sparse file packed by GNU tar (PAX sparse 1.0): data at 0 and past 4 GiB."""
    src = tmp_path / "sparse-src"
    (src / "var").mkdir(parents=True)
    path = src / "var" / "sparse"
    with open(path, "wb") as f:
        f.write(b"head")
        f.seek(4 * GiB + 12345)
        f.write(b"middle" * 1000)
        f.truncate(5 * GiB + 7)
    os.chmod(path, 0o644)
    os.utime(path, (T0, T0))
    out = tmp_path / "sparse.tar"
    subprocess.run(["tar", "--sparse", "--format=pax", "--owner=0", "--group=0",
                    "--numeric-owner", "-cf", str(out), "-C", str(src), "var/sparse"],
                   check=True)
    return LayerSource(str(out), "application/vnd.oci.image.layer.v1.tar")


def _expected():
    def d(perm=0o755, **kw):
        return Want("dir", perm, mtime=(T0, 0), **kw)

    def f(data, perm=0o644, **kw):
        return Want("file", perm, data=data, mtime=(T0, 0), **kw)

    want = {b"/": d()}
    for name in ("bin", "sbin", "dev", "run", "data", "home", "long", "sizes",
                 "replace-me", "usr", "usr/lib", "usr/lib64", "lib", "abs", "many"):
        want["/" + name] = d()
    want["/tmp"] = d(0o1777)
    want["/etc"] = Want("dir", 0o750, mtime=(T0 + 20, 0))
    want["/etc/passwd"] = Want("file", 0o644, data=blob(300, "passwd-2"), mtime=(T0 + 10, 0))
    want["/bin/su"] = f(b"\x7fELF su", 0o4755, group="su")
    want["/sbin/su-hard"] = f(b"\x7fELF su", 0o4755, group="su")
    want["/bin/sg"] = Want("file", 0o2755, gid=50, data=b"sg", mtime=(T0, 0))
    want["/dev/null"] = Want("chr", 0o666, rdev=(1, 3), mtime=(T0, 0))
    want["/dev/loop0"] = Want("blk", 0o660, gid=6, rdev=(7, 0))
    want["/dev/wide"] = Want("chr", 0o644, rdev=(300, 70000))
    want["/run/fifo"] = Want("fifo", 0o600)
    want["/home/user"] = Want("dir", 0o700, uid=1000, gid=1000)
    want["/home/user/notes"] = Want("file", 0o600, uid=1000, gid=1000, data=b"mine")
    want["/data/labelled"] = f(b"x", xattrs={b"user.comment": b"hello", b"trusted.t": b"\x00\x01",
                                             b"security.capability": CAP_NET_BIND})
    want["/opq"] = Want("dir", 0o750, mtime=(T0 + 5, 0))
    want["/opq/new"] = f(b"new")
    want["/link"] = Want("symlink", 0o777, target=b"bin/su")
    want["/abslink"] = Want("symlink", 0o777, target=b"/etc/passwd")
    want["/dangling"] = Want("symlink", 0o777, target=b"../../nowhere/x")
    want["/empty"] = f(b"", xattrs={})
    path = "/deep"
    want[path] = d()
    for i in range(60):
        path += f"/d{i}"
        want[path] = d()
    want[path + "/leaf"] = f(b"deep")
    for i in range(400):
        want[f"/many/entry-{i:04d}-" + "m" * 30] = f(b"%d" % i)
    want["/long/" + LONG] = f(b"long")
    want[f"/long/{LONG[:-1]}d"] = d()
    want[f"/long/{LONG[:-1]}d/f"] = f(b"in a long-named dir")
    want["/sizes/multi"] = f(blob(3 * 4096 + 100, "m"))
    want["/sizes/exact"] = f(blob(8192, "e"))
    want["/sizes/inline-max"] = f(blob(2048, "i"))
    want["/sizes/over-inline"] = f(blob(2049, "o"))
    want["/sizes/ns"] = Want("file", 0o644, data=b"t", mtime=(T0, 123456789))
    want["/replace-me/child"] = f(b"now a dir")
    want["/dir2file"] = f(b"now a file")
    want["/lib/libc.so"] = f(b"libc", group="libc")
    want["/usr/lib/libc-hl"] = f(b"libc", group="libc")
    want["/usr/lib64/ld.so"] = f(b"ld", 0o755)
    want["/lib64"] = Want("symlink", 0o777, target=b"usr/lib64")
    want["/abs/file"] = f(b"abs")
    return {os.fsencode(k): v for k, v in want.items()}


def test_every_layer_feature_round_trips(tmp_path):
    layers = [write_layer(tmp_path, "l1.tar.gz", _lower_layer(), "gzip"),
              write_layer(tmp_path, "l2.tar.zst", _upper_layer(), "zstd")]
    want = _expected()
    if shutil.which("tar"):
        layers.append(_sparse_layer(tmp_path))
        want[b"/var"] = Want("dir", 0o755, mtime=None)
        want[b"/var/sparse"] = Want("file", 0o644, mtime=(T0, 0), data=Sparse(
            5 * GiB + 7, {0: b"head", 4 * GiB + 12345: b"middle" * 1000}))
    out = tmp_path / "root.erofs"
    stats = build_root_disk(layers, str(out))
    kernel_checked = check_image(out, want, tmp_path)
    assert stats["whiteouts"] == 2 and stats["opaque_dirs"] == 1
    assert stats["dead_bytes"] >= 4096        # the first /etc/passwd's full block
    assert stats["hardlinks"] == 2
    assert stats["image_bytes"] == os.path.getsize(out) < 64 << 20
    if os.geteuid() == 0 and not kernel_checked:
        pytest.skip("checked with the reader and fsck only: cannot loop-mount EROFS here")


def test_layers_of_each_compression_give_the_same_image(tmp_path):
    entries = _lower_layer()
    images = []
    for compression in ("gzip", "zstd", "none"):
        layer = write_layer(tmp_path, f"l.{compression}", entries, compression)
        out = tmp_path / f"{compression}.erofs"
        build_root_disk([layer], str(out))
        images.append(out.read_bytes())
    assert images[0] == images[1] == images[2]


def test_media_type_may_be_empty_and_magic_wins_over_a_wrong_one(tmp_path):
    layer = write_layer(tmp_path, "l.gz", [E("a", data=b"a")], "gzip",
                        media_type="application/vnd.oci.image.layer.v1.tar")
    stats = build_root_disk([layer], str(tmp_path / "o"))
    assert stats["warnings"] and "gzip" in stats["warnings"][0]
    layer = write_layer(tmp_path, "l.zst", [E("a", data=b"a")], "zstd", media_type="")
    assert build_root_disk([layer], str(tmp_path / "o"))["warnings"] == []


def test_progress_follows_the_compressed_bytes(tmp_path):
    layers = [write_layer(tmp_path, "a", [E("x", data=blob(300000, "x"))], "gzip"),
              write_layer(tmp_path, "b", [E("y", data=blob(300000, "y"))], "zstd")]
    total = sum(os.path.getsize(layer.path) for layer in layers)
    seen = []
    build_root_disk(layers, str(tmp_path / "o"),
                    progress=lambda done, total_: seen.append((done, total_)))
    assert seen[-1] == (total, total)
    assert [done for done, _ in seen] == sorted(done for done, _ in seen)


def test_empty_layer_list_and_empty_layers_give_a_bare_root(tmp_path):
    empty = write_layer(tmp_path, "e", b"", "gzip")          # zero-byte tar
    marker_only = write_layer(tmp_path, "m", tar_bytes([]), "none")
    out = tmp_path / "o"
    build_root_disk([empty, marker_only], str(out))
    tree = ErofsReader(str(out)).walk()
    assert list(tree) == [b"/"]


def test_same_layers_give_the_same_bytes(tmp_path):
    layers = [write_layer(tmp_path, "l1", _lower_layer(), "gzip"),
              write_layer(tmp_path, "l2", _upper_layer(), "zstd")]
    build_root_disk(layers, str(tmp_path / "a"))
    build_root_disk(layers, str(tmp_path / "b"))
    assert (tmp_path / "a").read_bytes() == (tmp_path / "b").read_bytes()


# -- hostile archives -----------------------------------------------------------------------

def _snapshot(top):
    return sorted(os.path.relpath(os.path.join(d, n), top)
                  for d, dirs, files in os.walk(top) for n in dirs + files)


def _hostile_cases(sentinel):
    good = tar_bytes([E("ok", data=b"fine"), E("ok2", data=blob(10000, "z"))])
    bad_header = bytearray(good)
    bad_header[1024 + 148:1024 + 156] = b"0000000\0"   # checksum of the 2nd member's header
    return {
        "dotdot": ([E("../sentinel/pwned", data=b"x")], HostileImage, "'..'"),
        "dotdot-inside": ([E("a/../../sentinel/pwned", data=b"x")], HostileImage, "'..'"),
        "symlink-escape-then-write": ([E("escape", "symlink", link="../../../../sentinel"),
                                       E("escape/pwned", data=b"x")], HostileImage,
                                      "out of the image root"),
        "hardlink-outside": ([E("h", "hardlink", link="../../../etc/passwd")], HostileImage,
                             "'..'"),
        "hardlink-host-path": ([E("h", "hardlink", link="/etc/passwd")], ImageError,
                               "does not exist"),
        "hardlink-to-dir": ([E("d", "dir"), E("h", "hardlink", link="d")], HostileImage,
                            "directory"),
        "symlink-loop": ([E("a", "symlink", link="b"), E("b", "symlink", link="a"),
                          E("a/x", data=b"x")], HostileImage, "symlinks"),
        "through-a-file": ([E("f", data=b"x"), E("f/x", data=b"y")], ImageError,
                           "not a directory"),
        "nul-in-name": ([E("x", data=b"x", pax={"path": "a\0b"})], HostileImage, "NUL"),
        "whiteout-dotdot": ([E(".wh..."), E("x")], HostileImage, "whiteout"),
        "root-as-file": ([E("/", data=b"x")], HostileImage, "root"),
        "bomb": ([E("zeros", data=bytes(3 << 20))], ImageTooLarge, "max_bytes"),
        "entry-bomb": ([E(f"e{i}") for i in range(300)], ImageTooLarge, "max_entries"),
        "truncated-gzip": (("gzip", lambda raw: raw[:len(raw) // 2], good), ImageError,
                           "layer 1"),
        "truncated-zstd": (("zstd", lambda raw: raw[:-5], good), ImageError, "zstd"),
        "truncated-tar": (("none", lambda raw: raw[:1024 + 512 + 3000], good), ImageError,
                          "truncated"),
        "garbage": (("none", lambda raw: os.urandom(5000), good), ImageError, "layer 1"),
        "garbage-gzip": (("gzip", lambda raw: raw[:10] + os.urandom(200), good), ImageError,
                         "layer 1"),
        "gzip-trailing-garbage": (("gzip", lambda raw: raw + b"garbage!", good), ImageError,
                                  "gzip"),
        "bad-second-header": (("none", lambda raw: bytes(bad_header), good), ImageError,
                              "bad tar header"),
    }


@pytest.mark.parametrize("case", sorted(_hostile_cases("s")))
def test_hostile_archive_is_refused_and_leaves_nothing(tmp_path, case):
    sentinel = tmp_path / "sentinel"
    work = tmp_path / "work" / "a" / "b" / "c"
    sentinel.mkdir()
    work.mkdir(parents=True)
    spec, error, words = _hostile_cases(str(sentinel))[case]
    if isinstance(spec, tuple):
        compression, mangle, raw = spec
        from support.layer_tars import compress
        path = work / "layer"
        path.write_bytes(mangle(compress(raw, compression)))
        layer = LayerSource(str(path), "")
    else:
        layer = write_layer(work, "layer", spec, "gzip")
    before = _snapshot(tmp_path)
    out = work / "root.erofs.tmp"
    with pytest.raises(error) as caught:
        build_root_disk([layer], str(out), max_bytes=2 << 20, max_entries=200)
    assert words in str(caught.value)
    assert not out.exists()
    assert _snapshot(tmp_path) == before
    assert list(sentinel.iterdir()) == []


def test_absolute_names_and_absolute_symlinks_stay_inside_the_image(tmp_path):
    sentinel = tmp_path / "sentinel"
    sentinel.mkdir()
    host = str(sentinel)
    layer = write_layer(tmp_path, "l", [
        E(host + "/by-name", data=b"a"),
        E("jump", "symlink", link=host),
        E("jump/by-symlink", data=b"b"),
        E("s", "symlink", link="/etc/shadow"),
        E("h", "hardlink", link="s"),          # a hard link to an earlier symlink
        E("h/through-link", data=b"c"),
    ], "gzip")
    out = tmp_path / "o"
    build_root_disk([layer], str(out))
    assert list(sentinel.iterdir()) == []
    tree = ErofsReader(str(out)).walk()
    inside = os.fsencode(host)
    assert tree[inside + b"/by-name"].sha256 and tree[inside + b"/by-symlink"].sha256
    assert tree[b"/h"].nid == tree[b"/s"].nid and tree[b"/h"].target == b"/etc/shadow"
    assert tree[b"/etc/shadow/through-link"].size == 1


def test_failure_removes_a_preexisting_output_file(tmp_path):
    out = tmp_path / "o"
    out.write_bytes(b"stale")
    layer = write_layer(tmp_path, "l", [E("../x", data=b"x")], "gzip")
    with pytest.raises(HostileImage):
        build_root_disk([layer], str(out))
    assert not out.exists()


def test_output_path_that_is_a_symlink_is_not_followed(tmp_path):
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep")
    out = tmp_path / "o"
    out.symlink_to(victim)
    layer = write_layer(tmp_path, "l", [E("x", data=b"x")], "gzip")
    with pytest.raises(OSError):
        build_root_disk([layer], str(out))
    assert victim.read_bytes() == b"keep"


def test_missing_blob_is_an_image_error(tmp_path):
    with pytest.raises(ImageError, match="nope"):
        build_root_disk([LayerSource(str(tmp_path / "nope"), "")], str(tmp_path / "o"))


def test_unknown_media_type_is_refused(tmp_path):
    layer = write_layer(tmp_path, "l", [E("x")], "gzip",
                        media_type="application/vnd.oci.image.layer.v1.tar+encrypted")
    with pytest.raises(ImageError, match="media type"):
        build_root_disk([layer], str(tmp_path / "o"))
    assert not (tmp_path / "o").exists()


def test_gnu_format_tar_with_long_names_and_old_sparse(tmp_path):
    """GNU tar's own formats: ././@LongLink names and type 'S' sparse files."""
    if shutil.which("tar") is None:
        pytest.skip("no GNU tar")
    src = tmp_path / "src"
    deep = src / ("x" * 200) / ("y" * 200)
    deep.mkdir(parents=True)
    with open(deep / "sparse", "wb") as f:
        f.write(b"start")
        f.seek(1 << 24)
        f.write(b"end")
    os.utime(deep / "sparse", (T0, T0))
    out = tmp_path / "gnu.tar"
    subprocess.run(["tar", "--sparse", "--format=gnu", "--owner=0", "--group=0",
                    "--numeric-owner", "-cf", str(out), "-C", str(src), "."], check=True)
    with tarfile.open(out) as tar:
        assert any(m.type == tarfile.GNUTYPE_SPARSE for m in tar)
    image = tmp_path / "o"
    build_root_disk([LayerSource(str(out), "")], str(image))
    reader = ErofsReader(str(image))
    node = reader.walk()[b"/" + b"x" * 200 + b"/" + b"y" * 200 + b"/sparse"]
    assert node.size == (1 << 24) + 3
    assert reader.pread(node, 0, 5) == b"start"
    assert reader.pread(node, 1 << 24, 3) == b"end"
    assert sum(1 for addr in reader.chunk_table(node) if addr is not None) <= 2
