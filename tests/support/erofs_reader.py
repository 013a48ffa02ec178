"""A small EROFS reader for the tests, written from the kernel's on-disk format (not from
vmm.images.erofs), and checks of a built image against what a test expects.

The root-disk tests use it for what fsck.erofs 1.5 cannot show: xattrs, setuid bits,
inode sharing of hard links, nids and the exact on-disk layout of each inode. Its own
check against images made by mkfs.erofs is tests/images/test_erofs_reader.py.
"""
import collections
import hashlib
import os
import re
import shutil
import stat
import struct
import subprocess

import pytest

_PREFIXES = {1: b"user.", 2: b"system.posix_acl_access", 3: b"system.posix_acl_default",
             4: b"trusted.", 5: b"lustre.", 6: b"security."}


HASH_MAX = 64 << 20   # larger (sparse) files are checked piecewise, not hashed whole


class Inode:
    def __init__(self, **fields):
        self.__dict__.update(fields)


class ErofsReader:
    def __init__(self, path):
        with open(path, "rb") as f:
            self.data = f.read()
        (magic, _csum, _compat, self.blkbits, _ext, self.root_nid, self.inos, self.build_time,
         self.build_nsec, self.blocks, self.meta_blkaddr) = struct.unpack_from(
            "<IIIBBHQqIII", self.data, 1024)
        assert magic == 0xE0F5E1E2, hex(magic)
        self.bs = 1 << self.blkbits
        assert len(self.data) >= self.blocks * self.bs

    def inode(self, nid):
        off = self.meta_blkaddr * self.bs + nid * 32
        i_format = struct.unpack_from("<H", self.data, off)[0]
        extended, layout = i_format & 1, (i_format >> 1) & 7
        if extended:
            (_f, xcount, mode, _r, size, i_u, ino, uid, gid, mtime, nsec,
             nlink) = struct.unpack_from("<HHHHQIIIIqII", self.data, off)
            isize = 64
        else:
            _f, xcount, mode, nlink, size, _r, i_u, ino, uid, gid = struct.unpack_from(
                "<HHHHIIIIHH", self.data, off)
            mtime, nsec, isize = self.build_time, self.build_nsec, 32
        xsize = 12 + 4 * (xcount - 1) if xcount else 0
        node = Inode(nid=nid, off=off, extended=bool(extended), layout=layout, mode=mode,
                     nlink=nlink, size=size, i_u=i_u, ino=ino, uid=uid, gid=gid,
                     mtime=mtime, nsec=nsec, isize=isize, xsize=xsize)
        node.xattrs = self._xattrs(off + isize, xsize)
        return node

    def _xattrs(self, off, size):
        if not size:
            return {}
        shared = self.data[off + 4]
        pos, end, out = off + 12 + 4 * shared, off + size, {}
        while pos < end:
            name_len, index, value_len = struct.unpack_from("<BBH", self.data, pos)
            name = self.data[pos + 4:pos + 4 + name_len]
            value = self.data[pos + 4 + name_len:pos + 4 + name_len + value_len]
            out[_PREFIXES[index] + name] = value
            pos += (4 + name_len + value_len + 3) & ~3
        assert pos == end
        return out

    def read(self, node):
        """The inode's data bytes (holes read as zeros)."""
        bs, size = self.bs, node.size
        if node.layout == 0:
            start = node.i_u * bs
            return self.data[start:start + size] if size else b""
        if node.layout == 2:
            nblocks = -(-size // bs)
            head = (nblocks - 1) * bs
            inline_at = node.off + node.isize + node.xsize
            assert inline_at % bs + (size - head) <= bs, "inline data crosses a block"
            body = self.data[node.i_u * bs:node.i_u * bs + head] if head else b""
            return body + self.data[inline_at:inline_at + size - head]
        assert node.layout == 4, node.layout
        return b"".join(piece for _, piece in self.chunks(node))

    def pread(self, node, offset, length):
        """`length` bytes at `offset` of a chunk-based file, without reading it all."""
        out = b""
        chunk = self.bs << (node.i_u & 0x1F)
        table = self.chunk_table(node)
        while length > 0:
            index, within = divmod(offset, chunk)
            step = min(length, chunk - within)
            addr = table[index]
            if addr is None:
                out += bytes(step)
            else:
                start = addr * self.bs + within
                out += self.data[start:start + step]
            offset, length = offset + step, length - step
        return out

    def chunk_table(self, node):
        """Block address (None for a hole) of each chunk of a chunk-based inode."""
        assert node.layout == 4
        fmt = node.i_u & 0xFFFF
        unit = 8 if fmt & 0x20 else 4
        chunk = self.bs << (fmt & 0x1F)
        pos = node.off + node.isize + node.xsize
        pos = (pos + unit - 1) // unit * unit
        count = -(-node.size // chunk)
        skip = 4 if unit == 8 else 0
        return [None if a == 0xFFFFFFFF else a for a in
                (struct.unpack_from("<I", self.data, pos + unit * i + skip)[0]
                 for i in range(count))]

    def chunks(self, node):
        """(chunk blkaddr or None for a hole, bytes) for each chunk of a chunk-based inode."""
        fmt = node.i_u & 0xFFFF
        unit = 8 if fmt & 0x20 else 4
        chunk = self.bs << (fmt & 0x1F)
        pos = node.off + node.isize + node.xsize
        pos = (pos + unit - 1) // unit * unit
        out = []
        for index in range(-(-node.size // chunk)):
            entry = pos + unit * index
            addr = struct.unpack_from("<I", self.data, entry + (4 if unit == 8 else 0))[0]
            length = min(chunk, node.size - index * chunk)
            if addr == 0xFFFFFFFF:
                out.append((None, bytes(length)))
            else:
                out.append((addr, self.data[addr * self.bs:addr * self.bs + length]))
        return out

    def listdir(self, node):
        """[(name, nid, file_type)] in on-disk order, checking the format's invariants."""
        data, out = self.read(node), []
        for base in range(0, len(data), self.bs):
            block = data[base:base + self.bs]
            first = struct.unpack_from("<H", block, 8)[0]
            count = first // 12
            assert count and first % 12 == 0
            offs = [struct.unpack_from("<QHBB", block, 12 * i) for i in range(count)]
            for i, (nid, nameoff, ftype, _r) in enumerate(offs):
                end = offs[i + 1][1] if i + 1 < count else len(block)
                name = block[nameoff:end].split(b"\0", 1)[0]
                assert 1 <= len(name) <= 255
                out.append((name, nid, ftype))
        names = [name for name, _, _ in out]
        assert names == sorted(names), "dirents must be sorted bytewise"
        assert len(set(names)) == len(names)
        return out

    def walk(self):
        """{path: Inode} for every entry; "/" is the root. Adds .target and .sha256."""
        root = self.inode(self.root_nid)
        out = {b"/": root}
        queue = [(b"", root)]
        while queue:
            path, node = queue.pop()
            entries = {name: nid for name, nid, _ in self.listdir(node)}
            assert entries.pop(b".") == node.nid
            entries.pop(b"..")
            for name, nid in entries.items():
                child = self.inode(nid)
                child_path = path + b"/" + name
                out[child_path] = child
                if stat.S_ISDIR(child.mode):
                    queue.append((child_path, child))
                elif stat.S_ISLNK(child.mode):
                    child.target = self.read(child)
                elif stat.S_ISREG(child.mode) and child.size <= HASH_MAX:
                    child.sha256 = hashlib.sha256(self.read(child)).hexdigest()
        return out


def rdev_of(node):
    """(major, minor) from the kernel's new_encode_dev() form in i_u."""
    dev = node.i_u
    return (dev & 0xFFF00) >> 8, (dev & 0xFF) | ((dev >> 12) & 0xFFF00)


# -- checking a built image against what the test expects --------------------------------------

class Sparse:
    """Expected content of a sparse file: its size and {offset: bytes} of its data; the
    rest must read as zeros and stay holes (unmapped chunks) in the image."""

    def __init__(self, size, pieces):
        self.size, self.pieces = size, pieces


class Want:
    """What one path of an image must be. `data` is bytes, (size, sha256 hex) or Sparse."""

    def __init__(self, kind, perm=0o644, uid=0, gid=0, mtime=None, data=None, target=None,
                 rdev=None, xattrs=None, group=None):
        self.kind, self.perm, self.uid, self.gid = kind, perm, uid, gid
        self.mtime, self.data, self.target, self.rdev = mtime, data, target, rdev
        self.xattrs, self.group = xattrs, group

    @property
    def size_and_hash(self):
        if isinstance(self.data, tuple):
            return self.data
        return len(self.data), hashlib.sha256(self.data).hexdigest()


_KINDS = {"file": stat.S_IFREG, "dir": stat.S_IFDIR, "symlink": stat.S_IFLNK,
          "chr": stat.S_IFCHR, "blk": stat.S_IFBLK, "fifo": stat.S_IFIFO}


def check_with_reader(image, want):
    """Compare every path of `image` with `want` ({b"/path": Want}) through ErofsReader."""
    reader = ErofsReader(str(image))
    tree = reader.walk()
    assert set(tree) == set(want), (sorted(set(tree) - set(want))[:10],
                                    sorted(set(want) - set(tree))[:10])
    groups = {}
    for path, w in want.items():
        node = tree[path]
        assert node.mode == _KINDS[w.kind] | w.perm, (path, oct(node.mode))
        assert (node.uid, node.gid) == (w.uid, w.gid), path
        if w.mtime is not None:
            assert (node.mtime, node.nsec) == w.mtime, path
        if w.kind == "file" and isinstance(w.data, Sparse):
            _check_sparse_in_image(reader, node, w.data, path)
        elif w.kind == "file":
            assert (node.size, node.sha256) == w.size_and_hash, path
        if w.kind == "symlink":
            assert node.target == w.target, path
        if w.kind in ("chr", "blk"):
            assert rdev_of(node) == w.rdev, path
        if w.xattrs is not None:
            assert node.xattrs == w.xattrs, path
        if w.group is not None:
            groups.setdefault(w.group, set()).add(node.nid)
    for group, nids in groups.items():
        assert len(nids) == 1, f"hard link group {group} spans inodes {nids}"
    sharing = collections.Counter(node.nid for node in tree.values())
    for path, node in tree.items():
        if not stat.S_ISDIR(node.mode):
            assert node.nlink == sharing[node.nid], path
    return tree


def check_with_fsck(image, want, dest):
    """fsck.erofs must accept the image; extracted (as root), every path must match in
    type, permissions (setuid/setgid aside: fsck's chown clears them), owner, size,
    contents, symlink target, device number and mtime seconds."""
    if shutil.which("fsck.erofs") is None:
        pytest.skip("no fsck.erofs")
    subprocess.run(["fsck.erofs", str(image)], check=True, capture_output=True)
    _check_links_with_dump(image, want)
    if os.geteuid() != 0:
        return
    subprocess.run(["fsck.erofs", f"--extract={dest}", "--preserve", str(image)],
                   check=True, capture_output=True)
    for path, w in want.items():
        full = os.path.join(os.fsencode(dest), path.lstrip(b"/"))
        st = os.lstat(full)
        assert stat.S_IFMT(st.st_mode) == _KINDS[w.kind], path
        if w.kind != "symlink":
            assert stat.S_IMODE(st.st_mode) & 0o1777 == w.perm & 0o1777, (path, oct(st.st_mode))
        assert (st.st_uid, st.st_gid) == (w.uid, w.gid), path
        if w.mtime is not None and w.kind not in ("symlink", "dir"):
            assert st.st_mtime_ns // 10**9 == w.mtime[0], path
        if w.kind == "file" and isinstance(w.data, Sparse):
            pass   # fsck.erofs 1.5 extracts a chunk-based file only up to its first hole
        elif w.kind == "file":
            size, digest = w.size_and_hash
            assert st.st_size == size, path
            assert _hash_file(full) == digest, path
        elif w.kind == "symlink":
            assert os.readlink(full) == w.target, path
        elif w.kind in ("chr", "blk"):
            assert (os.major(st.st_rdev), os.minor(st.st_rdev)) == w.rdev, path


def _check_links_with_dump(image, want):
    """dump.erofs must see each hard link group as one nid with that many links."""
    if shutil.which("dump.erofs") is None:
        return
    groups = {}
    for path, w in want.items():
        if w.group is not None:
            groups.setdefault(w.group, []).append(path)
    for group, paths in groups.items():
        seen = set()
        for path in paths[:3]:     # a few members are enough; each dump is a process
            out = subprocess.run(["dump.erofs", f"--path={os.fsdecode(path)}", str(image)],
                                 check=True, capture_output=True, text=True).stdout
            fields = dict(re.findall(r"(NID|Links):\s*(\d+)", out))
            assert int(fields["Links"]) == len(paths), (path, out)
            seen.add(fields["NID"])
        assert len(seen) == 1, (group, seen)


def check_with_kernel(image, want, mountpoint):
    """Mount the image with the host kernel's EROFS (root and loop devices needed; skipped
    quietly otherwise) and compare everything, xattrs and hard links included."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    os.makedirs(mountpoint, exist_ok=True)
    done = subprocess.run(["mount", "-t", "erofs", "-o", "loop,ro", str(image), str(mountpoint)],
                          capture_output=True)
    if done.returncode != 0:
        return False
    try:
        inodes = {}
        base = os.fsencode(mountpoint)
        found = {b"/"}
        for dirpath, dirnames, filenames in os.walk(base):
            for name in dirnames + filenames:
                found.add(b"/" + os.path.relpath(os.path.join(dirpath, name), base))
        assert found == set(want), sorted(found ^ set(want))[:10]
        for path, w in want.items():
            full = base + path if path != b"/" else base
            st = os.lstat(full)
            assert st.st_mode == _KINDS[w.kind] | w.perm, (path, oct(st.st_mode))
            assert (st.st_uid, st.st_gid) == (w.uid, w.gid), path
            if w.mtime is not None:
                assert divmod(st.st_mtime_ns, 10**9) == w.mtime, path
            if w.kind == "file" and isinstance(w.data, Sparse):
                _check_sparse_file(full, w.data, path)
            elif w.kind == "file":
                assert (st.st_size, _hash_file(full)) == w.size_and_hash, path
            elif w.kind == "symlink":
                assert os.readlink(full) == w.target, path
            elif w.kind in ("chr", "blk"):
                assert (os.major(st.st_rdev), os.minor(st.st_rdev)) == w.rdev, path
            if w.xattrs is not None:
                names = os.listxattr(full, follow_symlinks=False)
                got = {os.fsencode(n): os.getxattr(full, n, follow_symlinks=False) for n in names}
                assert got == w.xattrs, path
            if w.group is not None:
                inodes.setdefault(w.group, set()).add(st.st_ino)
        for group, numbers in inodes.items():
            assert len(numbers) == 1, group
        return True
    finally:
        subprocess.run(["umount", str(mountpoint)], check=True)


def check_image(image, want, tmp_path):
    """All three checks; returns True when the kernel check could run."""
    check_with_reader(image, want)
    check_with_fsck(image, want, tmp_path / "fsck-extract")
    return check_with_kernel(image, want, tmp_path / "mnt")


def _hash_file(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for piece in iter(lambda: f.read(1 << 20), b""):
            digest.update(piece)
    return digest.hexdigest()


def _check_sparse_in_image(reader, node, sparse, path):
    assert node.size == sparse.size, path
    table = reader.chunk_table(node)
    chunk = reader.bs << (node.i_u & 0x1F)
    for offset, data in sparse.pieces.items():
        assert reader.pread(node, offset, len(data)) == data, (path, offset)
    wanted = {i for offset, data in sparse.pieces.items() if data
              for i in range(offset // chunk, (offset + len(data) - 1) // chunk + 1)}
    mapped = {i for i, addr in enumerate(table) if addr is not None}
    assert mapped == wanted, f"{path}: chunks {sorted(mapped)[:8]}, want {sorted(wanted)[:8]}"


def _check_sparse_file(full, sparse, path):
    """Through the kernel: size, the data pieces, zeros next to them, and real holes."""
    assert os.lstat(full).st_size == sparse.size, path
    fd = os.open(full, os.O_RDONLY)
    try:
        for offset, data in sparse.pieces.items():
            assert os.pread(fd, len(data), offset) == data, (path, offset)
            if offset >= 16:
                assert os.pread(fd, 16, offset - 16) == bytes(16), (path, offset)
        first = min(sparse.pieces)
        assert os.lseek(fd, first + len(sparse.pieces[first]), os.SEEK_HOLE) < sparse.size
    finally:
        os.close(fd)
