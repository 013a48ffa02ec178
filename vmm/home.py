"""MSB_HOME: where msb keeps its state, and the one place that names its layout
(docs/home.md describes it for users).

    $MSB_HOME                       default ~/.microsandbox
      images/                       the image store (vmm/images/store.py)
        blobs/<algorithm>/<hex>     verified blobs: layers, configs, manifests
        tmp/                        partial downloads and disks being built
        locks/                      flock files: one per blob, one per disk, gc.lock
        disks/<algorithm>-<hex>.erofs   the read-only root disk of each manifest
        index.db                    SQLite index: references, manifests, layers
      sandboxes/<name>/             one directory per named sandbox:
        data.ext4                   its writable disk (sparse, 4 GiB)
        console.log                 the guest console of the current boot
        supervisor.log              the supervisor's own stdout/stderr
        logs/                       the sandbox log, JSON lines (vmm/sandbox/logs.py)
      msb.db                        the sandbox database (SQLite, vmm/sandbox/state.py)
      volumes/<name>.ext4           named volumes (vmm/sandbox/volume_store.py), with
      volumes/<name>.json           their metadata

    <runtime base>/msb-<uid>/<hash>/  a running sandbox's sockets (control.sock), outside
                                    MSB_HOME because a Unix socket path is limited to
                                    108 bytes and MSB_HOME may be long

Every path is read from the environment when a Home is made, not at import, so a test or
a caller can point MSB_HOME elsewhere for one call.
"""
from __future__ import annotations

import os
import tempfile
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

    def writable_disk(self, name: str) -> Path:
        return self.sandbox(name) / "data.ext4"

    def sandbox_logs(self, name: str) -> Path:
        return self.sandbox(name) / "logs"

    def runtime(self, name: str) -> Path:
        """A short directory for a running sandbox's sockets: $XDG_RUNTIME_DIR (if short)
        or the temp dir, then msb-<uid>/<16 hex of a hash of MSB_HOME and the name>, so
        two homes never share one and the socket path stays far below 108 bytes."""
        base = os.environ.get("XDG_RUNTIME_DIR")
        if not (base and os.path.isdir(base) and len(base) < 40):
            base = tempfile.gettempdir()
        import hashlib   # here: it loads OpenSSL, which most msb calls never need
        key = hashlib.sha256(f"{self.root.resolve()}\0{name}".encode()).hexdigest()[:16]
        return Path(base) / f"msb-{os.getuid()}" / key
