"""Bounds on everything a registry or an image archive hands us.

Manifests, configs and token replies are read into memory, so their size is capped before
reading; layer sizes come from manifests we already bounded. Environment variables let an
operator raise a limit without editing code (MSB_IMAGE_MAX_BYTES for very large images).
"""
import os
from dataclasses import dataclass


def _env_int(name, default):
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        return default


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


def current():
    return Limits(image_bytes=_env_int("MSB_IMAGE_MAX_BYTES", 64 << 30))
