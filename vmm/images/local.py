"""Images from local sources: an OCI image layout directory, or a `docker save` tarball.

Both are untrusted input. Nothing is extracted: blobs are read by digest (a validated
`algorithm:hex`, so it cannot name a path outside the layout) and copied into the store
with their digest checked; tar members are looked up by name inside the archive.
"""
import json
import logging
import os
import posixpath
import tarfile

from . import limits as _limits
from . import manifest as mf
from .config import parse_config
from .digest import digest_of, parse_digest, verify_bytes
from .errors import BadReference, DigestMismatch, HostileImage, ImageError, ImageNotFound, ImageTooLarge
from .layerstream import layer_warnings
from .reference import parse
from .store import Layer

log = logging.getLogger("vmm.images")

REF_NAME = "org.opencontainers.image.ref.name"
MAX_MEMBERS = 100_000


# -- a source of blobs: a directory or a tar archive ---------------------------------------

class LayoutDir:
    def __init__(self, root):
        self.root = root

    def describe(self):
        return f"OCI layout {self.root}"

    def exists(self, name):
        return os.path.lexists(os.path.join(self.root, name))

    def open(self, name):
        path = os.path.join(self.root, name)
        try:
            # O_NOFOLLOW: a blob that is a symlink could point anywhere on the host.
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            raise ImageError(f"{self.describe()} has no {name}") from None
        except OSError as e:
            raise HostileImage(f"{self.describe()}: cannot open {name}: {e.strerror}") from None
        return os.fdopen(fd, "rb")


class TarSource:
    def __init__(self, path):
        self.path = path
        try:
            self.tar = tarfile.open(path, "r:*")
            members = self.tar.getmembers()
        except (tarfile.TarError, EOFError, OSError) as e:
            raise ImageError(f"{path} is not a readable tar archive: {e}") from None
        if len(members) > MAX_MEMBERS:
            raise ImageTooLarge(f"{path} has over {MAX_MEMBERS} entries")
        self.members = {posixpath.normpath(m.name.lstrip("/")): m for m in members}

    def describe(self):
        return f"archive {self.path}"

    def exists(self, name):
        return name in self.members

    def open(self, name):
        member = self.members.get(name)
        if member is None:
            raise ImageError(f"{self.describe()} has no {name}")
        try:
            # tarfile resolves (sym)links to other members of the same archive only.
            f = self.tar.extractfile(member)
        except (KeyError, RecursionError, tarfile.TarError):
            raise HostileImage(f"{self.describe()}: {name} is a link to nothing in the archive") from None
        if f is None:
            raise HostileImage(f"{self.describe()}: {name} is not a regular file")
        return f

    def close(self):
        self.tar.close()


def _read_json(source, name, limit, limits):
    with source.open(name) as f:
        data = f.read(limit + 1)
    return data, mf.load_json(data, limit, limits.json_depth, f"{source.describe()}: {name}")


def _blob_name(digest):
    algorithm, hexpart = parse_digest(digest)
    return f"blobs/{algorithm}/{hexpart}"


# -- OCI layout -------------------------------------------------------------------------------

def import_layout(store, path, name=None, platform=None, source=None):
    """Import the image of the OCI layout at `path` (a directory) under `name`."""
    src = source or LayoutDir(os.fspath(path))
    if source is None and not os.path.isdir(path):
        raise ImageError(f"{path} is not a directory")
    limits = _limits.current()
    if not src.exists("oci-layout") or not src.exists("index.json"):
        raise ImageError(f"{src.describe()} is not an OCI image layout (no oci-layout or index.json)")
    _, index = _read_json(src, "index.json", limits.manifest_bytes, limits)
    entries = mf.parse_index(index, limits)
    wanted = mf.parse_platform(platform) if platform else mf.default_platform()
    entry = _choose_entry(entries, name, wanted, src)
    if name is None:
        name = entry.annotations.get(REF_NAME)
        if not isinstance(name, str) or not name:
            raise BadReference(f"{src.describe()}: no name given and the layout names none")
    ref = parse(name)
    index_digest = None
    for _ in range(3):
        body = _read_blob_bytes(src, entry.digest, limits.manifest_bytes)
        doc = mf.load_json(body, limits.manifest_bytes, limits.json_depth, f"manifest {entry.digest}")
        if mf.kind(entry.media_type, doc) == "manifest":
            break
        index_digest = index_digest or entry.digest
        entry = mf.select_platform(mf.parse_index(doc, limits), wanted, src.describe())
    else:
        raise HostileImage(f"{src.describe()}: image indexes nested too deep")
    manifest = mf.parse_manifest(doc, entry.media_type, limits)
    return _import_manifest(store, src, str(ref), entry.digest, index_digest, manifest, body, limits,
                            source=f"oci-layout:{src.path if hasattr(src, 'path') else src.root}")


