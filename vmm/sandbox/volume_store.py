"""Named volumes: ext4 disk files under MSB_HOME that outlive the sandboxes mounting them.

    $MSB_HOME/volumes/<name>.ext4   the disk, sparse (writable_disk.format_writable_disk)
    $MSB_HOME/volumes/<name>.json   {"name", "size_bytes", "created_at"}

    store = VolumeStore()
    store.create("data", size="4G")
    sb = vmm.Sandbox.create(image, volumes=[store.mount("data", "/data")])

A volume exists when its disk file exists: a create formats a private temporary file and
links it to its name (an atomic "create if absent": of two concurrent creates, one wins,
the other is told the volume exists), then writes the metadata. Whether a volume is in
use is read from the lock sandboxes hold on its disk (disk_lock.py): exclusive while one
sandbox mounts it read-write, shared while sandboxes mount it read-only. A volume in use
is never removed, with or without force: stop the sandboxes first.
"""
from __future__ import annotations

import fcntl
import json
import os
import threading
import time
from typing import List, Optional, Union

from ..errors import VmmError
from ..home import Home
from .volumes import VolumeMount, check_volume_name
from .writable_disk import DEFAULT_SIZE, format_writable_disk, parse_size

DISK_SUFFIX = ".ext4"
META_SUFFIX = ".json"


class VolumeError(VmmError):
    """A volume operation that cannot be done as asked: exists, not found, in use."""


class VolumeNotFound(VolumeError):
    pass


class VolumeExists(VolumeError):
    pass


class VolumeInUse(VolumeError):
    pass


def _now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def lock_state(path: str) -> Optional[str]:
    """None if no sandbox holds the disk, "ro" if only read-only ones do, "rw" if one
    mounts it read-write (a probe: the locks are taken and dropped at once)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        for flag, state in ((fcntl.LOCK_EX, None), (fcntl.LOCK_SH, "ro")):
            try:
                fcntl.flock(fd, flag | fcntl.LOCK_NB)
            except BlockingIOError:
                continue
            fcntl.flock(fd, fcntl.LOCK_UN)
            return state
        return "rw"
    finally:
        os.close(fd)


class VolumeStore:
    """The named volumes under one MSB_HOME (default: the environment's)."""

    def __init__(self, home: Optional[Home] = None):
        self.home = home if home is not None else Home()
        self.root = str(self.home.volumes)

    def disk_path(self, name: str) -> str:
        return os.path.join(self.root, check_volume_name(name) + DISK_SUFFIX)

    def _meta_path(self, name: str) -> str:
        return os.path.join(self.root, name + META_SUFFIX)

    def exists(self, name: str) -> bool:
        return os.path.isfile(self.disk_path(name))

    def create(self, name: str, size: Union[int, str] = DEFAULT_SIZE) -> dict:
        """Make a new empty volume; VolumeExists if the name is taken."""
        path = self.disk_path(name)
        nbytes = parse_size(size)
        os.makedirs(self.root, mode=0o700, exist_ok=True)
        if os.path.exists(path):
            raise VolumeExists(f"volume {name!r} already exists")
        tmp = os.path.join(self.root, f".{name}.{os.getpid()}.{threading.get_ident()}.tmp")
        format_writable_disk(tmp, nbytes)
        try:
            os.link(tmp, path)  # fails if a concurrent create won
        except FileExistsError:
            raise VolumeExists(f"volume {name!r} already exists") from None
        finally:
            os.unlink(tmp)
        meta = {"name": name, "size_bytes": nbytes, "created_at": _now_iso()}
        meta_tmp = tmp + META_SUFFIX
        with open(meta_tmp, "w") as f:
            json.dump(meta, f)
        os.replace(meta_tmp, self._meta_path(name))
        return self.info(name)

    def info(self, name: str) -> dict:
        """{name, path, size_bytes (apparent), disk_bytes (allocated), created_at, in_use}."""
        path = self.disk_path(name)
        try:
            st = os.stat(path)
        except FileNotFoundError:
            raise VolumeNotFound(f"volume {name!r} not found (msb volume ls lists them)") from None
        try:
            with open(self._meta_path(name)) as f:
                created = json.load(f).get("created_at")
        except (OSError, ValueError):
            created = None
        if not isinstance(created, str):  # metadata lost: the disk's own time stands in
            created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(st.st_mtime))
        return {"name": name, "path": path, "size_bytes": st.st_size,
                "disk_bytes": st.st_blocks * 512, "created_at": created,
                "in_use": lock_state(path)}

    def list(self) -> List[dict]:
        """Every volume, by name."""
        try:
            entries = sorted(os.listdir(self.root))
        except FileNotFoundError:
            return []
        out = []
        for entry in entries:
            if entry.startswith(".") or not entry.endswith(DISK_SUFFIX):
                continue
            try:
                out.append(self.info(entry[:-len(DISK_SUFFIX)]))
            except (VolumeNotFound, VmmError):
                continue  # removed meanwhile, or a stray file with a name we never make
        return out

    def mount(self, name: str, guest_path: str, read_only: bool = False) -> VolumeMount:
        """The VolumeMount for Sandbox.create(volumes=...); VolumeNotFound if absent."""
        path = self.disk_path(name)
        if not os.path.isfile(path):
            raise VolumeNotFound(f"volume {name!r} not found (create it with "
                                 f"msb volume create {name})")
        return VolumeMount(path, guest_path, read_only=read_only, name=name)

    def remove(self, name: str, *, missing_ok: bool = False) -> bool:
        """Delete a volume and its data. VolumeInUse while a sandbox has it attached;
        VolumeNotFound unless missing_ok. True if it was removed."""
        path = self.disk_path(name)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            if missing_ok:
                return False
            raise VolumeNotFound(f"volume {name!r} not found") from None
        try:
            # Held while unlinking: a sandbox attaching now waits for nothing, it is
            # refused (its lock fails) rather than mounting a disk about to vanish.
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise VolumeInUse(f"volume {name!r} is in use by a sandbox; "
                                  "stop it first") from None
            os.unlink(path)
        finally:
            os.close(fd)
        try:
            os.unlink(self._meta_path(name))
        except FileNotFoundError:
            pass
        return True
