"""Root disks: one read-only EROFS image per manifest, built once and shared.

The build itself (layers -> filesystem, with whiteouts and hostile-entry handling) lives
in rootfs.py. Here: the cache. A disk is built into tmp/ and renamed into disks/ under a
per-manifest flock, so two processes asking at once build it once and both get the path.
"""
import contextlib
import os
import time

from .errors import ImageError
from .locks import file_lock


def root_disk(store, image, progress=None):
    """Path of the cached root disk for StoredImage `image`, building it if needed."""
    final = store.paths.disk(image.manifest_digest)
    if final.exists():
        return final
    algorithm, hexpart = image.manifest_digest.split(":", 1)
    with store.gc_lock(shared=True), file_lock(store.paths.lock(f"disk-{algorithm}-{hexpart}")):
        if final.exists():
            return final
        missing = [l.digest for l in image.layers if not store.has_blob(l.digest, l.size)]
        if missing:
            raise ImageError(f"{image.reference}: layer blobs missing from the store "
                             f"({', '.join(missing)}); pull it again with --force")
        from .rootfs import LayerSource, build_root_disk   # heavy; only when building
        tmp = store.paths.tmp / f"disk-{hexpart}.{os.getpid()}.{time.monotonic_ns()}.erofs"
        layers = [LayerSource(path=str(store.paths.blob(l.digest)), media_type=l.media_type)
                  for l in image.layers]
        try:
            build_root_disk(layers, str(tmp), progress=progress)
            os.chmod(tmp, 0o444)
            os.rename(tmp, final)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)   # renamed already, or never written
    return final
