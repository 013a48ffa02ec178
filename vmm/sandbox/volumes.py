"""Volumes a sandbox mounts: what a mount is, how `-v SRC:DEST` reads, and the checks
every mount passes before anything boots.

    from vmm.sandbox.volumes import VolumeMount
    vmm.Sandbox.create(image, volumes=[VolumeMount("/srv/vols/data.ext4", "/data"),
                                       VolumeMount("/srv/vols/ref.ext4", "/ref", read_only=True)])

A VolumeMount is an ext4 disk file (a named volume's, volume_store.py) attached as one
more virtio-blk device and mounted by the guest agent at guest_path before it reports
READY, so the first exec already sees it. The guest finds each disk by its virtio serial
(agent_cmdline.py writes `vmm.vol=`), not by its /dev/vdX name, so probe order does not
matter on either engine. A host directory shared into the guest (`-v ./src:/app`) will be
a second kind here, SharedDir, once there is a shared file system (virtio-fs); until then
parse_volume_spec() recognises it as kind "host" so callers can refuse it clearly.

Locks: a disk mounted read-write holds an exclusive flock, a read-only one a shared
flock (disk_lock.py), so one rw sandbox excludes every other, and ro sandboxes share.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import List, NamedTuple, Optional, Sequence, Tuple

from ..errors import ConfigError
from .disk_lock import DiskLock

MAX_GUEST_PATH = 240  # bytes; with %-escapes the command line still fits (agent_cmdline.py)
# The agent's own mounts: a volume over one of them would hide what the sandbox needs.
RESERVED_PATHS = ("/proc", "/sys", "/dev")
HOST_PREFIXES = ("/", "./", "../")
MAX_VOLUMES = 32  # the agent's table (guest/agent/volumes.c); the kvm engine allows fewer
VOLUME_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def check_volume_name(name) -> str:
    """A named volume's name: one path component of letters, digits, `_`, `.`, `-`."""
    if not isinstance(name, str) or not VOLUME_NAME.fullmatch(name):
        raise ConfigError(f"bad volume name {name!r}: use 1-64 letters, digits, '_', '.' or "
                          "'-', starting with a letter or digit")
    return name


def check_guest_path(path) -> str:
    """The mount point in the guest: absolute, no `.`/`..`/empty components, no control
    characters, not / nor under /proc, /sys, /dev. Returns it without a trailing slash."""
    if not isinstance(path, str) or not path:
        raise ConfigError(f"volume guest path {path!r} must be a non-empty string")
    if not path.startswith("/"):
        raise ConfigError(f"volume guest path {path!r} is not absolute (it must start with '/')")
    if any(ord(c) < 0x20 or ord(c) == 0x7f for c in path):
        raise ConfigError(f"volume guest path {path!r} holds a control character")
    stripped = path.rstrip("/") if path != "/" else path
    parts = stripped.split("/")[1:]
    if stripped == "/" or not parts:
        raise ConfigError("a volume cannot be mounted at /: the image is the root")
    if any(p in ("", ".", "..") for p in parts):
        raise ConfigError(f"volume guest path {path!r} has an empty, '.' or '..' component")
    if len(stripped.encode()) > MAX_GUEST_PATH:
        raise ConfigError(f"volume guest path {path[:40]!r}... is longer than "
                          f"{MAX_GUEST_PATH} bytes")
    for reserved in RESERVED_PATHS:
        if stripped == reserved or stripped.startswith(reserved + "/"):
            raise ConfigError(f"volume guest path {path!r} is under {reserved}, which the "
                              "sandbox's agent mounts itself")
    return stripped


@dataclass(frozen=True)
class VolumeMount:
    """An ext4 disk file mounted at guest_path (read-write, or read-only). name, if
    given, is what error messages call it (a named volume's name)."""
    disk_path: str
    guest_path: str
    read_only: bool = False
    name: Optional[str] = None

    def __post_init__(self):
        object.__setattr__(self, "disk_path", os.fspath(self.disk_path))
        object.__setattr__(self, "guest_path", check_guest_path(self.guest_path))
        if not isinstance(self.read_only, bool):
            raise ConfigError(f"VolumeMount read_only must be a bool, not {self.read_only!r}")

    @property
    def label(self) -> str:
        return f"volume {self.name!r}" if self.name else f"volume {self.disk_path}"


class VolumeSpec(NamedTuple):
    """One `-v SRC:DEST[:ro|:rw]`: kind "named" (src is a volume name) or "host" (src is
    a host path, as typed)."""
    kind: str
    src: str
    dest: str
    read_only: bool


