"""Pulling an image from a registry into the store.

    reference -> manifest or index (-> platform's manifest) -> config + layer blobs
    (in parallel, each verified while streaming) -> one index transaction.
"""
import logging
import os
from concurrent.futures import ThreadPoolExecutor

from . import limits as _limits
from . import manifest as mf
from .auth import load_credentials
from .config import parse_config
from .digest import digest_of, verify_bytes
from .errors import HostileImage, ImageError, PlatformNotFound, RegistryError
from .layerstream import layer_warnings
from .progress import Event
from .reference import parse
from .registry import RegistryClient
from .store import Layer
from .transport import RetryPolicy, Transport

log = logging.getLogger("vmm.images")
MAX_INDEX_NESTING = 2


def _parallelism():
    try:
        return max(1, int(os.environ.get("MSB_PULL_PARALLEL", "4")))
    except ValueError:
        return 4


def _timeout():
    try:
        return max(0.1, float(os.environ.get("MSB_REGISTRY_TIMEOUT", "30")))
    except ValueError:
        return 30.0


def _retry_policy():
    try:
        attempts = max(1, int(os.environ.get("MSB_REGISTRY_RETRIES", "5")))
    except ValueError:
        attempts = 5
    return RetryPolicy(attempts=attempts)


def pull_image(store, text, *, insecure=False, platform=None, progress=None, force=False,
               timeout=None):
    """Pull `text` into `store`; return (StoredImage, was_cached). Cached images need no network."""
    ref = parse(text)
    name = str(ref)
    wanted = mf.parse_platform(platform) if platform else mf.default_platform()
    if not force:
        cached = store.lookup(name)
        if cached and store.is_complete(cached) and _platform_ok(cached, wanted, platform):
            if progress:
                progress(Event("done", name))
            return cached, True
    limits = _limits.current()
    client = RegistryClient(ref.registry, ref.api_host, insecure=insecure,
                            credentials=load_credentials(ref.registry), limits=limits,
                            transport=Transport(timeout=timeout or _timeout(), retry=_retry_policy()))
    if progress:
        progress(Event("resolve", name))
    with store.gc_lock(shared=True):
        resolved = _resolve(client, ref, wanted, platform is not None, limits)
        _fetch_blobs(store, client, ref.repository, resolved, name, progress)
        config_bytes = store.read_blob(resolved["manifest"].config.digest, limits.config_bytes)
        orphans = _commit(store, name, resolved, config_bytes, limits, wanted, platform is not None,
                          source=f"registry:{ref.registry}", progress=progress)
    store.delete_orphans(orphans)
    if progress:
        progress(Event("done", name))
    return store.lookup(name), False


def _platform_ok(image, wanted, explicit):
    """A cached image answers a pull unless the caller asked for another platform."""
    if not explicit or not image.os or not image.architecture:
        return True
    return wanted.matches(mf.Platform(image.os, image.architecture, image.variant))


def _resolve(client, ref, wanted, explicit_platform, limits):
    """Fetch the manifest for `ref`, walking an index to `wanted`'s manifest."""
    data, ctype = client.get_manifest(ref.repository, ref.target)
    if ref.digest:
        verify_bytes(data, ref.digest, f"manifest {ref}")
    digest = ref.digest or digest_of(data)
    index_digest = None
    for _ in range(MAX_INDEX_NESTING + 1):
        doc = mf.load_json(data, limits.manifest_bytes, limits.json_depth, f"manifest {digest}")
        if mf.kind(ctype, doc) == "manifest":
            manifest = mf.parse_manifest(doc, ctype, limits)
            return {"digest": digest, "index_digest": index_digest, "manifest": manifest,
                    "body": data, "from_index": index_digest is not None}
        entries = mf.parse_index(doc, limits)
        entry = mf.select_platform(entries, wanted, str(ref))
        index_digest = index_digest or digest
        data, ctype = client.get_manifest(ref.repository, entry.digest)
        verify_bytes(data, entry.digest, f"manifest {entry.digest} of {ref}")
        digest = entry.digest
    raise HostileImage(f"{ref}: image indexes nested deeper than {MAX_INDEX_NESTING} levels")


def _fetch_blobs(store, client, repository, resolved, name, progress):
    manifest = resolved["manifest"]
    if manifest.config.media_type not in mf.CONFIG_TYPES:
        raise ImageError(f"{name} is not a container image (config type {manifest.config.media_type})")
    if manifest.config.size > client.limits.config_bytes:
        raise HostileImage(f"{name}: config of {manifest.config.size} bytes is over the limit")
    blobs = {}
    for desc in (manifest.config,) + manifest.layers:
        blobs.setdefault(desc.digest, desc.size)

    def one(item):
        digest, size = item
        _fetch_one(store, client, repository, digest, size, name, progress)

    workers = min(_parallelism(), len(blobs))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="pull") as pool:
        # list() re-raises the first failure; the pool still waits for the rest to stop.
        futures = [pool.submit(one, item) for item in blobs.items()]
        errors = []
        for f in futures:
            try:
                f.result()
            except BaseException as e:      # noqa: B036 - re-raised below
                errors.append(e)
    if errors:
        raise errors[0]


def _fetch_one(store, client, repository, digest, size, name, progress):
    if store.has_blob(digest, size):
        if progress:
            progress(Event("blob-cached", name, digest, size, size))
        return

    def fetch(sink):
        if progress:
            progress(Event("blob-start", name, digest, sink.offset, size))
            done = [sink.offset]

            def advance(n):
                done[0] += n
                progress(Event("blob-progress", name, digest, done[0], size))
            client.fetch_blob(repository, digest, size, sink, advance)
        else:
            client.fetch_blob(repository, digest, size, sink)

    downloaded = store.ensure_blob(digest, size, fetch)
    if progress:
        progress(Event("blob-done" if downloaded else "blob-cached", name, digest, size, size))


def _commit(store, name, resolved, config_bytes, limits, wanted, explicit_platform, source,
            progress=None):
    manifest = resolved["manifest"]
    config_doc = mf.load_json(config_bytes, limits.config_bytes, limits.json_depth,
                              f"config {manifest.config.digest}")
    image_config = parse_config(config_doc)
    if explicit_platform and not resolved["from_index"]:
        _check_single_platform(name, image_config, wanted)
    if image_config.diff_ids and len(image_config.diff_ids) != len(manifest.layers):
        raise RegistryError(f"{name}: config lists {len(image_config.diff_ids)} layers, "
                            f"manifest {len(manifest.layers)}")
    layers = [Layer(l.digest, l.media_type, l.size) for l in manifest.layers]
    warnings = layer_warnings([(store.paths.blob(l.digest), l.media_type) for l in layers])
    for text in warnings:
        log.warning("%s: %s", name, text)
        if progress:
            progress(Event("warning", name, message=text))
    return store.commit_image(
        [name], manifest_digest=resolved["digest"], index_digest=resolved["index_digest"],
        media_type=manifest.media_type, manifest=resolved["body"],
        config_digest=manifest.config.digest, config=config_bytes, image_config=image_config,
        layers=layers, source=source, warnings=warnings)


def _check_single_platform(name, cfg, wanted):
    if not cfg.os or not cfg.architecture:
        return
    have = mf.Platform(cfg.os, cfg.architecture, cfg.variant)
    if not wanted.matches(have):
        raise PlatformNotFound(f"{name} has no image for platform {wanted}; available: {have}")
