"""The sandbox a bundle becomes: its root directory over virtio-fs, its size, hostname and
directory bind mounts (as host directories shared into the guest)."""
from __future__ import annotations

import os

from .bundle import Bundle


def boot_sandbox(bundle: Bundle, state_dir: str, log):
    from ..sandbox import Sandbox
    volumes = []
    for m in bundle.mounts:
        if m.is_bind and os.path.isdir(m.source):
            from ..sandbox.volumes import HostDir
            volumes.append(HostDir(m.source, m.destination, read_only=m.read_only))
        else:
            log.warning(f"mount {m.destination} ({m.type or 'bind'} of {m.source or '-'}): "
                        "not made yet (only directory bind mounts are)")
    return Sandbox.create(root_dir=bundle.root, engine=bundle.engine, cpus=bundle.cpus, memory_mib=bundle.memory_mib,
                          hostname=bundle.hostname or None, network=None, volumes=volumes,
                          console_log=os.path.join(state_dir, "console.log"))
