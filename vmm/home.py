"""MSB_HOME: where msb keeps its state, and the one place that names its layout
(docs/home.md describes it for users).

    $MSB_HOME                       default ~/.microsandbox
      images/                       the image store (vmm/images/store.py)
        blobs/<algorithm>/<hex>     verified blobs: layers, configs, manifests
        tmp/                        partial downloads and disks being built
        locks/                      flock files: one per blob, one per disk, gc.lock
        disks/<algorithm>-<hex>.erofs   the read-only root disk of each manifest
        index.db                    SQLite index: references, manifests, layers
      sandboxes/<name>/             one directory per named sandbox: its writable disk,
                                    logs and runtime sockets
      msb.db                        the sandbox database (SQLite)
      volumes/<name>.ext4           named volumes (vmm/sandbox/volume_store.py), with
      volumes/<name>.json           their metadata

Every path is read from the environment when a Home is made, not at import, so a test or
a caller can point MSB_HOME elsewhere for one call.
"""
from __future__ import annotations

import os
from pathlib import Path

from .errors import ConfigError


def msb_home() -> Path:
    """$MSB_HOME, else ~/.microsandbox."""
    return Path(os.environ.get("MSB_HOME") or Path.home() / ".microsandbox")


class Home:
    """The paths under one MSB_HOME (default: the one the environment names)."""

    def __init__(self, root=None):
        self.root = Path(root) if root else msb_home()
        self.images = self.root / "images"
        self.image_blobs = self.images / "blobs"
        self.image_tmp = self.images / "tmp"
        self.image_locks = self.images / "locks"
        self.image_disks = self.images / "disks"
        self.image_index = self.images / "index.db"
        self.sandboxes = self.root / "sandboxes"
        self.database = self.root / "msb.db"
        self.volumes = self.root / "volumes"

    def sandbox(self, name: str) -> Path:
        """sandboxes/<name>/. The name becomes a path component, so it may not climb out."""
        if not name or name in (".", "..") or "/" in name or "\0" in name:
            raise ConfigError(f"bad sandbox name {name!r}: a name is one path component "
                              "(no '/', not '.' or '..')")
        return self.sandboxes / name
