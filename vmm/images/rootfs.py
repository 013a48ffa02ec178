"""Build the read-only root disk of an image from its layer blobs.

The disk is an uncompressed EROFS image that we write ourselves while the layer tars
stream past (see erofs.py for the format and why, layers.py for the layer semantics and
the hostile-input rules). Nothing from an image is ever extracted onto the host: the only
file touched is `out_path`, and no privilege is needed to record owners, device nodes or
xattrs, since they are bytes in the image rather than properties of host files.

    layer blobs --(gzip/zstd)--> tar members --(OCI semantics)--> fstree + file data
    fstree --> directories, inodes, superblock          (erofs.ImageWriter)

File data is copied once, block-aligned, into the image as it is read; only names and
metadata (plus small files kept for inlining, bounded) stay in memory until the end.
"""
import os
import stat
import time
from dataclasses import dataclass

from .erofs import DataArea, ImageWriter
from .errors import ImageError
from .fstree import Dir
from .layers import Budget, LayerApplier
from .layerstream import CHUNK, LayerStream, layer_label
from .limits import DEFAULT_RATIO, DEFAULT_RATIO_FLOOR, DEFAULT_UNPACKED

DEFAULT_MAX_BYTES = DEFAULT_UNPACKED   # unpacked file data of one image
DEFAULT_MAX_ENTRIES = 1_000_000  # entries over all layers of one image (memory: ~0.5 KiB each)


@dataclass
class LayerSource:
    path: str          # the blob file
    media_type: str    # its OCI/Docker media type ("" to decide from the bytes alone)


def build_root_disk(layers, out_path, *, progress=None, max_bytes=DEFAULT_MAX_BYTES,
                    max_entries=DEFAULT_MAX_ENTRIES, max_ratio=DEFAULT_RATIO,
                    ratio_floor=DEFAULT_RATIO_FLOOR, warn=None):
    """Write the EROFS root disk of `layers` (lowest first) to `out_path`.

    The caller passes a temporary path and renames it into place; on any error the file is
    removed. `progress(done_bytes, total_bytes)` follows the compressed bytes read;
    `warn(text)` hears of what is odd but not refused (a media type that lies about the
    compression) as soon as it is seen. Limits: `max_bytes` of unpacked file data,
    `max_entries`, and each compressed layer at most `max_ratio` times its size once past
    `ratio_floor` bytes (0: no ratio limit); ImageTooLarge names the one hit.
    Returns stats: files, dirs, symlinks, specials, hardlinks, file_bytes, image_bytes,
    allocated_bytes (host disk the image takes: zeros are holes), dead_bytes (data of
    files later layers replaced), entries, seconds, warnings, ...
    """
    started = time.monotonic()
    total = sum(_blob_size(layer) for layer in layers)
    done = 0

    def on_bytes(count):
        nonlocal done
        done += count
        if progress is not None:
            progress(done, total)

    fd = os.open(out_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW
                 | os.O_CLOEXEC, 0o644)
    try:
        with os.fdopen(fd, "wb", buffering=CHUNK) as out:
            area = DataArea(out)
            root = Dir(stat.S_IFDIR | 0o755)
            applier = LayerApplier(root, area, Budget(max_bytes, max_entries))
            warnings = []
            for index, layer in enumerate(layers, 1):
                label = layer_label(index, layer.path)
                stream = LayerStream(layer.path, layer.media_type, label, on_bytes,
                                     max_ratio=max_ratio, ratio_floor=ratio_floor)
                try:
                    if stream.mismatch:
                        warnings.append(stream.mismatch)
                        if warn is not None:
                            warn(stream.mismatch)
                    applier.apply(stream, index)
                finally:
                    stream.close()
            stats = ImageWriter(out, area).finish(root)
            out.flush()
            os.fsync(out.fileno())
            allocated = os.fstat(out.fileno()).st_blocks * 512
    except BaseException:
        _remove(out_path)
        raise
    stats.update(applier.stats)
    stats.update(layers=len(layers), bytes=stats.get("file_bytes", 0), warnings=warnings,
                 allocated_bytes=allocated, seconds=round(time.monotonic() - started, 3))
    return stats


def _blob_size(layer):
    try:
        return os.stat(layer.path).st_size
    except OSError as err:
        raise ImageError(f"layer blob {layer.path}: {err.strerror}") from None


def _remove(path):
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
