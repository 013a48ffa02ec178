"""Reading one layer blob as a stream of tar members, safely.

A layer is decompressed by its magic bytes (gzip, zstd, or none; the media type only has
to name a tar layer: runtimes decompress by magic too) and parsed with the standard
library's tarfile, which knows the GNU and PAX dialects (long names, sparse files, xattr
records). What tarfile does not do for hostile input is done here:

- reads are forward-only and buffered in 1 MiB pieces; file data bypasses tarfile and is
  copied by the caller straight from this stream;
- the headers of one member may not exceed HEADER_MAX bytes (a PAX header is read into
  memory whole), and a parser that keeps reading at the end of the stream is stopped;
- a damaged header after the first ends the layer with an error (tarfile would quietly
  treat it as the end of the archive);
- truncated or corrupt gzip is reported by zlib; zstd framing is walked alongside the
  decompressor, because python-zstandard reports a cut-off frame as a clean end;
- a compressed layer may not expand beyond `max_ratio` times its blob's size once it has
  produced `ratio_floor` bytes (a gzip bomb: 16 MiB of gzip are 16 GiB of zeros), so the
  decompressor stops early instead of running through the whole bomb.

Every error names the layer.
"""
import gzip
import os
import tarfile
import zlib

import zstandard

from .errors import HostileImage, ImageError, ImageTooLarge

CHUNK = 1 << 20                 # read size: big reads keep Python out of the data path
HEADER_MAX = 8 << 20            # one tar member's headers (PAX, GNU long names, sparse maps)

GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


def media_compression(media_type):
    """"gzip", "zstd", "none" for a layer media type, None when empty (sniff only)."""
    if not media_type:
        return None
    base = media_type.lower()
    for suffix, kind in (("+gzip", "gzip"), (".gzip", "gzip"), ("+zstd", "zstd"),
                         (".zstd", "zstd")):
        if base.endswith(suffix):
            base, compression = base[:-len(suffix)], kind
            break
    else:
        compression = "none"
    if base.endswith((".tar", "+tar")) and ("layer" in base or "rootfs" in base):
        return compression
    raise ImageError(f"unsupported layer media type {media_type!r} "
                     "(want an OCI or Docker tar layer, plain, gzip or zstd)")


def sniff_compression(magic):
    """"gzip", "zstd" or "none" from a blob's first four bytes."""
    if magic.startswith(GZIP_MAGIC):
        return "gzip"
    if magic == ZSTD_MAGIC:
        return "zstd"
    return "none"


def mismatch_warning(label, media_type, found):
    """The warning for a media type that names another compression than the data has."""
    claimed = media_compression(media_type)
    # Runtimes decompress by magic whatever the media type says; so do we, and say so.
    if claimed is not None and claimed != found:
        return (f"{label}: media type says {claimed}, data is {found}; read as {found}, "
                "as runtimes do")
    return None


def layer_label(index, path):
    """How messages name layer `index` (from 1) stored at `path`: by number and blob."""
    return f"layer {index} ({os.path.basename(path)})"


def layer_warnings(layers):
    """Warnings for (path, media_type) pairs of an image's layer blobs, lowest first,
    worded as the root disk build words them; unreadable blobs are left to that build."""
    found = []
    for index, (path, media_type) in enumerate(layers, 1):
        try:
            with open(path, "rb") as blob:
                magic = blob.read(4)
            text = mismatch_warning(layer_label(index, path), media_type,
                                    sniff_compression(magic))
        except (OSError, ImageError):
            continue
        if text:
            found.append(text)
    return found


