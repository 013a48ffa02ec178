"""The image store's paths: vmm/home.py names the layout under MSB_HOME/images; this adds
the per-digest names (a blob, its partial download, its lock, a manifest's root disk)."""
from pathlib import Path

from ..home import Home
from .digest import parse_digest


class StorePaths:
    def __init__(self, home=None):
        layout = Home(home)
        self.root = layout.images
        self.blobs = layout.image_blobs
        self.tmp = layout.image_tmp
        self.locks = layout.image_locks
        self.disks = layout.image_disks
        self.db = layout.image_index

    def create(self):
        for d in (self.blobs / "sha256", self.blobs / "sha512", self.tmp, self.locks, self.disks):
            d.mkdir(parents=True, exist_ok=True)

    def blob(self, digest) -> Path:
        # parse_digest refuses anything but algorithm:hex, so the path cannot escape.
        algorithm, hexpart = parse_digest(digest)
        return self.blobs / algorithm / hexpart

    def partial(self, digest) -> Path:
        algorithm, hexpart = parse_digest(digest)
        return self.tmp / f"{algorithm}-{hexpart}.partial"

    def lock(self, name) -> Path:
        return self.locks / f"{name}.lock"

    def disk(self, manifest_digest) -> Path:
        algorithm, hexpart = parse_digest(manifest_digest)
        return self.disks / f"{algorithm}-{hexpart}.erofs"