def parse_volume_spec(spec: str) -> VolumeSpec:
    """`data:/data`, `data:/data:ro`, `./src:/app` -> VolumeSpec(kind, src, dest, ro).

    SRC starting with `/`, `./` or `../` (or `.`/`..` alone) is a host path, anything else
    a volume name. The destination is checked as a guest path; a host path is returned as
    typed (the caller decides what to do with it).
    """
    if not isinstance(spec, str) or not spec:
        raise ConfigError(f"volume {spec!r} is not SRC:DEST")
    read_only = False
    head, sep, mode = spec.rpartition(":")
    if sep and mode in ("ro", "rw") and ":" in head:
        spec, read_only = head, mode == "ro"
    src, sep, dest = spec.partition(":")
    if not sep or not src or not dest:
        raise ConfigError(f"volume {spec!r} is not SRC:DEST[:ro] (like data:/data or ./src:/app)")
    if ":" in dest:
        raise ConfigError(f"volume {spec!r}: the guest path {dest!r} holds ':'; the only "
                          "suffix after it may be ':ro' or ':rw'")
    dest = check_guest_path(dest)
    if src.startswith(HOST_PREFIXES) or src in (".", ".."):
        return VolumeSpec("host", src, dest, read_only)
    return VolumeSpec("named", check_volume_name(src), dest, read_only)


def check_mounts(volumes, *other_disks: Optional[str]) -> Tuple[VolumeMount, ...]:
    """The mounts a sandbox gets, checked and in mount order (parents before children).

    Refuses a non-VolumeMount, a missing disk file, two mounts at one guest path, one disk
    file twice, and a volume that is the image or the writable disk.
    """
    if volumes is None:
        return ()
    if isinstance(volumes, (str, bytes, VolumeMount)):
        raise ConfigError("volumes must be a list of VolumeMount")
    mounts = list(volumes)
    if len(mounts) > MAX_VOLUMES:
        raise ConfigError(f"{len(mounts)} volumes: a sandbox mounts at most {MAX_VOLUMES}")
    seen_paths, seen_disks = {}, {}
    others = {os.path.realpath(d) for d in other_disks if d is not None}
    for m in mounts:
        if not isinstance(m, VolumeMount):
            raise ConfigError(f"volumes must hold vmm.sandbox.volumes.VolumeMount, not {m!r}")
        if not os.path.isfile(m.disk_path):
            raise ConfigError(f"{m.label}: disk file {m.disk_path} does not exist")
        real = os.path.realpath(m.disk_path)
        if real in others:
            raise ConfigError(f"{m.label}: {m.disk_path} is the sandbox's image or writable disk")
        if m.guest_path in seen_paths:
            raise ConfigError(f"{m.label} and {seen_paths[m.guest_path].label} are both "
                              f"mounted at {m.guest_path}")
        if real in seen_disks:
            raise ConfigError(f"{m.label} is attached twice ({seen_disks[real].guest_path} "
                              f"and {m.guest_path})")
        seen_paths[m.guest_path] = m
        seen_disks[real] = m
    return tuple(sorted(mounts, key=lambda m: (m.guest_path.count("/"), m.guest_path)))


def lock_mounts(mounts: Sequence[VolumeMount]) -> List[DiskLock]:
    """Take every mount's lock (exclusive for rw, shared for ro), or none: ConfigError
    naming the volume that another sandbox holds."""
    locks: List[DiskLock] = []
    try:
        for m in mounts:
            how = "read-only" if m.read_only else "read-write"
            locks.append(DiskLock(m.disk_path, shared=m.read_only,
                                  busy=f"{m.label} cannot be attached {how}: it is in use "
                                       "by another sandbox"))
            if not os.path.isfile(m.disk_path):  # removed (volume_store) as we locked it
                raise ConfigError(f"{m.label}: disk file {m.disk_path} was just removed")
    except BaseException:
        for lock in locks:
            lock.release()
        raise
    return locks


FATAL_LINE = re.compile(r"agent: FATAL: volume (\S+): (.*)")


def mount_failure(console: str, mounts: Sequence[VolumeMount],
                  serials: Sequence[str]) -> Optional[str]:
    """The reason for BootFailed when the agent could not mount a volume (its
    `agent: FATAL: volume SERIAL: ...` console line), naming the volume; else None."""
    by_serial = dict(zip(serials, mounts))
    for line in reversed(console.splitlines()):
        m = FATAL_LINE.search(line)
        if m:
            mount = by_serial.get(m.group(1))
            who = f"{mount.label} at {mount.guest_path}" if mount else f"volume {m.group(1)}"
            return f"{who} could not be mounted: {m.group(2).strip()}"
    return None
