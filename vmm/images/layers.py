"""Apply OCI image layers, as tar streams, onto an in-memory `fstree`.

Each layer blob is read once, front to back (layerstream.py decompresses and parses it),
and its members are applied with the semantics container runtimes use (containerd's
applier, overlayfs whiteouts):

- `.wh.NAME` deletes NAME (and everything under it) from the layers below;
  `.wh..wh..opq` empties its directory of everything lower layers put there (what this
  layer holds survives, including directories it only implies by deeper paths, as in
  overlayfs' upper directory); other `.wh..wh.*` entries are aufs bookkeeping and are
  ignored, as Docker ignores them.
- An entry replaces whatever had its name, except that a directory over a directory keeps
  the contents and takes the new metadata (mode, owner, time, xattrs: the upper directory's
  own, as overlayfs shows them).
- Hard links name an entry already in the tree (this layer or below), by path; they share
  its inode, and the link header's owner, mode and time apply to it as link(2)+chown+chmod
  do in runtimes. Linking a directory, or something missing, is an error.
- Parent directories a path implies are created (0755, root-owned).
- Regular file data goes straight into the image's data area as it is read; sparse files
  (GNU and PAX formats) keep their holes, and blocks of zeros in any file are holes in the
  host file (erofs.DataArea), so zeros cost no host disk.

Hostile input, and what we decide:
- Names are bytes; NUL, components over 255 bytes, paths over 4096 bytes and any `..`
  component are rejected (runtimes clamp `..` at the root; no legitimate layer needs it).
  Leading `/` and `.` components are dropped, as runtimes do, so absolute names land
  inside the image.
- A path whose parent is a symlink in the tree is resolved the way runtimes resolve it
  (containerd's scoped RootPath, Docker's chroot): through the tree, an absolute target
  meaning the image root. Unlike them we never clamp: a target whose `..` would climb
  above the root makes the layer HostileImage. Symlinks are only ever followed inside this
  tree; nothing on the host is ever opened by a name from an image.
- Limits: total file bytes unpacked, holes of sparse tar files excepted (max_bytes), entries
  (max_entries, implied directories included), one file's apparent size, sparse block maps
  -> ImageTooLarge. The expansion ratio of a compressed layer is checked in layerstream.py.
  Stream-level defences (header sizes, truncated gzip/zstd/tar) are in layerstream.py.
"""
import array
import stat

from . import erofs
from .errors import HostileImage, ImageError, ImageTooLarge
from .fstree import NAME_MAX, Dir, File, Special, Symlink
from .layerstream import members

PATH_MAX = 4096                 # runtimes extracting a longer name fail with ENAMETOOLONG
SYMLINK_MAX = PATH_MAX - 1      # what symlink(2) accepts
MAX_FILE_SIZE = 1 << 44         # apparent size of one file (sparse files can exceed max_bytes)
MAX_CHUNKS = 1 << 18            # entries in one sparse file's block map (1 MiB of metadata)
MAP_BUDGET = 256 << 20          # block maps of all sparse files, held in memory until the end
INLINE_BUDGET = 64 << 20        # small files and tails held in memory for inlining
HOLE_CHUNK_BITS = 8             # regular files: aligned 1 MiB runs of zeros become holes
SYMLINK_HOPS = 40               # Linux's MAXSYMLINKS

WHITEOUT = b".wh."
WHITEOUT_META = b".wh..wh."
OPAQUE = b".wh..wh..opq"


class Budget:
    """Counts what the layers of one image may still consume."""

    def __init__(self, max_bytes, max_entries, max_maps=MAP_BUDGET):
        self.max_bytes = max_bytes
        self.max_entries = max_entries
        self.max_maps = max_maps
        self.bytes = 0
        self.entries = 0
        self.inline = 0
        self.maps = 0

    def add_bytes(self, count, what):
        self.bytes += count
        if self.bytes > self.max_bytes:
            raise ImageTooLarge(f"{what}: image unpacks to more than {self.max_bytes} bytes "
                                "(limit max_bytes: set MSB_IMAGE_MAX_UNPACKED to raise it)")

    def add_entry(self, what):
        self.entries += 1
        if self.entries > self.max_entries:
            raise ImageTooLarge(f"{what}: more than {self.max_entries} entries, implied "
                                "directories included (limit max_entries)")


def _fs_bytes(text):
    return text.encode("utf-8", "surrogateescape")


