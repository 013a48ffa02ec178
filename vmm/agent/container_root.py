"""A process's own root directory in the guest: a guest directory that becomes its `/`,
with mounts inside it, as a pod member container's (the EXEC request's ROOT, MOUNT and
ROOT_READONLY fields, guest/agent/PROTOCOL.md). The agent sets it up in the forked child
(a mount namespace of its own, pivot_root), never in itself.

    root = ContainerRoot("/run/vmm-pod/c1/rootfs", mounts=(
        RootMount("/etc/hosts", source="/run/vmm-pod/c1/mounts/0", read_only=True),
        RootMount("/tmp", tmpfs=True, source="size=64m,mode=1777"),
    ), read_only=True)
    client.exec(["sh", "-c", "..."], root=root)

check() refuses what the agent would refuse (the same bounds), so a bad value is a
ValueError here naming the field, not an AgentError from the guest. This module is not
imported by vmm.agent's client unless a root is given: `msb exec` never pays for
dataclasses.
"""
from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from typing import List, Tuple

from .protocol import G

MAX_PATH = 4096          # bytes of ROOT, a MOUNT's source or destination (PATH_MAX)
MAX_MOUNTS = 64          # MOUNT fields in one EXEC
MOUNT_READ_ONLY = 1      # MOUNT flag bits (u32 LE before SOURCE NUL DESTINATION)
MOUNT_TMPFS = 2
MOUNT_FLAGS = struct.Struct("<I")


def _path_bytes(value, what: str, absolute: bool = True) -> bytes:
    """value as the bytes sent, or ValueError naming what."""
    if not isinstance(value, (str, os.PathLike)):
        raise ValueError(f"{what} must be a string, not {value!r}")
    value = os.fspath(value)
    if not isinstance(value, str):
        raise ValueError(f"{what} must be a string, not {value!r}")
    raw = value.encode("utf-8", "surrogateescape")
    if b"\0" in raw:
        raise ValueError(f"{what} holds a NUL byte: {value!r}")
    if len(raw) > MAX_PATH:
        raise ValueError(f"{what} is {len(raw)} bytes long: at most {MAX_PATH}")
    if absolute and not raw.startswith(b"/"):
        raise ValueError(f"{what} must be an absolute path, not {value!r}")
    return raw


@dataclass(frozen=True)
class RootMount:
    """One mount inside the new root, made in the order given (a later one may sit on an
    earlier one). destination: absolute, resolved inside the new root (a symbolic link or
    `..` in the root's files cannot lead out of it); a missing mount point is created (a
    directory, or an empty file for a bind of a file). source: the guest path to bind
    (resolved in the guest's own tree, before the switch), or for tmpfs its mount data
    ("size=64m,mode=1777", may be empty)."""
    destination: str
    source: str = ""
    tmpfs: bool = False
    read_only: bool = False

    def check(self, what: str = "mount") -> None:
        _path_bytes(self.destination, f"{what} destination")
        if not isinstance(self.tmpfs, bool) or not isinstance(self.read_only, bool):
            raise ValueError(f"{what}: tmpfs and read_only must be True or False")
        if self.tmpfs:
            _path_bytes(self.source, f"{what} tmpfs data", absolute=False)
        else:
            _path_bytes(self.source, f"{what} source")

    def encode(self) -> bytes:
        """The MOUNT field's value: u32 LE flags, SOURCE, a NUL, DESTINATION."""
        flags = (MOUNT_READ_ONLY if self.read_only else 0) | (MOUNT_TMPFS if self.tmpfs else 0)
        return (MOUNT_FLAGS.pack(flags) + _path_bytes(self.source, "source", absolute=False)
                + b"\0" + _path_bytes(self.destination, "destination"))


@dataclass(frozen=True)
class ContainerRoot:
    """path: the guest directory that becomes the process's `/` (its procfs at /proc,
    the guest's /dev and /sys bound in, then mounts); read_only: the root itself is
    remounted read-only after its mounts (the mounts keep their own modes)."""
    path: str
    mounts: Tuple[RootMount, ...] = ()
    read_only: bool = False

    def check(self) -> None:
        """ValueError naming the bad field; the agent checks the same bounds again."""
        _path_bytes(self.path, "root path")
        if isinstance(self.mounts, (str, bytes, RootMount)):
            raise ValueError(f"root mounts must be a sequence of RootMount, not {self.mounts!r}")
        mounts = tuple(self.mounts)
        if len(mounts) > MAX_MOUNTS:
            raise ValueError(f"{len(mounts)} root mounts: at most {MAX_MOUNTS}")
        for i, m in enumerate(mounts):
            if not isinstance(m, RootMount):
                raise ValueError(f"root mount {i} must be a RootMount, not {m!r}")
            m.check(f"root mount {i} ({m.destination!r})")
        if not isinstance(self.read_only, bool):
            raise ValueError(f"root read_only must be True or False, not {self.read_only!r}")

    def fields(self) -> List[Tuple[int, object]]:
        """The EXEC fields, after check()."""
        self.check()
        out: List[Tuple[int, object]] = [(G.ROOT, self.path)]
        out += [(G.MOUNT, m.encode()) for m in self.mounts]
        if self.read_only:
            out.append((G.ROOT_READONLY, 1))
        return out
