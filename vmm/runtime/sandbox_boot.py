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
- root.readonly: once the files are copied in and the mounts made, the agent remounts the
  guest's root read-only (EROFS, as under runc); the mounts on it keep their own modes.
- A Kubernetes pod's sandbox container boots the pod VM: it also gets the pod share
  (pod.py), and takes over the pod's interface. (A pod's other containers boot nothing.)
"""
from __future__ import annotations

import os
import stat
from typing import Optional

from .bundle import Bundle

FILE_BIND_MAX = 1 << 20
ENGINE_ENV = "VMM_RUNTIME_ENGINE"   # the engine when a bundle does not name one (default auto)   # a hosts or resolv.conf file; anything larger is not what binds carry


class Booted:
    """The running sandbox and what else the container holds until it ends (the NIC in
    its network namespace)."""

    def __init__(self, sandbox, nic=None, pod_dir=None):
        self.sandbox, self.nic = sandbox, nic
        self.pod_dir = pod_dir   # a pod sandbox's share (pod.py), unmounted at its delete

    @property
    def socket_path(self) -> str:
        return self.sandbox.socket_path

    def exec_stream(self, *args, **kwargs):
        return self.sandbox.exec_stream(*args, **kwargs)

    def pause(self) -> None:
        self.sandbox.machine.pause()

    def resume(self) -> None:
        self.sandbox.machine.resume()

    def stop(self) -> None:
        try:
            self.sandbox.stop()
        finally:
            if self.nic is not None:
                self.nic.close()


def boot_sandbox(bundle: Bundle, state_dir: str, log) -> Booted:
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
    pod_dir = _pod_share(bundle, state_dir, volumes)
    from .netns import is_own_namespace
    nic, network = None, None
    if bundle.network == "join" and not is_own_namespace(bundle.netns):
        from .netns import attach, enter
        nic = attach(bundle.netns, dns=_nameserver(files))   # a pod's: its pod VM's NIC
        enter(bundle.netns)     # the monitor (the container's pid) in it, as runc's process
        network = nic.network if nic is not None else None
    elif bundle.network in ("host", "join"):   # join: the host's own namespace
        from ..net.network import Network
        network = Network()      # the host's network as a VM can have it: NAT through passt
    booted = Booted(None, nic, pod_dir)
    try:
        booted.sandbox = Sandbox.create(
            root_dir=bundle.root, engine=bundle.engine or os.environ.get(ENGINE_ENV) or "auto",
            cpus=bundle.cpus, memory_mib=bundle.memory_mib, hostname=bundle.hostname or None,
            network=network, volumes=volumes, console_log=os.path.join(state_dir, "console.log"))
        for m in files:
            _copy_file_in(booted.sandbox, m, log)
        for m in tmpfs:
            _mount_tmpfs(booted.sandbox, m)
        if bundle.root_readonly:   # last, as runc: after the copies and the mount points
            booted.sandbox.make_root_read_only()
    except BaseException:
        if booted.sandbox is not None:
            booted.stop()
        elif nic is not None:
            nic.close()
        raise
    return booted


def _pod_share(bundle: Bundle, state_dir: str, volumes: list) -> Optional[str]:
    """A pod sandbox's share of its members' roots (pod.py), added to volumes; None for
    any other container, or when not root (bind mounts need it: the pod's containers
    are then refused, saying so)."""
    from .pod import GUEST_POD_DIR, POD_DIR_NAME, is_pod_sandbox, prepare_pod_dir
    if not is_pod_sandbox(bundle.annotations_dict) or os.geteuid() != 0:
        return None
    from ..sandbox.volumes import HostDir
    pod_dir = prepare_pod_dir(os.path.join(state_dir, POD_DIR_NAME))
    volumes.append(HostDir(pod_dir, GUEST_POD_DIR))
    return pod_dir


def _nameserver(files) -> Optional[str]:
    """The first IPv4 nameserver of the resolv.conf the caller binds in, if any."""
    import ipaddress
    for m in files:
        if m.destination != "/etc/resolv.conf":
            continue
        try:
            with open(m.source, "rb") as f:
                text = f.read(FILE_BIND_MAX).decode(errors="replace")
        except OSError:
            return None
        for line in text.splitlines():
            words = line.split()
            if len(words) >= 2 and words[0] == "nameserver":
                try:
                    return str(ipaddress.IPv4Address(words[1]))
                except ValueError:
                    continue
    return None


def _copy_file_in(sb, m, log) -> None:
    from ..errors import ConfigError
    fd = os.open(m.source, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as f:
        # The file's own permission bits (Docker's --init binds an executable), without
        # the write bits when the bind is read-only.
        mode = os.fstat(f.fileno()).st_mode & 0o777
        data = f.read(FILE_BIND_MAX + 1)
    if len(data) > FILE_BIND_MAX:
        raise ConfigError(f"mount {m.destination}: the file {m.source} is larger than 1 MiB")
    parent = os.path.dirname(m.destination)
    if parent != "/":
        sb.fs.mkdir(parent, parents=True)
    sb.fs.write(m.destination, data, mode=mode & ~0o222 if m.read_only else mode)
    log.debug(f"mount {m.destination}: {m.source} copied in (a file bind is not live in a VM)")


def _mount_tmpfs(sb, m) -> None:
    from ..errors import ConfigError
    opts = ",".join(o for o in m.options if o.startswith(("size=", "mode=", "nr_inodes=")))
    argv = ["mount", "-t", "tmpfs"] + (["-o", opts] if opts else []) + ["tmpfs", m.destination]
    sb.fs.mkdir(m.destination, parents=True)
    r = sb.exec(argv, timeout=30)
    if r.code != 0:
        raise ConfigError(f"mount {m.destination}: tmpfs: {r.stderr.decode(errors='replace').strip()}")
