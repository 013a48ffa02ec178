"""Where a named sandbox's image comes from: the one function that turns what the user
typed (`msb run IMAGE`, `--pull`) into a stored image, its root disk and its runtime
config. `msb run` without an image asks default_image() here, the one place that knows
about the project's offline default image.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class ResolvedImage:
    reference: str        # as the store names it, e.g. docker.io/library/alpine:3.20
    disk: str             # the read-only EROFS root disk
    config: dict          # entrypoint, cmd, env, working_dir, user (images.inspect's "config")


def default_image() -> str:
    """The reference of the offline default image (msb.invalid/default:busybox), built into
    the store on first use from the host's busybox-static."""
    from ..images.default_image import ensure_default_image
    from ..images.store import Store
    store = Store()
    try:
        return ensure_default_image(store).reference
    finally:
        store.close()


def resolve_image(ref: Optional[str], pull: str = "if-missing", quiet: bool = False,
                  insecure: bool = False) -> ResolvedImage:
    """The stored image `ref` (pulled per the policy: always | if-missing | never) with
    its root disk built."""
    from .. import images
    if ref is None:
        ref = default_image()
        pull = "never"   # built locally; no registry serves `.invalid`
    progress = False if quiet else None
    if pull == "always":
        images.pull(ref, progress=progress, force=True, insecure=insecure)
    try:
        info = images.inspect(ref)
    except images.ImageNotFound:
        if pull == "never":
            raise images.ImageNotFound(f"image {ref!r} is not in the local store and "
                                       "--pull never forbids pulling it") from None
        images.pull(ref, progress=progress, insecure=insecure)
        info = images.inspect(ref)
    disk = images.root_disk(info["reference"], warn=None if quiet else _warn_to(info["reference"]))
    # Absolute: the supervisor that boots it runs in another working directory.
    return ResolvedImage(info["reference"], os.path.abspath(disk), info["config"])


def _warn_to(reference):
    """Warnings from building the root disk (a layer whose media type lies) go to stderr
    beside the pull progress; the image store keeps them too (`msb image inspect`)."""
    import sys

    def warn(text):
        print(f"warning: {reference}: {text}", file=sys.stderr, flush=True)
    return warn
