"""Root disks: one read-only EROFS image per manifest, built once and shared.

The build itself (layers -> filesystem, with whiteouts and hostile-entry handling) lives
in rootfs.py. Here: the cache. A disk is built into tmp/ and renamed into disks/ under a
per-manifest flock, so two processes asking at once build it once and both get the path.

An image whose layers the build refuses is marked in the store with the reason, so
`msb image ls` shows it unusable and the next attempt fails at once with that reason
instead of unpacking the same layers again. A refusal for size is retried only when a
limit it was refused under has been raised; storing the image again (pull --force, load)
forgets the mark. Warnings (a layer's media type that lies) are recorded the same way.
"""
import contextlib
import logging
import os
import time

from . import errors
from . import limits as _limits
from .errors import ImageError
from .locks import file_lock

log = logging.getLogger("vmm.images")


def root_disk(store, image, progress=None, *, limits=None, warn=None):
    """Path of the cached root disk for StoredImage `image`, building it if needed.

    limits: a limits.Limits (default: limits.current(), which reads the environment).
    warn(text): hears warnings found while building (they are also logged and stored)."""
    final = store.paths.disk(image.manifest_digest)
    if final.exists():
        return final
    limits = limits or _limits.current()
    _refuse_if_marked(store, image, limits)
    algorithm, hexpart = image.manifest_digest.split(":", 1)
    with store.gc_lock(shared=True), file_lock(store.paths.lock(f"disk-{algorithm}-{hexpart}")):
        if final.exists():
            return final
        _refuse_if_marked(store, image, limits)
        missing = [l.digest for l in image.layers if not store.has_blob(l.digest, l.size)]
        if missing:
            raise ImageError(f"{image.reference}: layer blobs missing from the store "
                             f"({', '.join(missing)}); pull it again with --force")
        from .rootfs import LayerSource, build_root_disk   # heavy; only when building
        tmp = store.paths.tmp / f"disk-{hexpart}.{os.getpid()}.{time.monotonic_ns()}.erofs"
        layers = [LayerSource(path=str(store.paths.blob(l.digest)), media_type=l.media_type)
                  for l in image.layers]
        found = []

        def on_warning(text):
            found.append(text)
            log.warning("%s: %s", image.reference, text)
            if warn is not None:
                warn(text)

        try:
            build_root_disk(layers, str(tmp), progress=progress, warn=on_warning,
                            max_bytes=limits.unpacked_bytes, max_ratio=limits.expansion_ratio,
                            ratio_floor=limits.ratio_floor)
            os.chmod(tmp, 0o444)
            os.rename(tmp, final)
        except ImageError as err:
            store.mark_refused(image.manifest_digest, str(err), type(err).__name__,
                               _limit_values(limits))
            raise
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)   # renamed already, or never written
            if found:
                store.add_warnings(image.manifest_digest, found)
        store.clear_refusal(image.manifest_digest)
    return final


def _limit_values(limits):
    return {"unpacked_bytes": limits.unpacked_bytes, "expansion_ratio": limits.expansion_ratio,
            "ratio_floor": limits.ratio_floor}


def _raised(before, now):
    """Whether a limit a refusal happened under is higher now (ratio 0: no limit)."""
    for key in ("unpacked_bytes", "ratio_floor"):
        if now[key] > before.get(key, now[key]):
            return True
    old_ratio = before.get("expansion_ratio", now["expansion_ratio"])
    return old_ratio != 0 and (now["expansion_ratio"] == 0 or now["expansion_ratio"] > old_ratio)


def _refuse_if_marked(store, image, limits):
    refusal = store.refusal(image.manifest_digest)
    if refusal is None:
        return
    kind = getattr(errors, refusal["error"], ImageError)
    if not (isinstance(kind, type) and issubclass(kind, ImageError)):
        kind = ImageError
    if issubclass(kind, errors.ImageTooLarge) and _raised(refusal["limits"], _limit_values(limits)):
        return   # a higher limit may let it through: try again
    hint = ("raise the limit named there, or remove it (msb image rm)"
            if issubclass(kind, errors.ImageTooLarge) else "remove it (msb image rm)")
    raise kind(f"image {image.reference} is unusable: its layers were refused: "
               f"{refusal['reason']}; {hint}")
