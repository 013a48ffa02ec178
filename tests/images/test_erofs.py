"""The EROFS writer on hand-made trees: layout decisions and their edge cases, each image
checked with the independent reader, fsck.erofs and (as root) the kernel."""
import os
import stat
import struct

from support.erofs_reader import ErofsReader, Want, check_image  # noqa: E402

from vmm.images import erofs  # noqa: E402
from vmm.images.fstree import Dir, File, Special, Symlink  # noqa: E402

T = 1_600_000_000


class Image:
    """A tree under construction plus the file its data goes to."""

    def __init__(self, path):
        self.path = path
        self.out = open(path, "wb")
        self.area = erofs.DataArea(self.out)
        self.root = Dir(stat.S_IFDIR | 0o755, mtime=T)
        self.want = {b"/": Want("dir", 0o755, mtime=(T, 0))}

    def mkdir(self, path, perm=0o755, **meta):
        parent, name = self._parent(path)
        node = Dir(stat.S_IFDIR | perm, mtime=meta.pop("mtime", T), **meta)
        parent.put(name, node, 1)
        self.want[path] = Want("dir", perm, uid=node.uid, gid=node.gid, mtime=(node.mtime, 0),
                               xattrs=node.xattrs or None)
        return node

    def file(self, path, data, perm=0o644, inline_tail=True, **meta):
        parent, name = self._parent(path)
        node = File(stat.S_IFREG | perm, mtime=meta.pop("mtime", T), **meta)
        node.size = len(data)
        tail = len(data) % erofs.BLOCK_SIZE if inline_tail else 0
        if len(data) - tail:
            self.area.write(data[:len(data) - tail])
            node.blkaddr = self.area.end_run()
        node.tail = data[len(data) - tail:]
        parent.put(name, node, 1)
        self.want[path] = Want("file", perm, uid=node.uid, gid=node.gid, data=data,
                               mtime=(node.mtime, node.mtime_nsec), xattrs=node.xattrs or None)
        return node

    def link(self, path, node, group):
        parent, name = self._parent(path)
        parent.put(name, node, 1)
        existing = [p for p, w in self.want.items() if w.group == group]
        source = self.want[existing[0]] if existing else None
        self.want[path] = Want(source.kind, source.perm, uid=source.uid, gid=source.gid,
                               data=source.data, mtime=source.mtime, group=group)

    def _parent(self, path):
        node = self.root
        parts = path.strip(b"/").split(b"/")
        for part in parts[:-1]:
            node = node.children[part]
        return node, parts[-1]

    def finish(self):
        stats = erofs.ImageWriter(self.out, self.area).finish(self.root)
        self.out.close()
        return stats


def test_directory_spanning_many_blocks_sorted_bytewise_and_looked_up_by_kernel(tmp_path):
    img = Image(tmp_path / "img")
    img.mkdir(b"/d")
    names = set()
    for i in range(1500):
        first = 0x21 + i % 90                                # '!' .. 'z' first bytes
        stem = bytes([first if first != 0x2F else 0xFE]) + b"%d" % i
        names.add(stem + (b"\xff" * (i % 7)) + b"-" * (i % 50))
    names |= {b"-", b"+", b"..a", b".hidden", b"\xff" * 255, b"A" * 255}
    for name in names:
        img.file(b"/d/" + name, name[:10], mtime=T)
    stats = img.finish()
    assert stats["dir_blocks"] > 10
    reader = ErofsReader(str(img.path))
    listing = [n for n, _, _ in reader.listdir(reader.walk()[b"/d"])]
    assert listing == sorted(listing) and set(listing) == names | {b".", b".."}
    check_image(img.path, img.want, tmp_path)    # the kernel stat()s every name: namei's search


def test_inline_data_that_cannot_share_a_block_with_its_inode_is_spilled(tmp_path):
    img = Image(tmp_path / "img")
    fat = {b"user.big": b"v" * 3500}
    multi = os.urandom(2 * erofs.BLOCK_SIZE + 1000)
    img.file(b"/multi", multi, xattrs=dict(fat))           # full blocks + tail -> chunk map
    img.file(b"/small", b"s" * 1500, xattrs=dict(fat))       # whole file -> one block
    d = img.mkdir(b"/dir", xattrs=dict(fat))
    for i in range(40):
        img.file(b"/dir/entry-%02d-" % i + b"x" * 30, b"%d" % i)
    target = b"t/" * 2000
    trusted = {b"trusted.big": b"v" * 3500}    # Linux hides user.* xattrs of symlinks
    node = Symlink(target, mtime=T, xattrs=dict(trusted))
    img.root.put(b"sym", node, 1)
    img.want[b"/sym"] = Want("symlink", 0o777, target=target, mtime=(T, 0), xattrs=trusted)
    stats = img.finish()
    assert d.xattrs and stats["chunked_inodes"] == 1
    tree = ErofsReader(str(img.path)).walk()
    assert tree[b"/multi"].layout == 4 and tree[b"/small"].layout == 0
    assert tree[b"/dir"].layout == 0 and tree[b"/sym"].layout == 0
    check_image(img.path, img.want, tmp_path)