def _choose_entry(entries, name, wanted, src):
    runnable = [e for e in entries if mf.is_runnable(e)]
    if not runnable:
        raise ImageNotFound(f"{src.describe()} lists no image")
    if name:
        ref = parse(name)
        for e in runnable:
            if e.annotations.get(REF_NAME) in (name, ref.tag, str(ref)):
                return e
    if len(runnable) == 1:
        return runnable[0]
    if all(e.platform for e in runnable):
        return mf.select_platform(runnable, wanted, src.describe())
    names = sorted(str(e.annotations.get(REF_NAME)) for e in runnable)
    raise ImageError(f"{src.describe()} holds several images ({', '.join(names)}); name one")


def _read_blob_bytes(src, digest, limit):
    with src.open(_blob_name(digest)) as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise ImageTooLarge(f"{src.describe()}: {digest} is over the {limit}-byte limit")
    verify_bytes(data, digest, f"{src.describe()}: {digest}")
    return data


def _copy_blob(store, src, digest, size):
    def fetch(sink):
        with src.open(_blob_name(digest)) as f:
            if sink.offset:
                f.seek(sink.offset)
            while sink.offset < size:
                chunk = f.read(min(1 << 20, size - sink.offset))
                if not chunk:
                    raise ImageError(f"{src.describe()}: {digest} is shorter than its {size} bytes")
                sink.write(chunk)
            if f.read(1):
                raise DigestMismatch(f"{src.describe()}: {digest} is longer than its {size} bytes")
    store.ensure_blob(digest, size, fetch)


def _import_manifest(store, src, name, manifest_digest, index_digest, manifest, body, limits, source):
    if manifest.config.media_type not in mf.CONFIG_TYPES:
        raise ImageError(f"{src.describe()}: not a container image (config type {manifest.config.media_type})")
    if manifest.config.size > limits.config_bytes:
        raise ImageTooLarge(f"{src.describe()}: config over the {limits.config_bytes}-byte limit")
    with store.gc_lock(shared=True):
        for desc in (manifest.config,) + manifest.layers:
            _copy_blob(store, src, desc.digest, desc.size)
        config = store.read_blob(manifest.config.digest, limits.config_bytes)
        image_config = parse_config(mf.load_json(config, limits.config_bytes, limits.json_depth, "config"))
        layers = [Layer(l.digest, l.media_type, l.size) for l in manifest.layers]
        warnings = layer_warnings([(store.paths.blob(l.digest), l.media_type) for l in layers])
        for text in warnings:
            log.warning("%s: %s", name, text)
        orphans = store.commit_image(
            [name], manifest_digest=manifest_digest, index_digest=index_digest,
            media_type=manifest.media_type, manifest=body, config_digest=manifest.config.digest,
            config=config, image_config=image_config, layers=layers, source=source,
            warnings=warnings)
    store.delete_orphans(orphans)
    return store.lookup(name)


# -- docker save ------------------------------------------------------------------------------

def import_archive(store, path, name=None, platform=None):
    """Import a `docker save` tarball (legacy manifest.json or OCI layout inside)."""
    if not os.path.isfile(path):
        raise ImageError(f"{path} is not a file")
    src = TarSource(os.fspath(path))
    try:
        if src.exists("oci-layout") and src.exists("index.json") and not src.exists("manifest.json"):
            return import_layout(store, path, name, platform, source=src)
        if not src.exists("manifest.json"):
            raise ImageError(f"{path} is neither a docker-save archive nor an OCI layout archive")
        return _import_docker_save(store, src, name)
    finally:
        src.close()