def split_path(name, what):
    """Components of a tar path, leading `/` and `.` dropped; reject what cannot be safe."""
    if b"\0" in name:
        raise HostileImage(f"{what}: NUL byte in path {name!r}")
    if len(name) > PATH_MAX:
        raise ImageError(f"{what}: path longer than {PATH_MAX} bytes")
    parts = [part for part in name.split(b"/") if part not in (b"", b".")]
    for index, part in enumerate(parts):
        if part == b"..":
            raise HostileImage(f"{what}: path {name!r} contains '..'")
        # the whiteout of a 255-byte name is 4 bytes longer; it never becomes an entry
        limit = NAME_MAX + len(WHITEOUT) if (index == len(parts) - 1
                                             and part.startswith(WHITEOUT)) else NAME_MAX
        if len(part) > limit:
            raise ImageError(f"{what}: name longer than {NAME_MAX} bytes in {name!r}")
    return parts


def _mtime(info):
    """(seconds, nanoseconds) with the full precision of a PAX mtime."""
    text = info.pax_headers.get("mtime")
    if text:
        try:
            sign = -1 if text.startswith("-") else 1
            whole, _, frac = text.lstrip("+-").partition(".")
            seconds = int(whole or "0")
            nanos = int((frac + "000000000")[:9]) if frac else 0
            if sign < 0 and nanos:
                return -seconds - 1, 1_000_000_000 - nanos
            return sign * seconds, nanos
        except ValueError:
            pass
    return int(info.mtime), 0


