"""OCI / Docker manifests and indexes: bounded parsing, validation, platform choice.

Everything here reads documents a registry or an archive gave us, so each field is type-
checked before use and every count is bounded (see limits.py). Docker schema 1 manifests
(signed, pre-2017) are refused with a clear message rather than half-supported.
"""
import json
import platform as _host
from dataclasses import dataclass, field
from typing import Optional

from .digest import parse_digest
from .errors import HostileImage, ImageError, ImageTooLarge, PlatformNotFound, RegistryError

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_V1 = ("application/vnd.docker.distribution.manifest.v1+json",
             "application/vnd.docker.distribution.manifest.v1+prettyjws")

INDEX_TYPES = (OCI_INDEX, DOCKER_LIST)
MANIFEST_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)
CONFIG_TYPES = (OCI_CONFIG, DOCKER_CONFIG)
# What we tell registries we understand, best first.
ACCEPT = ", ".join(INDEX_TYPES + MANIFEST_TYPES)

# Layer media type -> compression. Foreign (Windows base) layers are not fetchable here.
LAYER_TYPES = {
    "application/vnd.oci.image.layer.v1.tar": "none",
    "application/vnd.oci.image.layer.v1.tar+gzip": "gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd": "zstd",
    "application/vnd.oci.image.layer.nondistributable.v1.tar": "none",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip": "gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd": "zstd",
    "application/vnd.docker.image.rootfs.diff.tar.gzip": "gzip",
    "application/vnd.docker.image.rootfs.diff.tar": "none",
}


@dataclass(frozen=True)
class Platform:
    os: str
    architecture: str
    variant: Optional[str] = None

    def __str__(self):
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)

    def matches(self, other: "Platform") -> bool:
        """`self` is what was asked for; a missing variant in the request matches any."""
        if (self.os, self.architecture) != (other.os, other.architecture):
            return False
        if not self.variant:
            return True
        return self.variant == (other.variant or _default_variant(other.architecture))


def _default_variant(arch):
    return {"arm64": "v8"}.get(arch)


_ARCH_ALIASES = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "i686": "386"}


def parse_platform(text) -> Platform:
    """`linux/amd64`, `linux/arm64/v8`, `amd64` (linux assumed); raise ImageError if malformed."""
    if isinstance(text, Platform):
        return text
    parts = str(text).strip().split("/")
    if len(parts) == 1:
        parts = ["linux"] + parts
    if len(parts) > 3 or not all(parts):
        raise ImageError(f"bad platform {text!r} (want os/arch[/variant], e.g. linux/amd64)")
    arch = _ARCH_ALIASES.get(parts[1], parts[1])
    return Platform(parts[0], arch, parts[2] if len(parts) == 3 else None)


def default_platform() -> Platform:
    """linux/<host arch>: the guest runs on the host's CPU architecture."""
    return parse_platform("linux/" + _ARCH_ALIASES.get(_host.machine(), _host.machine() or "amd64"))


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    platform: Optional[Platform] = None
    annotations: dict = field(default_factory=dict, compare=False, hash=False)


@dataclass(frozen=True)
class Manifest:
    media_type: str
    config: Descriptor
    layers: tuple


def load_json(data: bytes, limit: int, depth: int, what: str) -> dict:
    """Parse a JSON object of at most `limit` bytes and `depth` nesting levels."""
    if len(data) > limit:
        raise ImageTooLarge(f"{what} is {len(data)} bytes, over the {limit}-byte limit")
    try:
        doc = json.loads(data)
    except RecursionError:
        raise HostileImage(f"{what} nests deeper than {depth} levels") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise RegistryError(f"{what} is not valid JSON: {e}") from None
    if not isinstance(doc, dict):
        raise RegistryError(f"{what} is not a JSON object")
    _check_depth(doc, depth, what)
    return doc


