"""The in-memory file tree a root disk is built from.

`layers.py` applies layer tars onto this tree; `erofs.py` serialises it. A node is one inode:
several directory entries may name the same `File`, `Symlink` or `Special` node (hard
links), never the same `Dir`. Regular file data is not held here (only where it already
lies in the image being written, plus at most a small tail kept for inlining), so the tree
stays small however large the image is.

Names are raw bytes, exactly as in the tar; they never contain b"/" or b"\\0" and are
never b"", b"." or b"..": `layers.py` checks that before anything reaches the tree.
"""
import stat

NAME_MAX = 255  # EROFS_NAME_LEN: the longest name a directory entry holds


class Node:
    """Metadata common to every inode. `mode` includes the S_IFMT type bits."""

    __slots__ = ("mode", "uid", "gid", "mtime", "mtime_nsec", "xattrs")

    def __init__(self, mode, uid=0, gid=0, mtime=0, mtime_nsec=0, xattrs=None):
        self.mode = mode
        self.uid = uid
        self.gid = gid
        self.mtime = mtime
        self.mtime_nsec = mtime_nsec
        self.xattrs = xattrs or {}  # full name (bytes) -> value (bytes)

    def set_meta(self, perm, uid, gid, mtime, mtime_nsec, xattrs):
        """Replace permissions, owner, time and xattrs; the file type never changes."""
        self.mode = stat.S_IFMT(self.mode) | (perm & 0o7777)
        self.uid, self.gid = uid, gid
        self.mtime, self.mtime_nsec = mtime, mtime_nsec
        self.xattrs = xattrs


class File(Node):
    """A regular file whose data already lies in the image.

    Flat files: `size` bytes; the first `size - len(tail)` bytes occupy consecutive blocks
    from `blkaddr`, and `tail` (the last partial block, or the whole of a small file) waits
    in memory to be stored inline beside the inode.
    Chunked files (sparse): `chunk_map` lists one block address per chunk of
    `block_size << chunkbits` bytes, CHUNK_HOLE for a hole.
    """

    __slots__ = ("size", "blkaddr", "tail", "chunkbits", "chunk_map")

    CHUNK_HOLE = 0xFFFFFFFF

    def __init__(self, mode, **meta):
        super().__init__(mode, **meta)
        self.size = 0
        self.blkaddr = 0
        self.tail = b""
        self.chunkbits = 0
        self.chunk_map = None  # array('I') when chunked

    def data_blocks(self, block_size):
        """Blocks of the data area this file owns (used to report dead space)."""
        if self.chunk_map is not None:
            per_chunk = 1 << self.chunkbits
            count = 0
            for index, addr in enumerate(self.chunk_map):
                if addr != self.CHUNK_HOLE:
                    remaining = self.size - index * (block_size << self.chunkbits)
                    count += min(per_chunk, -(-remaining // block_size))
            return count
        return (self.size - len(self.tail)) // block_size + (
            1 if (self.size - len(self.tail)) % block_size else 0)


class Symlink(Node):
    __slots__ = ("target",)

    def __init__(self, target, **meta):
        super().__init__(stat.S_IFLNK | 0o777, **meta)
        self.target = target


class Special(Node):
    """Character or block device, FIFO or socket; `rdev` is (major, minor)."""

    __slots__ = ("rdev",)

    def __init__(self, mode, rdev=(0, 0), **meta):
        super().__init__(mode, **meta)
        self.rdev = rdev


class Dir(Node):
    """A directory. `born[name]` is the index of the layer that last created `name` here,
    which is what an opaque whiteout needs to tell this layer's entries from lower ones."""

    __slots__ = ("children", "born")

    def __init__(self, mode=stat.S_IFDIR | 0o755, **meta):
        super().__init__(mode, **meta)
        self.children = {}
        self.born = {}

    def put(self, name, node, layer):
        self.children[name] = node
        self.born[name] = layer

    def remove(self, name):
        self.children.pop(name, None)
        self.born.pop(name, None)


def walk(root):
    """Yield (parent, name, node) for every entry below `root`, breadth first, names sorted
    bytewise, so inodes of one directory end up side by side in the image."""
    queue = [root]
    for directory in queue:
        for name in sorted(directory.children):
            node = directory.children[name]
            yield directory, name, node
            if type(node) is Dir:
                queue.append(node)
