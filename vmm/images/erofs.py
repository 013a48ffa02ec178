"""Write an uncompressed EROFS image from an `fstree` tree, in Python.

Why EROFS, written by us: the guest mounts the image disk read-only as the lower layer of
its overlay, and EROFS is the read-only format Linux has for exactly that. Its uncompressed
on-disk format (the kernel's fs/erofs/erofs_fs.h) is small enough to emit directly while
the layer tars stream past, which means the untrusted files are never extracted onto the
host, no root is needed to record owners, devices or xattrs, and no external mkfs has to be
fed a directory an image controls.

Image layout (4 KiB blocks; every address below is a block number unless said otherwise):

    block 0             the superblock, at byte 1024 (written last)
    1 .. D-1            regular file data, appended block-aligned while layers stream;
                        files overwritten by a later layer simply leave their blocks behind
    D .. M-1            directory blocks and the few data blocks decided at the end
    M ..                the metadata area (`meta_blkaddr` = M): inodes, 32-byte aligned,
                        each addressed by nid = (byte offset in the area) / 32, followed by
                        its inline xattrs and then its inline data (a small file, a
                        file's last partial block, a short directory, a symlink target)
                        or its chunk map (sparse files)

The superblock's `root_nid` is only 16 bits wide, so the root inode comes first, at nid 1
(nid 0 would become inode number 0, which readdir() users take for an empty slot).
Inodes use the 32-byte compact form when their mtime equals the superblock's build time
(we pick the most common mtime for it) and uid, gid, nlink and size fit in 16/32 bits;
otherwise the 64-byte extended form (which is also what files over 4 GiB need).
Sparse files become chunk-based inodes whose 4-byte block map marks holes with -1; so do
regular files with aligned 1 MiB runs of zeros (layers.py), and any block of zeros that is
still written is a hole in the host file (DataArea seeks over it), so zeros cost no disk.
Only inline xattrs are written (no shared xattr area); names outside the prefixes EROFS
can encode (user., trusted., security., system.posix_acl_*) are dropped and counted.
"""
import array
import hashlib
import stat
import struct
import sys
from collections import Counter

from .fstree import Dir, File, Special, Symlink, walk

BLOCK_BITS = 12
BLOCK_SIZE = 1 << BLOCK_BITS
SUPER_OFFSET = 1024
MAGIC = 0xE0F5E1E2
ROOT_NID_MAX = 0xFFFF

FEATURE_COMPAT_MTIME = 0x2          # extended inodes carry their own mtime
FEATURE_INCOMPAT_CHUNKED_FILE = 0x4

LAYOUT_FLAT_PLAIN = 0
LAYOUT_FLAT_INLINE = 2
LAYOUT_CHUNK_BASED = 4

COMPACT_SIZE = 32
EXTENDED_SIZE = 64
DIRENT_SIZE = 12
XATTR_HEADER_SIZE = 12
CHUNK_HOLE = 0xFFFFFFFF

# Inline data is kept to half a block: a record that does not fit where the previous one
# ended starts a new block, and short tails keep that padding small.
INLINE_MAX = BLOCK_SIZE // 2

_SUPER = struct.Struct("<IIIBBHQqIIII16s16sIHHHB5sQ24s")
_COMPACT = struct.Struct("<HHHHIIIIHHI")
_EXTENDED = struct.Struct("<HHHHQIIIIqII16x")
_DIRENT = struct.Struct("<QHBB")
_XATTR_ENTRY = struct.Struct("<BBH")

_FILE_TYPES = {stat.S_IFREG: 1, stat.S_IFDIR: 2, stat.S_IFCHR: 3, stat.S_IFBLK: 4,
               stat.S_IFIFO: 5, stat.S_IFSOCK: 6, stat.S_IFLNK: 7}

# xattr name -> (EROFS name index, stored suffix). Linux 6.1 knows no other prefixes.
_XATTR_PREFIXES = ((b"user.", 1), (b"trusted.", 4), (b"lustre.", 5), (b"security.", 6))
_XATTR_FULL_NAMES = {b"system.posix_acl_access": 2, b"system.posix_acl_default": 3}
_XATTR_IBODY_MAX = XATTR_HEADER_SIZE + 4 * (0xFFFF - 1)   # i_xattr_icount is 16 bits