def _check_depth(doc, limit, what):
    stack = [(doc, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            raise HostileImage(f"{what} nests deeper than {limit} levels")
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()
        stack.extend((c, depth + 1) for c in children if isinstance(c, (dict, list)))


def kind(media_type: str, doc: dict) -> str:
    """'index' or 'manifest' from the Content-Type, the document's mediaType, or its shape."""
    declared = doc.get("mediaType") if isinstance(doc.get("mediaType"), str) else None
    for mt in (declared, (media_type or "").split(";")[0].strip()):
        if mt in INDEX_TYPES:
            return "index"
        if mt in MANIFEST_TYPES:
            return "manifest"
        if mt in DOCKER_V1:
            raise RegistryError("Docker schema 1 manifests are not supported; push the image again with a current tool")
    if doc.get("schemaVersion") == 1:
        raise RegistryError("Docker schema 1 manifests are not supported; push the image again with a current tool")
    if "manifests" in doc:
        return "index"
    if "layers" in doc:
        return "manifest"
    raise RegistryError(f"unknown manifest type {media_type or declared!r}")


def parse_descriptor(obj, what) -> Descriptor:
    if not isinstance(obj, dict):
        raise RegistryError(f"{what} is not an object")
    media_type, digest, size = obj.get("mediaType"), obj.get("digest"), obj.get("size")
    if not isinstance(media_type, str) or len(media_type) > 255:
        raise RegistryError(f"{what} has no valid mediaType")
    try:
        parse_digest(digest)
    except ValueError as e:
        raise RegistryError(f"{what}: {e}") from None
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise RegistryError(f"{what} has a bad size {size!r}")
    annotations = obj.get("annotations") if isinstance(obj.get("annotations"), dict) else {}
    return Descriptor(media_type, digest, size, _parse_platform_obj(obj.get("platform")), annotations)


def _parse_platform_obj(obj):
    if not isinstance(obj, dict):
        return None
    os_, arch, variant = obj.get("os"), obj.get("architecture"), obj.get("variant")
    if not isinstance(os_, str) or not isinstance(arch, str):
        return None
    return Platform(os_, arch, variant if isinstance(variant, str) and variant else None)


def parse_index(doc, limits) -> list:
    entries = doc.get("manifests")
    if not isinstance(entries, list):
        raise RegistryError("image index has no manifests list")
    if len(entries) > limits.index_entries:
        raise ImageTooLarge(f"image index lists {len(entries)} manifests, over the limit of {limits.index_entries}")
    return [parse_descriptor(e, f"index entry {i}") for i, e in enumerate(entries)]


def parse_manifest(doc, media_type, limits) -> Manifest:
    config = parse_descriptor(doc.get("config"), "manifest config")
    layers = doc.get("layers")
    if not isinstance(layers, list):
        raise RegistryError("manifest has no layers list")
    if len(layers) > limits.layers:
        raise ImageTooLarge(f"manifest has {len(layers)} layers, over the limit of {limits.layers}")
    parsed = tuple(parse_descriptor(l, f"layer {i}") for i, l in enumerate(layers))
    for i, layer in enumerate(parsed):
        if layer.media_type not in LAYER_TYPES:
            raise RegistryError(f"layer {i} ({layer.digest}) has unsupported media type {layer.media_type!r}")
    total = config.size + sum(l.size for l in parsed)
    if total > limits.image_bytes:
        raise ImageTooLarge(f"image is {total} bytes compressed, over the limit of {limits.image_bytes} "
                            "(raise MSB_IMAGE_MAX_BYTES)")
    declared = doc.get("mediaType") if isinstance(doc.get("mediaType"), str) else media_type
    return Manifest(declared or OCI_MANIFEST, config, parsed)


def is_runnable(desc: Descriptor) -> bool:
    """Index entries that are images, not attestations (`unknown/unknown`) or nested junk."""
    if desc.media_type not in MANIFEST_TYPES + INDEX_TYPES:
        return False
    return desc.platform is None or desc.platform.os != "unknown"


def select_platform(entries, wanted: Platform, what: str) -> Descriptor:
    """The index entry for `wanted`, or PlatformNotFound listing what the index offers."""
    candidates = [e for e in entries if is_runnable(e)]
    for entry in candidates:
        if entry.platform and wanted.matches(entry.platform):
            return entry
    offered = sorted({str(e.platform) for e in candidates if e.platform})
    raise PlatformNotFound(
        f"{what} has no image for platform {wanted}; available: {', '.join(offered) or 'none'}")