def _import_docker_save(store, src, name):
    limits = _limits.current()
    with src.open("manifest.json") as f:
        data = f.read(limits.manifest_bytes + 1)
    if len(data) > limits.manifest_bytes:
        raise ImageTooLarge(f"{src.describe()}: manifest.json over the limit")
    try:
        entries = json.loads(data)
    except (ValueError, RecursionError):
        raise ImageError(f"{src.describe()}: manifest.json is not valid JSON") from None
    entry = _choose_save_entry(entries, name, src)
    if name is None:
        tags = entry.get("RepoTags") or []
        if not tags:
            raise BadReference(f"{src.describe()}: no name given and the archive names none")
        name = tags[0]
    ref = parse(name)
    config_name, layer_names = entry.get("Config"), entry.get("Layers")
    if not isinstance(config_name, str) or not isinstance(layer_names, list) \
            or not all(isinstance(l, str) for l in layer_names):
        raise ImageError(f"{src.describe()}: manifest.json entry lacks Config or Layers")
    if len(layer_names) > limits.layers:
        raise ImageTooLarge(f"{src.describe()}: {len(layer_names)} layers, over the limit of {limits.layers}")
    config_member = posixpath.normpath(config_name)
    config, _ = _read_json(src, config_member, limits.config_bytes, limits)
    image_config = parse_config(json.loads(config))

    with store.gc_lock(shared=True):
        config_digest, config_size = store.put_stream(_BytesReader(config))
        layers = [_import_save_layer(store, src, posixpath.normpath(n), i, image_config, limits)
                  for i, n in enumerate(layer_names)]
        body = _synth_manifest(config_digest, config_size, layers)
        manifest_digest = digest_of(body)
        orphans = store.commit_image(
            [str(ref)], manifest_digest=manifest_digest, index_digest=None,
            media_type=mf.OCI_MANIFEST, manifest=body, config_digest=config_digest, config=config,
            image_config=image_config, layers=layers, source=f"docker-archive:{src.path}")
    store.delete_orphans(orphans)
    return store.lookup(str(ref))


def _choose_save_entry(entries, name, src):
    if not isinstance(entries, list) or not entries or not all(isinstance(e, dict) for e in entries):
        raise ImageError(f"{src.describe()}: manifest.json lists no image")
    if len(entries) == 1:
        return entries[0]
    if name:
        wanted = str(parse(name))
        for e in entries:
            tags = [t for t in e.get("RepoTags") or [] if isinstance(t, str)]
            if name in tags or wanted in {str(parse(t)) for t in tags}:
                return e
    tags = sorted(t for e in entries for t in (e.get("RepoTags") or []) if isinstance(t, str))
    raise ImageError(f"{src.describe()} holds {len(entries)} images ({', '.join(tags)}); name one")


def _sniff_media_type(head):
    if head.startswith(b"\x1f\x8b"):
        return "application/vnd.oci.image.layer.v1.tar+gzip"
    if head.startswith(b"\x28\xb5\x2f\xfd"):
        return "application/vnd.oci.image.layer.v1.tar+zstd"
    return "application/vnd.oci.image.layer.v1.tar"


def _import_save_layer(store, src, member, position, image_config, limits):
    with src.open(member) as f:
        head = f.read(4)
        f.seek(0)
        digest, size = store.put_stream(f, limit=limits.image_bytes)
    media_type = _sniff_media_type(head)
    # An uncompressed layer's digest is its diff_id: check it against the config.
    if media_type.endswith(".tar") and position < len(image_config.diff_ids) \
            and image_config.diff_ids[position] != digest:
        raise DigestMismatch(f"{src.describe()}: layer {member} hashes to {digest} but the config "
                             f"says {image_config.diff_ids[position]}")
    return Layer(digest, media_type, size)


def _synth_manifest(config_digest, config_size, layers):
    doc = {"schemaVersion": 2, "mediaType": mf.OCI_MANIFEST,
           "config": {"mediaType": mf.OCI_CONFIG, "digest": config_digest, "size": config_size},
           "layers": [{"mediaType": l.media_type, "digest": l.digest, "size": l.size} for l in layers]}
    return json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()


class _BytesReader:
    def __init__(self, data):
        self.data, self.pos = data, 0

    def read(self, n):
        chunk = self.data[self.pos:self.pos + n]
        self.pos += len(chunk)
        return chunk
