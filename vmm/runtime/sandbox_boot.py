"""The sandbox a bundle becomes: its root directory over virtio-fs, its size, hostname and
mounts.

- A bind mount of a host directory becomes a host directory shared into the guest
  (virtio-fs, vmm.sandbox.volumes.HostDir), read-only if its options say "ro".
- A bind mount of a host file (podman's and containerd's /etc/hosts, /etc/hostname,
  /etc/resolv.conf, /run/.containerenv) is copied into the guest before the process starts:
  virtio-fs shares directories, not single files, and these are written once by the
  caller before `create`. Changes on either side after that are not seen by the other;
  the runtime logs this once per file.
- tmpfs mounts are made by the guest agent (a tmpfs of the guest's own memory).
"""
from __future__ import annotations

import os
import stat

from .bundle import Bundle

FILE_BIND_MAX = 1 << 20
ENGINE_ENV = "VMM_RUNTIME_ENGINE"   # the engine when a bundle does not name one (default auto)   # a hosts or resolv.conf file; anything larger is not what binds carry


def boot_sandbox(bundle: Bundle, state_dir: str, log):
    from ..errors import ConfigError
    from ..sandbox import Sandbox
    volumes, files, tmpfs = [], [], []
    for m in bundle.mounts:
        if m.type == "tmpfs":
            tmpfs.append(m)
            continue
        try:
            st = os.stat(m.source)
        except OSError as e:
            raise ConfigError(f"mount {m.destination}: source {m.source}: {e.strerror}") from None
        if stat.S_ISDIR(st.st_mode):
            from ..sandbox.volumes import HostDir
            volumes.append(HostDir(m.source, m.destination, read_only=m.read_only))
        elif stat.S_ISREG(st.st_mode):
            files.append(m)
        else:
            raise ConfigError(f"mount {m.destination}: source {m.source} is neither a directory "
                              "nor a regular file")
    sb = Sandbox.create(root_dir=bundle.root, engine=bundle.engine or os.environ.get(ENGINE_ENV) or "auto", cpus=bundle.cpus,
                        memory_mib=bundle.memory_mib, hostname=bundle.hostname or None,
                        network=None, volumes=volumes,
                        console_log=os.path.join(state_dir, "console.log"))
    try:
        for m in files:
            _copy_file_in(sb, m, log)
        for m in tmpfs:
            _mount_tmpfs(sb, m)
    except BaseException:
        sb.stop()
        raise
    return sb


def _copy_file_in(sb, m, log) -> None:
    from ..errors import ConfigError
    fd = os.open(m.source, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as f:
        data = f.read(FILE_BIND_MAX + 1)
    if len(data) > FILE_BIND_MAX:
        raise ConfigError(f"mount {m.destination}: the file {m.source} is larger than 1 MiB")
    parent = os.path.dirname(m.destination)
    if parent != "/":
        sb.fs.mkdir(parent, parents=True)
    sb.fs.write(m.destination, data, mode=0o444 if m.read_only else 0o644)
    log.debug(f"mount {m.destination}: {m.source} copied in (a file bind is not live in a VM)")


def _mount_tmpfs(sb, m) -> None:
    from ..errors import ConfigError
    opts = ",".join(o for o in m.options if o.startswith(("size=", "mode=", "nr_inodes=")))
    argv = ["mount", "-t", "tmpfs"] + (["-o", opts] if opts else []) + ["tmpfs", m.destination]
    sb.fs.mkdir(m.destination, parents=True)
    r = sb.exec(argv, timeout=30)
    if r.code != 0:
        raise ConfigError(f"mount {m.destination}: tmpfs: {r.stderr.decode(errors='replace').strip()}")