class LayerApplier:
    """Applies layers in order onto one tree, writing file data into `area`."""

    def __init__(self, root, area, budget):
        self.root = root
        self.area = area
        self.budget = budget
        self.stats = {"entries": 0, "whiteouts": 0, "opaque_dirs": 0, "tar_bytes": 0,
                      "sparse_files": 0}

    def apply(self, stream, layer):
        """Apply every member of `stream` (layer number `layer`, from 1) to the tree."""
        for info in members(stream):
            name = _fs_bytes(info.name)
            what = f"{stream.label}: {name.decode('utf-8', 'replace')!r}"
            self.budget.add_entry(what)
            self.stats["entries"] += 1
            self._apply_member(stream, info, name, what, layer)
        stream.drain(lambda count: self.budget.add_bytes(count, f"{stream.label}: padding"))
        self.stats["tar_bytes"] += stream.tell()

    # -- one member ---------------------------------------------------------------------------

    def _apply_member(self, stream, info, name, what, layer):
        parts = split_path(name, what)
        meta = self._meta(info, what)
        if not parts:
            if not info.isdir():
                raise HostileImage(f"{what}: a non-directory entry for the image root")
            self.root.set_meta(*meta)
            return
        base = parts[-1]
        if base.startswith(WHITEOUT):
            self._whiteout(parts, what, layer, meta)
            return
        parent = self._resolve_dir(parts[:-1], what, layer, meta[3])
        if info.isreg():
            node = self._regular(stream, info, what, meta)
        elif info.isdir():
            existing = parent.children.get(base)
            if type(existing) is Dir:
                existing.set_meta(*meta)
                parent.born[base] = layer
                return
            node = Dir(stat.S_IFDIR)
        elif info.issym():
            node = Symlink(self._symlink_target(info, what))
        elif info.islnk():
            node = self._hardlink_target(info, what, layer, meta)
            parent.put(base, node, layer)
            return
        elif info.ischr() or info.isblk():
            node = Special(stat.S_IFCHR if info.ischr() else stat.S_IFBLK,
                           self._rdev(info, what))
        elif info.isfifo():
            node = Special(stat.S_IFIFO)
        else:
            raise ImageError(f"{what}: unsupported tar entry type {info.type!r}")
        if type(node) is not Symlink:
            node.set_meta(*meta)
        else:
            node.set_meta(0o777, *meta[1:])
        parent.put(base, node, layer)

    def _meta(self, info, what):
        for value, field in ((info.uid, "uid"), (info.gid, "gid")):
            if not 0 <= value <= 0xFFFFFFFF:
                raise ImageError(f"{what}: {field} {value} out of range")
        xattrs = {}
        for key, value in info.pax_headers.items():
            if key.startswith("SCHILY.xattr."):
                xattrs[_fs_bytes(key[len("SCHILY.xattr."):])] = _fs_bytes(value)
        seconds, nanos = _mtime(info)
        if not -(1 << 62) < seconds < (1 << 62):
            raise ImageError(f"{what}: mtime {seconds} out of range")
        return info.mode & 0o7777, info.uid, info.gid, seconds, nanos, xattrs

    def _whiteout(self, parts, what, layer, meta):
        base = parts[-1]
        if base == OPAQUE:
            directory = self._resolve_dir(parts[:-1], what, layer, meta[3])
            self._make_opaque(directory, layer)
            self.stats["opaque_dirs"] += 1
            return
        if base.startswith(WHITEOUT_META):
            return   # aufs metadata such as .wh..wh.plnk: not part of the image
        victim = base[len(WHITEOUT):]
        if victim in (b"", b".", b".."):
            raise HostileImage(f"{what}: whiteout of {victim!r}")
        directory = self._resolve_dir(parts[:-1], what, layer, meta[3], create=False)
        if directory is not None:
            directory.remove(victim)
        self.stats["whiteouts"] += 1

    def _make_opaque(self, directory, layer):
        """Drop everything under `directory` that this layer did not put there."""
        stack = [directory]
        while stack:
            current = stack.pop()
            for name in list(current.children):
                child = current.children[name]
                if current.born.get(name) != layer:
                    current.remove(name)
                elif type(child) is Dir:
                    stack.append(child)

    # -- paths --------------------------------------------------------------------------------

    def _resolve_dir(self, parts, what, layer, mtime, create=True):
        """The directory `parts` names, following symlinks inside the tree only.

        Missing directories are created when `create`, else None is returned. A symlink
        whose target climbs above the root, a loop, or a non-directory on the way is an
        error: a runtime would write outside the image or fail there."""
        pending = list(reversed(parts))
        trail = [self.root]
        hops = 0
        while pending:
            name = pending.pop()
            if name in (b"", b"."):
                continue
            if name == b"..":
                if len(trail) == 1:
                    raise HostileImage(f"{what}: path leads through a symlink out of the "
                                       "image root")
                trail.pop()
                continue
            current = trail[-1]
            node = current.children.get(name)
            if node is None:
                if not create:
                    return None
                if len(name) > NAME_MAX:
                    raise ImageError(f"{what}: name longer than {NAME_MAX} bytes")
                self.budget.add_entry(what)   # implied directories cost like entries
                node = Dir(stat.S_IFDIR | 0o755, mtime=mtime)
                current.put(name, node, layer)
            if type(node) is Symlink:
                hops += 1
                if hops > SYMLINK_HOPS:
                    raise HostileImage(f"{what}: too many levels of symlinks")
                if node.target.startswith(b"/"):
                    trail = [self.root]
                pending.extend(reversed(node.target.split(b"/")))
                continue
            if type(node) is not Dir:
                raise ImageError(f"{what}: {name!r} on the way is not a directory")
            if create:
                # A layer holding a/b/c holds a/b too (overlayfs would have it in the upper
                # directory), so an opaque whiteout of `a` in this layer keeps it.
                current.born[name] = layer
            trail.append(node)
        return trail[-1]

    def _symlink_target(self, info, what):
        target = _fs_bytes(info.linkname)
        if not target or b"\0" in target or len(target) > SYMLINK_MAX:
            raise ImageError(f"{what}: bad symlink target {target[:64]!r}")
        return target

    def _hardlink_target(self, info, what, layer, meta):
        link = _fs_bytes(info.linkname)
        parts = split_path(link, what)
        if not parts:
            raise HostileImage(f"{what}: hard link to the image root")
        directory = self._resolve_dir(parts[:-1], what, layer, meta[3], create=False)
        target = directory.children.get(parts[-1]) if directory is not None else None
        if target is None:
            raise ImageError(f"{what}: hard link target {link!r} does not exist")
        if type(target) is Dir:
            raise HostileImage(f"{what}: hard link to directory {link!r}")
        if type(target) is not Symlink:
            perm, uid, gid, seconds, nanos, xattrs = meta
            target.set_meta(perm, uid, gid, seconds, nanos, xattrs or target.xattrs)
        return target

    def _rdev(self, info, what):
        major, minor = info.devmajor, info.devminor
        if not (0 <= major <= 0xFFF and 0 <= minor <= 0xFFFFF):
            raise ImageError(f"{what}: device number {major}:{minor} out of range")
        return major, minor

    # -- file data ------------------------------------------------------------------------------

    def _regular(self, stream, info, what, meta):
        size = info.size
        if not 0 <= size <= MAX_FILE_SIZE:
            raise ImageTooLarge(f"{what}: file size {size} out of range")
        node = File(stat.S_IFREG)
        node.size = size
        node.xattrs = meta[5]
        stream.seek(info.offset_data)
        if info.sparse is not None:
            self._sparse(stream, node, info.sparse, what)
            self.stats["sparse_files"] += 1
        else:
            self.budget.add_bytes(size, what)
            self._flat(stream, node)
        return node

    def _flat(self, stream, node):
        """Full blocks to the data area now; a small tail waits in memory to go inline.

        Zeros cost no host disk (erofs.DataArea leaves holes); an aligned HOLE_CHUNK of
        zeros also becomes a hole in the image itself, so the file turns chunk-based and
        the image is no larger than its data (a file of zeros is a few bytes of map)."""
        size = node.size
        rest = size % erofs.BLOCK_SIZE
        head = erofs.EXTENDED_SIZE
        if node.xattrs:
            head += erofs.XATTR_HEADER_SIZE + sum(
                len(k) + len(v) + 8 for k, v in node.xattrs.items())
        inline = rest and not (rest > erofs.INLINE_MAX or head + rest > erofs.BLOCK_SIZE
                               or self.budget.inline + rest > INLINE_BUDGET)
        aligned = size - rest
        if not aligned:
            if inline:
                node.tail = stream.read_data(rest)
                self.budget.inline += rest
            elif rest:
                node.blkaddr = self.area.next_block
                stream.copy_to(self.area.write, rest)
                self.area.end_run()
            return
        chunkbits = _chunkbits(size, HOLE_CHUNK_BITS)
        chunk = erofs.BLOCK_SIZE << chunkbits
        holes = []
        for index in range(-(-aligned // chunk)):
            length = min(chunk, aligned - index * chunk)
            before = self.area.data_end
            stream.copy_to(self.area.write, length)
            if self.area.data_end == before:      # nothing but zeros: take it back
                self.area.rewind(length)
                holes.append(index)
        if not holes:
            if inline:
                node.tail = stream.read_data(rest)
                self.budget.inline += rest
            elif rest:
                stream.copy_to(self.area.write, rest)
            node.blkaddr = self.area.end_run()
            return
        # Chunk-based: nothing inline. The last partial chunk (or the one `rest` opens)
        # must hold its blocks contiguously, so a hole there is filled back in (as a host
        # hole: write_zeros only seeks).
        count = -(-size // chunk)
        if rest:
            last = count - 1
            if holes[-1] == last:
                holes.pop()
                self.area.write_zeros(aligned - last * chunk)
            stream.copy_to(self.area.write, rest)
        self.budget.maps += 4 * count
        if self.budget.maps > self.budget.max_maps:
            raise ImageTooLarge(f"file maps exceed {self.budget.max_maps} bytes")
        node.chunk_map = _chunk_map(count, holes, self.area.end_run(), chunkbits, size)
        node.chunkbits = chunkbits

    def _sparse(self, stream, node, regions, what):
        """Chunk-based file: chunks that hold data are written whole, holes are skipped."""
        size = node.size
        regions = [(offset, length) for offset, length in regions if length]
        end = 0
        for offset, length in regions:
            if offset < end or length < 0 or offset + length > size:
                raise HostileImage(f"{what}: bad sparse map entry ({offset}, {length})")
            end = offset + length
        self.budget.add_bytes(sum(length for _, length in regions), what)
        block = erofs.BLOCK_SIZE
        chunkbits = _chunkbits(size, 0)
        chunk = block << chunkbits
        self.budget.maps += 4 * -(-size // chunk)
        if self.budget.maps > self.budget.max_maps:
            raise ImageTooLarge(f"{what}: sparse file maps exceed {self.budget.max_maps} bytes")
        chunk_map = array.array("I", [File.CHUNK_HOLE]) * -(-size // chunk)

        def chunk_length(index):
            return min(chunk, -(-(size - index * chunk) // block) * block)

        current, filled = -1, 0
        for offset, length in regions:
            while length:
                index = offset // chunk
                if index != current:
                    if current >= 0:
                        self._zero_fill(chunk_length(current) - filled, what)
                    current, filled = index, 0
                    chunk_map[index] = self.area.block_in_run
                within = offset - index * chunk
                self._zero_fill(within - filled, what)
                step = min(length, chunk - within)
                stream.copy_to(self.area.write, step)
                filled = within + step
                offset += step
                length -= step
        if current >= 0:
            self._zero_fill(chunk_length(current) - filled, what)
            self.area.end_run()
        node.chunk_map, node.chunkbits = chunk_map, chunkbits

    def _zero_fill(self, count, what):
        if count > 0:
            self.budget.add_bytes(count, what)
            self.area.write_zeros(count)


def _chunkbits(size, least):
    """Chunk size (as a shift of the block size) of a chunk-based file of `size` bytes:
    at least `least`, and big enough that the map has at most MAX_CHUNKS entries."""
    chunkbits = least
    while -(-size // (erofs.BLOCK_SIZE << chunkbits)) > MAX_CHUNKS:
        chunkbits += 1
    return chunkbits


def _chunk_map(count, holes, first_block, chunkbits, size):
    """The block map of a file whose non-hole chunks lie back to back from `first_block`."""
    chunk_map = array.array("I", [File.CHUNK_HOLE]) * count
    hole_set = set(holes)
    block = first_block
    per_chunk = 1 << chunkbits
    for index in range(count):
        if index not in hole_set:
            chunk_map[index] = block
            block += per_chunk
    return chunk_map