_ZEROS = bytes(1 << 20)


def _round_up(value, unit):
    return -(-value // unit) * unit


class DataArea:
    """Appends block-aligned runs of data to the image file, from block 1 on.

    Blocks of zeros are not written: the file position moves over them, leaving a hole in
    the host file, so a layer full of zeros (a gzip bomb, a preallocated file) costs no
    host disk however large it claims to be. Readers see zeros there, as EROFS expects."""

    def __init__(self, fileobj):
        self._file = fileobj
        self._file.write(_ZEROS[:BLOCK_SIZE])   # block 0: the superblock, written last
        self.next_block = 1
        self._run = 0
        self._pos = BLOCK_SIZE         # the file position
        self.data_end = BLOCK_SIZE     # just after the last byte really written

    @property
    def block_in_run(self):
        """The block the next byte of the current run lands in."""
        return self.next_block + self._run // BLOCK_SIZE

    @property
    def offset_in_run(self):
        return self._run

    def write(self, data):
        count = len(data)
        if not count:
            return
        boundary = -self._run % BLOCK_SIZE   # runs start on a block boundary
        self._run += count
        if count <= len(_ZEROS) and data == _ZEROS[:count]:
            self._skip(count)
            return
        cuts = [0, *range(boundary or BLOCK_SIZE, count, BLOCK_SIZE), count]
        pending = 0   # start of data not yet written
        for start, end in zip(cuts, cuts[1:]):
            if data[start:end] == _ZEROS[:end - start]:
                if pending < start:
                    self._put(data[pending:start])
                self._skip(end - start)
                pending = end
        if pending < count:
            self._put(data[pending:])

    def write_zeros(self, count):
        if count > 0:
            self._run += count
            self._skip(count)

    def rewind(self, count):
        """Take back the last `count` bytes of the run; they must all have been zeros (so
        nothing was written: see data_end). Used to turn a chunk of zeros into a hole."""
        if count > self._run or self._pos - count < self.data_end:
            raise AssertionError("rewind over written data")
        self._run -= count
        self._skip(-count)

    def _put(self, data):
        self._file.write(data)
        self._pos += len(data)
        self.data_end = self._pos

    def _skip(self, count):
        self._file.seek(count, 1)
        self._pos += count

    def end_run(self):
        """Pad the current run to a block boundary; return the block it started at."""
        start = self.next_block
        self.write_zeros(-self._run % BLOCK_SIZE)
        if self._pos > self.data_end:
            # A file grows only by writing: materialise the run's last byte, so the image
            # (or an in-memory one in tests) really extends over a trailing hole.
            self._skip(-1)
            self._put(b"\0")
        self.next_block += self._run // BLOCK_SIZE
        self._run = 0
        return start

    def append_block(self, data):
        """Write `data` (at most a block) as a run of its own; return its block address."""
        self.write(data)
        return self.end_run()


def xattr_key(name):
    """(index, suffix) EROFS stores for the xattr `name`, or None if it cannot."""
    full = _XATTR_FULL_NAMES.get(name)
    if full is not None:
        return full, b""
    for prefix, index in _XATTR_PREFIXES:
        if name.startswith(prefix) and len(name) > len(prefix):
            return index, name[len(prefix):]
    return None


def encode_xattrs(xattrs):
    """The inline xattr body for `xattrs` (b"" if none) and how many had to be dropped."""
    entries = []
    dropped = 0
    for name, value in xattrs.items():
        key = xattr_key(name)
        if key is None or len(key[1]) > 255 or len(value) > 0xFFFF:
            dropped += 1
            continue
        entries.append((key, value))
    if not entries:
        return b"", dropped
    body = bytearray(XATTR_HEADER_SIZE)   # h_reserved, h_shared_count = 0, reserved
    for (index, suffix), value in sorted(entries):
        entry = _XATTR_ENTRY.pack(len(suffix), index, len(value)) + suffix + value
        entry += bytes(-len(entry) % 4)
        if len(body) + len(entry) > _XATTR_IBODY_MAX:
            dropped += 1
            continue
        body += entry
    return bytes(body), dropped


def encode_rdev(major, minor):
    """The kernel's new_encode_dev(): what EROFS keeps in i_u for device inodes."""
    return ((minor & 0xFF) | (major << 8) | ((minor & ~0xFF) << 12)) & 0xFFFFFFFF


def _file_type(node):
    return _FILE_TYPES.get(stat.S_IFMT(node.mode), 0)


class _Inode:
    """Everything the layout decides about one node before it is serialised."""

    __slots__ = ("node", "ino", "nlink", "nid", "extended", "layout", "xattrs", "inline",
                 "chunk_map", "chunkbits", "size", "blkaddr", "dirents", "dir_tail")

    def __init__(self, node, ino):
        self.node = node
        self.ino = ino
        self.nlink = 0
        self.nid = 0
        self.extended = False
        self.layout = LAYOUT_FLAT_PLAIN
        self.xattrs = b""
        self.inline = b""
        self.chunk_map = None
        self.chunkbits = 0
        self.size = 0
        self.blkaddr = 0
        self.dirents = None    # directories: list of blocks, each a list of (name, _Inode)
        self.dir_tail = False  # directories: last dirent block goes inline

    @property
    def record_size(self):
        base = (EXTENDED_SIZE if self.extended else COMPACT_SIZE) + len(self.xattrs)
        if self.chunk_map is not None:
            return base + 4 * len(self.chunk_map)
        return base + len(self.inline)


class ImageWriter:
    """Lays out and writes the metadata for a finished tree after its file data."""

    def __init__(self, fileobj, area):
        self._file = fileobj
        self._area = area
        self.stats = Counter(dict.fromkeys(
            ("files", "dirs", "symlinks", "specials", "hardlinks", "file_bytes",
             "inline_files", "chunked_files", "chunked_inodes", "dir_blocks", "xattrs",
             "xattrs_dropped"), 0))

    def finish(self, root):
        """Write directories, the metadata area and the superblock; return the stats."""
        streamed_blocks = self._area.next_block - 1
        inodes = self._collect(root)
        build_time = Counter((i.node.mtime, i.node.mtime_nsec) for i in inodes).most_common(1)[0][0]
        for inode in inodes:
            self._shape(inode, build_time)
        meta_size = self._assign_nids(inodes)
        self._write_directories(inodes)
        meta_blkaddr = self._area.next_block
        meta = self._serialise(inodes, meta_size)
        self._file.write(meta)
        self._file.write(bytes(-len(meta) % BLOCK_SIZE))
        total_blocks = meta_blkaddr + _round_up(len(meta), BLOCK_SIZE) // BLOCK_SIZE
        self._write_superblock(inodes, build_time, meta_blkaddr, total_blocks, meta)
        live = sum(i.node.data_blocks(BLOCK_SIZE) for i in inodes if type(i.node) is File)
        self.stats.update(inodes=len(inodes), blocks=total_blocks,
                          image_bytes=total_blocks * BLOCK_SIZE, meta_bytes=len(meta),
                          dead_bytes=max(0, streamed_blocks - live) * BLOCK_SIZE)
        return dict(self.stats)

    # -- layout ---------------------------------------------------------------------------

    def _collect(self, root):
        """One _Inode per node (hard links share), root first, with nlink and dirents."""
        by_id = {id(root): _Inode(root, 1)}
        order = [by_id[id(root)]]
        entries = {id(root): []}
        for parent, name, node in walk(root):
            inode = by_id.get(id(node))
            if inode is None:
                inode = by_id[id(node)] = _Inode(node, len(order) + 1)
                order.append(inode)
                if type(node) is Dir:
                    entries[id(node)] = [(b"..", by_id[id(parent)])]
            else:
                self.stats["hardlinks"] += 1
            inode.nlink += 1
            entries[id(parent)].append((name, inode))
        entries[id(root)].append((b"..", order[0]))
        for inode in order:
            if type(inode.node) is Dir:
                children = entries[id(inode.node)]
                children.append((b".", inode))
                children.sort(key=lambda entry: entry[0])
                inode.dirents = _pack_dirents(children)
                inode.nlink = 2 + sum(1 for name, child in children
                                      if type(child.node) is Dir and name not in (b".", b".."))
        return order

    def _shape(self, inode, build_time):
        """Decide layout, size, inline payload and inode form for one inode."""
        node = inode.node
        inode.xattrs, dropped = encode_xattrs(node.xattrs)
        self.stats["xattrs_dropped"] += dropped
        self.stats["xattrs"] += len(node.xattrs) - dropped
        kind = type(node)
        if kind is File:
            self._shape_file(inode)
        elif kind is Dir:
            self._shape_dir(inode)
        elif kind is Symlink:
            inode.size = len(node.target)
            inode.inline = node.target
            inode.layout = LAYOUT_FLAT_INLINE
            self.stats["symlinks"] += 1
        else:
            self.stats["specials"] += 1
        inode.extended = ((node.mtime, node.mtime_nsec) != build_time or node.uid > 0xFFFF
                          or node.gid > 0xFFFF or inode.nlink > 0xFFFF
                          or inode.size > 0xFFFFFFFF)
        if inode.layout == LAYOUT_FLAT_INLINE and not self._inline_fits(inode):
            self._spill(inode)

    def _shape_file(self, inode):
        node = inode.node
        self.stats["files"] += 1
        self.stats["file_bytes"] += node.size
        inode.size = node.size
        if node.chunk_map is not None:
            inode.layout = LAYOUT_CHUNK_BASED
            inode.chunk_map, inode.chunkbits = node.chunk_map, node.chunkbits
            self.stats["chunked_files"] += 1
        elif node.tail:
            inode.layout = LAYOUT_FLAT_INLINE
            inode.inline = node.tail
            inode.blkaddr = node.blkaddr
            self.stats["inline_files"] += 1
        else:
            inode.blkaddr = node.blkaddr if node.size else 0

    def _shape_dir(self, inode):
        self.stats["dirs"] += 1
        blocks = inode.dirents
        last = _dirent_bytes(blocks[-1])
        inode.size = (len(blocks) - 1) * BLOCK_SIZE + last
        if last <= INLINE_MAX:
            inode.layout = LAYOUT_FLAT_INLINE
            inode.dir_tail = True
            inode.inline = bytes(last)   # placeholder of the right length, filled later

    def _inline_fits(self, inode):
        head = (EXTENDED_SIZE if inode.extended else COMPACT_SIZE) + len(inode.xattrs)
        return head + len(inode.inline) <= BLOCK_SIZE

    def _spill(self, inode):
        """Inline data that cannot share a block with its inode goes to a data block."""
        node = inode.node
        if type(node) is Dir:
            inode.layout, inode.dir_tail, inode.inline = LAYOUT_FLAT_PLAIN, False, b""
            return
        data, inode.inline = inode.inline, b""
        if type(node) is File and node.size > len(data):
            # The file's full blocks are already written; the spilled tail cannot follow
            # them, so address every block through a one-block-per-chunk map.
            full = (node.size - len(data)) // BLOCK_SIZE
            tail_block = self._area.append_block(data)
            inode.chunk_map = array.array("I", range(node.blkaddr, node.blkaddr + full))
            inode.chunk_map.append(tail_block)
            inode.chunkbits = 0
            inode.layout = LAYOUT_CHUNK_BASED
            return
        inode.layout = LAYOUT_FLAT_PLAIN
        inode.blkaddr = self._area.append_block(data) if data else 0

    def _assign_nids(self, inodes):
        """Place records in the metadata area; inline data must not cross a block.

        Records start at nid 1: the kernel reports an inode's nid as its inode number, and
        readdir() callers treat inode number 0 as an empty slot (ls would hide `.`)."""
        pos = COMPACT_SIZE
        for inode in inodes:
            head = (EXTENDED_SIZE if inode.extended else COMPACT_SIZE) + len(inode.xattrs)
            if inode.layout == LAYOUT_FLAT_INLINE and inode.inline:
                start = (pos + head) % BLOCK_SIZE
                if start + len(inode.inline) > BLOCK_SIZE:
                    pos = _round_up(pos, BLOCK_SIZE)
            inode.nid = pos // COMPACT_SIZE
            pos = _round_up(pos + inode.record_size, COMPACT_SIZE)
        if inodes[0].nid > ROOT_NID_MAX:
            raise AssertionError("root inode must come first")
        return pos

    def _write_directories(self, inodes):
        """Emit each directory's full dirent blocks (and a tail that was not inlined)."""
        for inode in inodes:
            if inode.dirents is None:
                continue
            blocks = [_dirent_block(b) for b in inode.dirents]
            if inode.dir_tail:
                inode.inline = blocks.pop()
            inode.blkaddr = 0
            if blocks:
                for data in blocks[:-1]:
                    self._area.write(data + bytes(BLOCK_SIZE - len(data)))
                self._area.write(blocks[-1])
                inode.blkaddr = self._area.end_run()
                self.stats["dir_blocks"] += len(blocks)

    # -- serialisation ----------------------------------------------------------------------

    def _serialise(self, inodes, meta_size):
        meta = bytearray(_round_up(meta_size, BLOCK_SIZE))
        for inode in inodes:
            record = self._inode_bytes(inode)
            offset = inode.nid * COMPACT_SIZE
            meta[offset:offset + len(record)] = record
        return meta

    def _inode_bytes(self, inode):
        node = inode.node
        i_format = (inode.layout << 1) | int(inode.extended)
        xattr_icount = (len(inode.xattrs) - XATTR_HEADER_SIZE) // 4 + 1 if inode.xattrs else 0
        mode = node.mode & 0xFFFF
        if type(node) is Special:
            i_u = encode_rdev(*node.rdev) if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else 0
        elif inode.layout == LAYOUT_CHUNK_BASED:
            i_u = inode.chunkbits   # chunk format: no index structs, plain block map
        else:
            i_u = inode.blkaddr
        if inode.extended:
            head = _EXTENDED.pack(i_format, xattr_icount, mode, 0, inode.size, i_u,
                                  inode.ino, node.uid, node.gid, node.mtime,
                                  node.mtime_nsec, inode.nlink)
        else:
            head = _COMPACT.pack(i_format, xattr_icount, mode, inode.nlink, inode.size, 0,
                                 i_u, inode.ino, node.uid, node.gid, 0)
        if inode.chunk_map is not None:
            self.stats["chunked_inodes"] += 1
            payload = _little_endian(inode.chunk_map)
        else:
            payload = inode.inline
        return head + inode.xattrs + payload

    def _write_superblock(self, inodes, build_time, meta_blkaddr, total_blocks, meta):
        incompat = FEATURE_INCOMPAT_CHUNKED_FILE if self.stats["chunked_inodes"] else 0
        # A deterministic volume id: the same layers give the same image, byte for byte.
        uuid = hashlib.sha256(meta).digest()[:16]
        sb = _SUPER.pack(MAGIC, 0, FEATURE_COMPAT_MTIME, BLOCK_BITS, 0, inodes[0].nid,
                         len(inodes), build_time[0], build_time[1], total_blocks,
                         meta_blkaddr, 0, uuid, b"", incompat, 0, 0, 0, 0, b"", 0, b"")
        self._file.flush()
        self._file.seek(SUPER_OFFSET)
        self._file.write(sb)
        self._file.flush()


def _pack_dirents(entries):
    """Split sorted (name, inode) entries into blocks of dirents + names."""
    blocks, current, used = [], [], 0
    for name, inode in entries:
        need = DIRENT_SIZE + len(name)
        if current and used + need > BLOCK_SIZE:
            blocks.append(current)
            current, used = [], 0
        current.append((name, inode))
        used += need
    blocks.append(current)
    return blocks


def _dirent_bytes(block):
    return sum(DIRENT_SIZE + len(name) for name, _ in block)


def _dirent_block(block):
    """One directory block: the dirent array, then the names, unpadded."""
    nameoff = DIRENT_SIZE * len(block)
    heads, names = [], []
    for name, inode in block:
        heads.append(_DIRENT.pack(inode.nid, nameoff, _file_type(inode.node), 0))
        names.append(name)
        nameoff += len(name)
    return b"".join(heads) + b"".join(names)


def _little_endian(values):
    if sys.byteorder == "little":
        return values.tobytes()
    swapped = array.array("I", values)
    swapped.byteswap()
    return swapped.tobytes()
