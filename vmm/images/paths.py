"""Where images live under MSB_HOME (default ~/.microsandbox).

    MSB_HOME/images/blobs/sha256/<hex>     verified blobs (layers, configs, manifests)
    MSB_HOME/images/tmp/                   partial downloads and disks being built
    MSB_HOME/images/locks/                 flock files: one per blob, one per disk, gc.lock
    MSB_HOME/images/disks/<hex>.erofs      root disk per manifest digest
    MSB_HOME/images/index.db               SQLite index (references, manifests, layers)
"""
import os
from pathlib import Path

from .digest import parse_digest


def msb_home() -> Path:
    return Path(os.environ.get("MSB_HOME") or Path.home() / ".microsandbox")


class StorePaths:
    def __init__(self, home=None):
        self.root = Path(home or msb_home()) / "images"
        self.blobs = self.root / "blobs"
        self.tmp = self.root / "tmp"
        self.locks = self.root / "locks"
        self.disks = self.root / "disks"
        self.db = self.root / "index.db"

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