class ZstdFrames:
    """Walks zstd frame and block headers as the compressed bytes pass, to notice a
    truncated stream (python-zstandard's readers report a cut-off frame as a clean end)."""

    def __init__(self):
        self._need, self._state, self._pending = 4, "magic", bytearray()
        self._skip = 0
        self._checksum = False
        self.frames = 0

    def feed(self, data):
        view, pos = memoryview(data), 0
        while pos < len(view):
            if self._skip:
                step = min(self._skip, len(view) - pos)
                self._skip -= step
                pos += step
                continue
            step = min(self._need - len(self._pending), len(view) - pos)
            self._pending += view[pos:pos + step]
            pos += step
            while len(self._pending) == self._need and not self._skip:
                field = bytes(self._pending)
                self._pending.clear()
                self._advance(field)

    def complete(self):
        return (self._state == "magic" and not self._pending and not self._skip
                and self.frames > 0)

    def _advance(self, field):
        state = self._state
        if state == "magic":
            magic = int.from_bytes(field, "little")
            if field == ZSTD_MAGIC:
                self._state, self._need = "descriptor", 1
            elif magic & 0xFFFFFFF0 == 0x184D2A50:
                self._state, self._need = "skippable", 4
            else:
                raise ValueError("bytes after the last zstd frame are not a frame")
        elif state == "descriptor":
            flags = field[0]
            if flags & 0x08:
                raise ValueError("reserved bit set in a zstd frame header")
            single = bool(flags & 0x20)
            self._checksum = bool(flags & 0x04)
            rest = (0 if single else 1) + (0, 1, 2, 4)[flags & 3]
            rest += (1 if single else 0, 2, 4, 8)[flags >> 6]
            self._state, self._need = "header", rest
            if rest == 0:
                self._state, self._need = "block", 3
        elif state == "header":
            self._state, self._need = "block", 3
        elif state == "block":
            head = int.from_bytes(field, "little")
            kind, size = (head >> 1) & 3, head >> 3
            if kind == 3:
                raise ValueError("reserved zstd block type")
            self._skip = 1 if kind == 1 else size
            if head & 1:
                self._state, self._need = ("checksum", 4) if self._checksum else ("magic", 4)
                self.frames += 0 if self._checksum else 1
        elif state == "checksum":
            self._state, self._need = "magic", 4
            self.frames += 1
        elif state == "skippable":
            self._skip = int.from_bytes(field, "little")
            self._state, self._need = "magic", 4


class _Blob:
    """The layer file as read by the decompressor: counts bytes, checks zstd framing."""

    def __init__(self, fileobj, on_bytes, frames):
        self._file = fileobj
        self._on_bytes = on_bytes
        self.frames = frames

    def read(self, size=-1):
        data = self._file.read(size)
        if data:
            if self.frames is not None:
                self.frames.feed(data)
            self._on_bytes(len(data))
        return data

    def readable(self):
        return True