def test_compact_inodes_where_they_fit_extended_where_they_must(tmp_path):
    img = Image(tmp_path / "img")
    img.file(b"/common1", b"a", mtime=T)
    img.file(b"/common2", b"b", mtime=T)
    img.file(b"/other-time", b"c", mtime=T + 1)
    img.file(b"/big-uid", b"d", uid=70000, gid=3)
    img.file(b"/big-gid", b"e", gid=1 << 31)
    img.file(b"/nsec", b"f").mtime_nsec = 5
    img.want[b"/nsec"].mtime = (T, 5)
    img.file(b"/old", b"g", mtime=-86400)
    img.finish()
    reader = ErofsReader(str(img.path))
    tree = reader.walk()
    assert (reader.build_time, reader.build_nsec) == (T, 0)
    extended = {p for p, n in tree.items() if n.extended}
    assert extended == {b"/other-time", b"/big-uid", b"/big-gid", b"/nsec", b"/old"}
    check_image(img.path, img.want, tmp_path)


def test_xattr_names_erofs_cannot_hold_are_dropped_and_counted(tmp_path):
    img = Image(tmp_path / "img")
    acl = struct.pack("<I", 2) + struct.pack("<HHI", 1, 6, 0xFFFFFFFF) + \
        struct.pack("<HHI", 4, 4, 0xFFFFFFFF) + struct.pack("<HHI", 0x20, 4, 0xFFFFFFFF)
    node = img.file(b"/f", b"x", xattrs={b"user.a": b"", b"user.b": b"2",
                                         b"system.posix_acl_access": acl,
                                         b"system.nfs4_acl": b"no", b"user.": b"no",
                                         b"weird": b"no", b"trusted.z": b"t"})
    img.want[b"/f"].xattrs = {b"user.a": b"", b"user.b": b"2", b"system.posix_acl_access": acl,
                              b"trusted.z": b"t"}
    stats = img.finish()
    assert stats["xattrs_dropped"] == 3 and stats["xattrs"] == 4
    assert node.xattrs  # the tree keeps them; only the image drops
    tree = ErofsReader(str(img.path)).walk()
    assert tree[b"/f"].xattrs == img.want[b"/f"].xattrs
    # the kernel turns an ACL into the permission bits it implies; check the rest there
    img.want[b"/f"].xattrs = None
    check_image(img.path, img.want, tmp_path)


def test_superblock_root_and_sizes(tmp_path):
    img = Image(tmp_path / "img")
    img.file(b"/a", os.urandom(10000))
    dev = Special(stat.S_IFCHR | 0o600, rdev=(10, 200), mtime=T)
    img.root.put(b"tty", dev, 1)
    img.want[b"/tty"] = Want("chr", 0o600, rdev=(10, 200), mtime=(T, 0))
    stats = img.finish()
    reader = ErofsReader(str(img.path))
    assert 0 < reader.root_nid < 1 << 16
    assert reader.inos == 3 == stats["inodes"]
    assert reader.blocks * erofs.BLOCK_SIZE == os.path.getsize(img.path) == stats["image_bytes"]
    assert reader.meta_blkaddr >= 3      # after block 0 and the file's data
    check_image(img.path, img.want, tmp_path)


def test_many_hard_links_and_a_wide_tree(tmp_path):
    img = Image(tmp_path / "img")
    node = img.file(b"/orig", b"shared", mtime=T)
    img.want[b"/orig"].group = "g"
    for i in range(50):
        img.mkdir(b"/d%d" % i)
        img.link(b"/d%d/l" % i, node, "g")
    img.finish()
    tree = ErofsReader(str(img.path)).walk()
    assert tree[b"/orig"].nlink == 51
    assert tree[b"/"].nlink == 52
    check_image(img.path, img.want, tmp_path)


def test_empty_root(tmp_path):
    img = Image(tmp_path / "img")
    img.finish()
    check_image(img.path, img.want, tmp_path)
