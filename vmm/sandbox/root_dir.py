"""A host directory as a sandbox's root, instead of an image disk.

    vmm.Sandbox.create(root_dir="/var/lib/runtime/rootfs/abc")   # an unpacked rootfs

The directory is shared read-only over virtio-fs (one virtiofsd, which itself refuses
writes, with cache=always: see below) under the tag ROOT_TAG, and the guest agent mounts it as the overlay's lower
layer where an image disk would otherwise be (`vmm.root=TAG vmm.rootfstype=virtiofs`,
agent_cmdline.py); the writable disk, or a tmpfs, is the upper layer as always. So the
guest may write, delete and rename anything in /, and none of it reaches the directory:
a container runtime can hand over an unpacked rootfs without building a disk, and one
directory can be the root of many sandboxes at once.

What is checked on the host is only what the guest cannot report well: the directory
exists and is one. Its contents are the guest's business (the agent comes from the
initramfs, so even an empty directory boots; a command it lacks fails as an exec does).
The host's own / is refused: the whole host file system, read-only or not, is not a
sandbox root.

The directory must not change while a sandbox runs on it: it is an overlay lower layer,
and overlayfs leaves changes under a mounted overlay undefined. That is also why its
virtiofsd caches in the guest across opens (SharedDir(cache="always")), unlike a shared
host directory (cache=auto, timeout=0: the host's changes are seen at once): otherwise
every exec re-reads its binary over FUSE (benchmarks/bench_rootdir.py).
"""
from __future__ import annotations

import os
import re
from typing import Optional

from ..devices import existing_directory
from ..errors import ConfigError


def check_root_dir(path) -> str:
    """The root directory as an absolute path with symlinks resolved (what virtiofsd is
    handed, so the caller's working directory and a later relinking do not matter);
    ConfigError if it is missing, not a directory, or the host's /."""
    try:
        path = os.fspath(path)
    except TypeError:
        raise ConfigError(f"root_dir must be a path, not {path!r}") from None
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    if not path:
        raise ConfigError("root_dir is empty: give the directory holding the guest's root")
    real = existing_directory(path, "root directory")
    if real == "/":
        raise ConfigError(f"root directory {path} is the host's own /: give a directory "
                          "holding the guest's root file system")
    if not os.access(real, os.R_OK | os.X_OK):
        raise ConfigError(f"root directory {path} cannot be read (permission denied)")
    return real


# Any tag: the agent names the one it was told (ROOT_TAG, unless extra_cmdline said otherwise).
_FAILED_LINE = re.compile(r"agent: root directory \S+: (.*)")


def root_failure(console: str, root_dir: str) -> Optional[str]:
    """The reason for BootFailed when the agent could not mount the root directory (its
    `agent: root directory TAG: REASON` console line); else None."""
    for line in reversed(console.splitlines()):
        m = _FAILED_LINE.search(line)
        if m:
            return f"the root directory {root_dir} could not be mounted in the guest: " \
                   f"{m.group(1).strip()}"
    return None
