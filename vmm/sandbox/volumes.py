"""Volumes a sandbox mounts: what a mount is, how `-v SRC:DEST` reads, and the checks
every mount passes before anything boots.

    from vmm.sandbox.volumes import HostDir, VolumeMount
    vmm.Sandbox.create(image, volumes=[VolumeMount("/srv/vols/data.ext4", "/data"),
                                       VolumeMount("/srv/vols/ref.ext4", "/ref", read_only=True),
                                       HostDir("./src", "/app"),
                                       HostDir("/srv/datasets", "/datasets", read_only=True)])

A VolumeMount is an ext4 disk file (a named volume's, volume_store.py) attached as one
more virtio-blk device and mounted by the guest agent at guest_path before it reports
READY, so the first exec already sees it. The guest finds each disk by its virtio serial
(agent_cmdline.py writes `vmm.vol=`), not by its /dev/vdX name, so probe order does not
matter on either engine. A HostDir is a host directory shared into the guest over
virtio-fs (vmm.devices.SharedDir, served by virtiofsd, which enforces read_only on its
side); the guest mounts it by its tag (`vmm.fs=`), also before READY. Both kinds go in
one mount order, parents first, so either may sit under the other. `-v ./src:/app`
parses as kind "host" and becomes a HostDir.

Locks: a disk mounted read-write holds an exclusive flock, a read-only one a shared
flock (disk_lock.py), so one rw sandbox excludes every other, and ro sandboxes share.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import List, NamedTuple, Optional, Sequence, Tuple, Union

from ..errors import ConfigError
from .disk_lock import DiskLock

MAX_GUEST_PATH = 240  # bytes; with %-escapes the command line still fits (agent_cmdline.py)
# The agent's own mounts: a volume over one of them would hide what the sandbox needs.
RESERVED_PATHS = ("/proc", "/sys", "/dev")
HOST_PREFIXES = ("/", "./", "../")
MAX_VOLUMES = 32  # the agent's table (guest/agent/volumes.c); the kvm engine allows fewer
MAX_HOST_DIRS = 32  # likewise, for the shared dirs
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


@dataclass(frozen=True)
class HostDir:
    """A host directory shared into the guest at guest_path (read-write, or read-only:
    enforced by the file server, not only by the guest's mount). A relative host_path is
    resolved against the current directory when the HostDir is made."""
    host_path: str
    guest_path: str
    read_only: bool = False

    def __post_init__(self):
        path = os.fspath(self.host_path)
        if not isinstance(path, str) or not path or "\0" in path:
            raise ConfigError(f"host directory {path!r} must be a non-empty path")
        object.__setattr__(self, "host_path", os.path.abspath(path))
        object.__setattr__(self, "guest_path", check_guest_path(self.guest_path))
        if not isinstance(self.read_only, bool):
            raise ConfigError(f"HostDir read_only must be a bool, not {self.read_only!r}")

    @property
    def label(self) -> str:
        return f"host directory {self.host_path}"


def check_host_dir(path: str, what: str) -> str:
    """path (absolute) if it is an existing directory, else a ConfigError naming it."""
    if not os.path.lexists(path):
        raise ConfigError(f"{what}: {path} does not exist")
    if not os.path.isdir(path):
        raise ConfigError(f"{what}: {path} is not a directory")
    if not os.access(path, os.R_OK | os.X_OK):
        raise ConfigError(f"{what}: {path} cannot be read by this user")
    return path


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


Mount = Union[VolumeMount, HostDir]


def check_mounts(volumes, *other_disks: Optional[str]) -> Tuple[Mount, ...]:
    """The mounts a sandbox gets, checked and in mount order (parents before children,
    both kinds together, as the agent mounts them).

    Refuses what is neither a VolumeMount nor a HostDir, a missing disk file, a host
    directory that is missing or not a directory, two mounts at one guest path, one disk
    file twice, and a volume that is the image or the writable disk.
    """
    if volumes is None:
        return ()
    if isinstance(volumes, (str, bytes, VolumeMount, HostDir)):
        raise ConfigError("volumes must be a list of VolumeMount or HostDir")
    mounts = list(volumes)
    for m in mounts:
        if not isinstance(m, (VolumeMount, HostDir)):
            raise ConfigError("volumes must hold vmm.sandbox.volumes.VolumeMount or HostDir, "
                              f"not {m!r}")
    disks = sum(isinstance(m, VolumeMount) for m in mounts)
    if disks > MAX_VOLUMES:
        raise ConfigError(f"{disks} volumes: a sandbox mounts at most {MAX_VOLUMES}")
    if len(mounts) - disks > MAX_HOST_DIRS:
        raise ConfigError(f"{len(mounts) - disks} host directories: a sandbox mounts at most "
                          f"{MAX_HOST_DIRS}")
    seen_paths, seen_disks = {}, {}
    others = {os.path.realpath(d) for d in other_disks if d is not None}
    for m in mounts:
        if m.guest_path in seen_paths:
            raise ConfigError(f"{m.label} and {seen_paths[m.guest_path].label} are both "
                              f"mounted at {m.guest_path}")
        seen_paths[m.guest_path] = m
        if isinstance(m, HostDir):
            check_host_dir(m.host_path, m.label)
            continue
        if not os.path.isfile(m.disk_path):
            raise ConfigError(f"{m.label}: disk file {m.disk_path} does not exist")
        real = os.path.realpath(m.disk_path)
        if real in others:
            raise ConfigError(f"{m.label}: {m.disk_path} is the sandbox's image or writable disk")
        if real in seen_disks:
            raise ConfigError(f"{m.label} is attached twice ({seen_disks[real].guest_path} "
                              f"and {m.guest_path})")
        seen_disks[real] = m
    return tuple(sorted(mounts, key=lambda m: (m.guest_path.count("/"), m.guest_path)))


def lock_mounts(mounts: Sequence[Mount]) -> List[DiskLock]:
    """Take every disk mount's lock (exclusive for rw, shared for ro), or none:
    ConfigError naming the volume that another sandbox holds. Host directories take no
    lock: two sandboxes may share one, as two processes may."""
    locks: List[DiskLock] = []
    try:
        for m in mounts:
            if not isinstance(m, VolumeMount):
                continue
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


FATAL_LINE = re.compile(r"agent: FATAL: (volume|shared dir) (\S+): (.*)")


def mount_failure(console: str, mounts: Sequence[Mount],
                  ids: Sequence[str]) -> Optional[str]:
    """The reason for BootFailed when the agent could not mount a volume or a shared dir
    (its `agent: FATAL: volume SERIAL: ...` or `agent: FATAL: shared dir TAG: ...` console
    line), naming the volume or host directory; else None. ids[i] is mounts[i]'s disk
    serial or virtio-fs tag."""
    kinds = {VolumeMount: "volume", HostDir: "shared dir"}
    by_id = {(kinds[type(m)], i): m for i, m in zip(ids, mounts)}
    for line in reversed(console.splitlines()):
        m = FATAL_LINE.search(line)
        if m:
            mount = by_id.get((m.group(1), m.group(2)))
            who = f"{mount.label} at {mount.guest_path}" if mount else f"{m.group(1)} {m.group(2)}"
            return f"{who} could not be mounted: {m.group(3).strip()}"
    return None


class Attachment(NamedTuple):
    """How checked mounts reach the guest: the disks and shared dirs to add to the
    Machine, the kernel command line's `vmm.vol=`/`vmm.fs=` part, and each mount's disk
    serial or tag (for mount_failure), in the mounts' order."""
    disks: list
    shared_dirs: list
    cmdline: str
    ids: Tuple[str, ...]


def attach(mounts: Sequence[Mount]) -> Attachment:
    """The devices and command line for mounts (check_mounts' result, in mount order)."""
    from ..devices import Disk, SharedDir
    from .agent_cmdline import shared_dir_arg, shared_dir_tag, volume_arg, volume_serial
    disks, dirs, ids, vol, shared = [], [], [], [], []
    for m in mounts:
        if isinstance(m, VolumeMount):
            ident = volume_serial(len(disks))
            disks.append(Disk(m.disk_path, read_only=m.read_only, serial=ident))
            vol.append((ident, m.guest_path, m.read_only))
        else:
            ident = shared_dir_tag(len(dirs))
            # The resolved path: what was checked is what virtiofsd serves, even if a
            # symbolic link on the way is changed while the sandbox boots.
            dirs.append(SharedDir(os.path.realpath(m.host_path), tag=ident,
                                  read_only=m.read_only))
            shared.append((ident, m.guest_path, m.read_only))
        ids.append(ident)
    vol_arg = volume_arg(vol)
    fs_arg = shared_dir_arg(shared, used=len(vol_arg))
    return Attachment(disks, dirs, " ".join(a for a in (vol_arg, fs_arg) if a), tuple(ids))
