"""OCI images: pull, store and turn into root disks.

    import vmm.images as images
    images.pull("alpine:3.20")                  # registry -> MSB_HOME/images
    images.import_layout("./layout", "tool:1")  # OCI layout directory
    images.import_archive("img.tar", "app:1")   # `docker save` tarball
    images.inspect("alpine:3.20")["config"]["cmd"]
    images.root_disk("alpine:3.20")             # -> Path of the read-only EROFS disk
    images.remove("alpine:3.20")

Every function opens the store under MSB_HOME (default ~/.microsandbox) for the call.
Errors are vmm.images.errors.ImageError subclasses with one-line messages.
"""
import re
from datetime import datetime, timezone

from .errors import (BadReference, DigestMismatch, HostileImage, ImageError, ImageInUse,
                     ImageNotFound, ImageTooLarge, PlatformNotFound, RegistryError)
from .reference import Reference, parse as parse_reference

__all__ = ["pull", "import_layout", "import_archive", "list", "inspect", "remove", "root_disk",
           "parse_reference", "Reference", "ImageError", "BadReference", "RegistryError",
           "DigestMismatch", "ImageNotFound", "PlatformNotFound", "HostileImage", "ImageTooLarge",
           "ImageInUse"]

_HEX_PREFIX = re.compile(r"(?:sha256:)?[0-9a-f]{4,64}\Z")


def _store():
    from .store import Store
    return Store()


def pull(ref, *, insecure=False, platform=None, progress=None, force=False):
    """Pull `ref` from its registry unless the store has it (force: pull again).

    progress: None (a display on stderr if it is a terminal), False, or a callable taking
    vmm.images.progress.Event. Returns inspect()'s dict for the image, plus `cached`
    (True when the store already had it and no registry was contacted).
    """
    from .progress import resolve
    from .puller import pull_image
    store = _store()
    try:
        image, cached = pull_image(store, ref, insecure=insecure, platform=platform,
                                   progress=resolve(progress), force=force)
        out = _describe(store, image)
        out["cached"] = cached
        return out
    finally:
        store.close()


def import_layout(path, name=None, *, platform=None):
    """Import the image in the OCI layout directory `path` under reference `name`."""
    from .local import import_layout as _import
    store = _store()
    try:
        return _describe(store, _import(store, path, name, platform))
    finally:
        store.close()


def import_archive(path, name=None, *, platform=None):
    """Import a `docker save` tarball (or a tarred OCI layout) under reference `name`."""
    from .local import import_archive as _import
    store = _store()
    try:
        return _describe(store, _import(store, path, name, platform))
    finally:
        store.close()


def list():  # noqa: A001 - the issue names the API
    """Summaries of every stored reference, sorted by reference."""
    store = _store()
    try:
        return [_summary(store, img) for img in store.images()]
    finally:
        store.close()


def inspect(ref):
    """Everything known about one stored image, including its runtime config."""
    store = _store()
    try:
        return _describe(store, _find_one(store, ref))
    finally:
        store.close()


def remove(ref, force=False):
    """Remove a reference; free manifests, layers and disks no other reference uses.

    `ref` may also be a manifest digest (or a prefix of one); when several references
    share it, `force` is needed to remove them all. Returns the removed references.
    """
    store = _store()
    try:
        images = _find(store, ref)
        if len(images) > 1 and not force:
            names = ", ".join(i.reference for i in images)
            raise ImageInUse(f"{ref} is referenced by {names}; remove them by name or use force")
        refs = [i.reference for i in images]
        store.remove(refs)
        return refs
    finally:
        store.close()


def root_disk(ref, *, progress=None, max_unpacked=None, max_ratio=None, warn=None):
    """Path of the read-only root disk (EROFS) of a stored image, built on first use.

    progress, if given, is passed to the builder: progress(done_bytes, total_bytes).
    max_unpacked (bytes of file data) and max_ratio (how many times its compressed size one
    layer may unpack to; 0: no limit) override MSB_IMAGE_MAX_UNPACKED / MSB_IMAGE_MAX_RATIO.
    warn(text) hears warnings found while building (a layer whose media type lies).
    An image refused here is marked unusable in the store (list() shows why).
    """
    from . import limits
    from .disk import root_disk as _root_disk
    chosen = limits.current(unpacked_bytes=max_unpacked, expansion_ratio=max_ratio)
    store = _store()
    try:
        return _root_disk(store, _find_one(store, ref), progress=progress, limits=chosen,
                          warn=warn)
    finally:
        store.close()


# -- lookups and views ----------------------------------------------------------------------

def _find(store, text):
    if not isinstance(text, str) or not text:
        raise BadReference("empty image reference")
    try:
        image = store.lookup(str(parse_reference(text)))
        if image:
            return [image]
    except BadReference:
        if not _HEX_PREFIX.match(text):
            raise
    if _HEX_PREFIX.match(text) or text.startswith("sha256:"):
        found = store.find_by_digest(text)
        if found:
            return found
    raise ImageNotFound(f"no image {text!r} in the local store (pull it first)")


def _find_one(store, text):
    found = _find(store, text)
    if len({i.manifest_digest for i in found}) > 1:
        raise ImageError(f"{text!r} matches several images; give more of the digest")
    return found[0]


def _iso(ts):
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _summary(store, img):
    refusal = store.refusal(img.manifest_digest)
    return {
        "reference": img.reference,
        "digest": img.manifest_digest,
        "index_digest": img.index_digest,
        "size_bytes": img.size,
        "os": img.os,
        "architecture": img.architecture,
        "layer_count": len(img.layers),
        "created_at": _iso(img.pulled_at),
        "image_created": img.created,
        "source": img.source,
        "usable": refusal is None,
        "unusable_reason": refusal["reason"] if refusal else None,
        "warnings": store.warnings(img.manifest_digest),
    }


def _describe(store, img):
    from .config import parse_config
    cfg = parse_config(img.config).to_dict()
    out = _summary(store, img)
    out["media_type"] = img.media_type
    out["variant"] = img.variant
    out["config"] = {"digest": img.config_digest, **{k: cfg[k] for k in (
        "entrypoint", "cmd", "env", "working_dir", "user", "exposed_ports", "labels", "stop_signal")}}
    out["layers"] = [{"position": i, "digest": l.digest, "media_type": l.media_type, "size_bytes": l.size}
                     for i, l in enumerate(img.layers)]
    disk = store.paths.disk(img.manifest_digest)
    out["root_disk"] = str(disk) if disk.exists() else None
    return out

