"""Helpers to build layer blobs for the image tests (no tests here)."""
import gzip
import io
import os
import tarfile

import zstandard

from vmm.images.rootfs import LayerSource

T0 = 1_700_000_000

MEDIA = {"gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
         "zstd": "application/vnd.oci.image.layer.v1.tar+zstd",
         "none": "application/vnd.oci.image.layer.v1.tar"}

_TYPES = {"file": tarfile.REGTYPE, "dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE,
          "hardlink": tarfile.LNKTYPE, "chr": tarfile.CHRTYPE, "blk": tarfile.BLKTYPE,
          "fifo": tarfile.FIFOTYPE}


def E(name, kind="file", data=b"", mode=None, uid=0, gid=0, mtime=T0, link="", dev=(0, 0),
      xattrs=None, pax=None):
    """One tar entry: (TarInfo, data)."""
    info = tarfile.TarInfo(name)
    info.type = _TYPES[kind]
    info.mode = mode if mode is not None else (0o755 if kind == "dir" else 0o644)
    info.uid, info.gid, info.mtime = uid, gid, mtime
    info.linkname = link
    info.devmajor, info.devminor = dev
    headers = dict(pax or {})
    for key, value in (xattrs or {}).items():
        headers["SCHILY.xattr." + key] = value.decode("utf-8", "surrogateescape")
    info.pax_headers = headers
    if kind == "file":
        info.size = len(data)
    return info, data


def tar_bytes(entries, fmt=tarfile.PAX_FORMAT):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt, encoding="utf-8",
                      errors="surrogateescape") as tar:
        for info, data in entries:
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return buf.getvalue()


def compress(data, compression):
    if compression == "gzip":
        return gzip.compress(data, compresslevel=1)
    if compression == "zstd":
        return zstandard.ZstdCompressor(level=1, write_checksum=True).compress(data)
    return data


def write_layer(directory, name, entries_or_bytes, compression="gzip", media_type=None):
    """Write a layer blob into `directory`; return its LayerSource."""
    raw = entries_or_bytes if isinstance(entries_or_bytes, bytes) else tar_bytes(entries_or_bytes)
    path = os.path.join(str(directory), name)
    with open(path, "wb") as f:
        f.write(compress(raw, compression))
    return LayerSource(path, MEDIA[compression] if media_type is None else media_type)


def write_zero_bomb(directory, name, size, compression="gzip", media_type=None):
    """A layer holding one file of `size` zero bytes (a multiple of 512), written as a
    chain of gzip members (or zstd frames) so that making a GiB-sized bomb costs the test
    kilobytes and milliseconds; decompressors join the members into one tar stream."""
    assert size % 512 == 0
    info = tarfile.TarInfo("zeros")
    info.size, info.mtime, info.mode = size, T0, 0o644
    header = info.tobuf(format=tarfile.GNU_FORMAT)
    piece = 16 << 20
    zeros = compress(bytes(piece), compression)
    path = os.path.join(str(directory), name)
    with open(path, "wb") as f:
        f.write(compress(header, compression))
        left = size + 1024                     # the file, then the end-of-archive blocks
        while left >= piece:
            f.write(zeros)
            left -= piece
        if left:
            f.write(compress(bytes(left), compression))
    return LayerSource(path, MEDIA[compression] if media_type is None else media_type)