class LayerStream:
    """A forward-only, buffered view of one layer's tar bytes.

    tarfile reads headers through read()/seek()/tell(); file data bypasses tarfile and is
    copied from here into the image. Decompression errors become ImageError naming the
    layer. Reads for headers are capped per member, so a PAX header cannot eat memory.
    """

    def __init__(self, path, media_type, label, on_bytes, *, max_ratio=0, ratio_floor=0):
        self.label = label
        self.mismatch = None
        self._file = open(path, "rb")
        try:
            self.compression = self._detect(media_type)
            self.blob_bytes = os.fstat(self._file.fileno()).st_size
            self.max_ratio, self.ratio_floor = max_ratio, ratio_floor
            # Plain tar cannot expand; 0 = no ratio limit.
            self._expand_limit = (max(ratio_floor, max_ratio * self.blob_bytes)
                                  if max_ratio and self.compression != "none" else None)
            self.unpacked = 0
            frames = ZstdFrames() if self.compression == "zstd" else None
            self._blob = _Blob(self._file, on_bytes, frames)
            if self.compression == "gzip":
                self._src = gzip.GzipFile(fileobj=self._blob, mode="rb")
            elif self.compression == "zstd":
                self._src = zstandard.ZstdDecompressor().stream_reader(
                    self._blob, read_size=CHUNK, read_across_frames=True)
            else:
                self._src = self._blob
        except BaseException:
            self._file.close()
            raise
        self._buf = b""
        self._off = 0
        self._pos = 0
        self._at_eof = 0
        self.header_bytes = 0

    def _detect(self, media_type):
        found = sniff_compression(self._file.read(4))
        self._file.seek(0)
        self.mismatch = mismatch_warning(self.label, media_type, found)
        return found

    # -- raw reads --------------------------------------------------------------------------

    def _src_read(self, size):
        try:
            data = self._src.read(size)
        except ImageError:
            raise
        except (EOFError, OSError, zlib.error, zstandard.ZstdError, ValueError) as err:
            raise ImageError(f"{self.label}: corrupt or truncated {self.compression} "
                             f"stream: {err}") from None
        self.unpacked += len(data)
        if self._expand_limit is not None and self.unpacked > self._expand_limit:
            raise ImageTooLarge(
                f"{self.label}: {self.compression} data of {self.blob_bytes} bytes unpacks to "
                f"more than {self._expand_limit} bytes (limit expansion ratio: "
                f"{self.max_ratio} times the compressed size, at least {self.ratio_floor} "
                "bytes; set MSB_IMAGE_MAX_RATIO to raise it, 0 for none)")
        return data

    def _take(self, size):
        """Up to `size` bytes (fewer only at the end of the stream)."""
        have = len(self._buf) - self._off
        if have >= size:
            data = self._buf[self._off:self._off + size]
            self._off += size
            self._pos += size
            return data
        parts = [self._buf[self._off:]] if have else []
        self._buf, self._off = b"", 0
        while have < size:
            piece = self._src_read(max(size - have, CHUNK))
            if not piece:
                break
            parts.append(piece)
            have += len(piece)
        data = parts[0] if len(parts) == 1 else b"".join(parts)
        if len(data) > size:
            self._buf, data = data[size:], data[:size]
        self._pos += len(data)
        return data

    # -- the file interface tarfile uses ------------------------------------------------------

    def read(self, size=-1):
        if size is None or size < 0 or size > HEADER_MAX:
            raise HostileImage(f"{self.label}: tar header wants {size} bytes")
        self.header_bytes += size
        if self.header_bytes > HEADER_MAX:
            raise HostileImage(f"{self.label}: tar headers of one entry exceed "
                               f"{HEADER_MAX} bytes")
        data = self._take(size)
        if len(data) < size:
            # tarfile treats a short read as the end; a parser that keeps asking at the
            # end (a sparse map without its newline) must not spin forever.
            self._at_eof += 1
            if self._at_eof > 2:
                raise ImageError(f"{self.label}: tar stream ends inside a header")
        return data

    def tell(self):
        return self._pos

    def seek(self, pos, whence=0):
        if whence != 0 or pos < self._pos:
            raise ImageError(f"{self.label}: tar reader asked to seek back to {pos}")
        self.skip(pos - self._pos)
        return self._pos

    # -- data -------------------------------------------------------------------------------

    def skip(self, count):
        while count > 0:
            piece = self._take(min(count, CHUNK))
            if not piece:
                raise ImageError(f"{self.label}: tar stream truncated")
            count -= len(piece)

    def copy_to(self, write, count):
        """Pass exactly `count` bytes to write(), in large pieces."""
        while count > 0:
            piece = self._take(min(count, CHUNK))
            if not piece:
                raise ImageError(f"{self.label}: tar stream truncated inside file data")
            write(piece)
            count -= len(piece)

    def read_data(self, count):
        data = self._take(count)
        if len(data) != count:
            raise ImageError(f"{self.label}: tar stream truncated inside file data")
        return data

    def drain(self, account):
        """Read to the end (padding after the tar end marker, passed to `account` as it
        counts against the limits); check the compression ended cleanly."""
        while True:
            piece = self._take(CHUNK)
            if not piece:
                break
            account(len(piece))
        frames = self._blob.frames
        if frames is not None:
            try:
                while self._blob.read(CHUNK):
                    pass
            except ValueError as err:
                raise ImageError(f"{self.label}: corrupt zstd stream: {err}") from None
            if not frames.complete():
                raise ImageError(f"{self.label}: truncated zstd stream")

    def close(self):
        try:
            if self._src is not self._blob:
                self._src.close()
        finally:
            self._file.close()


class _StrictTarInfo(tarfile.TarInfo):
    """tarfile ends an archive quietly at a damaged header after the first; runtimes fail
    the layer instead, and so do we. A clean end (zero block or end of data) still ends."""

    @classmethod
    def fromtarfile(cls, tar):
        try:
            return super().fromtarfile(tar)
        except (tarfile.EOFHeaderError, tarfile.EmptyHeaderError):
            raise
        except tarfile.HeaderError as err:
            raise ImageError(f"{tar.fileobj.label}: bad tar header at byte "
                             f"{tar.offset}: {err}") from None


def members(stream):
    """Yield the TarInfo of each member; file data is left for the caller to read."""
    try:
        tar = tarfile.TarFile(fileobj=stream, mode="r", tarinfo=_StrictTarInfo,
                              encoding="utf-8", errors="surrogateescape")
    except tarfile.ReadError as err:
        if stream.tell() == 0 and str(err) == "empty file":
            return   # a layer with no entries at all
        raise ImageError(f"{stream.label}: not a tar archive: {err}") from None
    while True:
        stream.header_bytes = 0
        try:
            info = tar.next()
        except tarfile.TarError as err:
            raise ImageError(f"{stream.label}: bad tar stream: {err}") from None
        except (ValueError, OverflowError, UnicodeError) as err:
            raise ImageError(f"{stream.label}: bad tar header: {err}") from None
        if info is None:
            return
        tar.members.clear()   # we never look members up; do not keep them all
        yield info
