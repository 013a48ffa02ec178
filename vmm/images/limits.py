"""Bounds on everything a registry or an image archive hands us.

Manifests, configs and token replies are read into memory, so their size is capped before
reading; layer sizes come from manifests we already bounded. Unpacking is bounded too, since
a few MiB of gzip can stand for many GiB of zeros: the file data of one image
(`unpacked_bytes`) and how far one layer may expand beyond its compressed size
(`expansion_ratio`, checked once the layer has unpacked `ratio_floor` bytes, so small
layers of very compressible files are never refused).

Environment variables let an operator change a limit without editing code:
MSB_IMAGE_MAX_BYTES (compressed size of an image), MSB_IMAGE_MAX_UNPACKED (its unpacked file
data; sizes take K/M/G/T suffixes) and MSB_IMAGE_MAX_RATIO (0 turns the ratio check off).
"""
import os
import re
from dataclasses import dataclass, replace

from .errors import ImageError

DEFAULT_UNPACKED = 64 << 30
DEFAULT_RATIO = 100
DEFAULT_RATIO_FLOOR = 1 << 30

_SIZE = re.compile(r"\s*(\d+)\s*([KMGT]?)(?:i?B)?\s*\Z", re.IGNORECASE)
_UNITS = {"": 0, "K": 10, "M": 20, "G": 30, "T": 40}


def _env_int(name, default):
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        return default


def parse_size(text, what):
    """Bytes from "123", "512M", "16GiB"...; ImageError naming `what` otherwise."""
    match = _SIZE.match(str(text))
    if not match:
        raise ImageError(f"{what}: bad size {text!r} (want bytes, or a number with K, M, G "
                         "or T)")
    return int(match.group(1)) << _UNITS[match.group(2).upper()]


def _env_size(name, default):
    text = os.environ.get(name)
    return default if text is None or not text.strip() else parse_size(text, name)


def _env_ratio(name, default):
    text = os.environ.get(name)
    if text is None or not text.strip():
        return default
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise ImageError(f"{name}: bad ratio {text!r} (want a whole number, 0 for no limit)")
    return value


@dataclass(frozen=True)
class Limits:
    manifest_bytes: int = 4 << 20        # OCI distribution's recommended manifest ceiling
    config_bytes: int = 16 << 20         # configs carry history; 16 MiB is far above real ones
    token_bytes: int = 1 << 20
    json_depth: int = 32
    layers: int = 256                     # Docker refuses more than 127; leave room
    index_entries: int = 1024
    image_bytes: int = 64 << 30           # sum of compressed blobs of one image
    redirects: int = 5
    unpacked_bytes: int = DEFAULT_UNPACKED   # file data of one image, unpacked
    expansion_ratio: int = DEFAULT_RATIO     # unpacked / compressed bytes of one layer
    ratio_floor: int = DEFAULT_RATIO_FLOOR   # a layer may always unpack this much


def current(**overrides):
    """The limits in force: defaults, then the environment, then `overrides` (not None)."""
    limits = Limits(image_bytes=_env_int("MSB_IMAGE_MAX_BYTES", 64 << 30),
                    unpacked_bytes=_env_size("MSB_IMAGE_MAX_UNPACKED", DEFAULT_UNPACKED),
                    expansion_ratio=_env_ratio("MSB_IMAGE_MAX_RATIO", DEFAULT_RATIO))
    return replace(limits, **{k: v for k, v in overrides.items() if v is not None})
