"""One microVM per Kubernetes pod: the pod's sandbox (pause) container boots the pod VM,
and every other container of the pod (a member) runs in it as a process tree with its own
root directory, in its own guest mount namespace, as Kata Containers does.

The pod share. The sandbox's VM gets one more virtio-fs share: <sandbox state dir>/pod,
bind-mounted onto itself and made a shared mount before virtiofsd starts, mounted in the
guest at GUEST_POD_DIR. virtiofsd's mount namespace is a copy of ours made when it
starts, whose mounts are slaves of ours: a bind mount made under the pod directory later
appears in it too (and an unmount goes from it too), so the guest sees a member's files
without a new share, which a running VM could not get.

A member (annotations MEMBER_ANNOTATIONS: containerd's CRI plugin's, or CRI-O's, naming
the pod's sandbox) whose sandbox is a live pod VM in the same --root:
- `create` binds its bundle's rootfs on <pod>/<cid>/rootfs and each host bind mount of
  its config.json (a directory or a file) on <pod>/<cid>/mounts/N (bind_member), and
  forks a member monitor whose process runs through the pod VM's agent with
  root=ContainerRoot(<guest pod dir>/<cid>/rootfs, mounts=...): the agent makes the new
  root, the binds (from the guest's view of the share) and tmpfs mounts in a mount
  namespace of the process's own, then pivots into it;
- `exec` joins the member's process's mount namespace (join_pid, the guest pid recorded
  in its state at start);
- `delete` unmounts its binds (MNT_DETACH) before it removes a directory (unbind_member);
  the sandbox's `delete` does the same for the whole pod directory.
A member whose sandbox is not in our --root at all (another runtime's) is a VM of its own,
as every container was before. One whose sandbox is ours but not running (or has no pod
share: it was created by an unprivileged runtime) is refused with the reason.

Pausing a member is refused: it would freeze the pod VM, hence every container in it.
"""
from __future__ import annotations

import os
import stat
from typing import Optional

from .bundle import Bundle
from .errors import RuntimeFailure
from .host_mounts import bind, bind_read_only, detach_under, make_shared, make_slave, remove_tree
from .state import LIVE, ContainerNotFound, ContainerState, StateStore

GUEST_POD_DIR = "/run/vmm-pod"
POD_DIR_NAME = "pod"
# (container-type key, the value a member has, sandbox-id key): containerd's CRI, CRI-O's.
MEMBER_ANNOTATIONS = (
    ("io.kubernetes.cri.container-type", "container", "io.kubernetes.cri.sandbox-id"),
    ("io.kubernetes.cri-o.ContainerType", "container", "io.kubernetes.cri-o.SandboxID"),
)
SANDBOX_TYPES = (("io.kubernetes.cri.container-type", "sandbox"),
                 ("io.kubernetes.cri-o.ContainerType", "sandbox"))
TMPFS_OPTIONS = ("size=", "mode=", "nr_inodes=")
# What a member's bundle asks that its pod VM, booted by the sandbox, decides instead.
MEMBER_NOTE = ("linux.resources, vmm.* annotations, hostname: the container runs in its pod's "
               "VM, whose size and hostname are the pod sandbox's (a VM cannot grow)")


def is_pod_sandbox(annotations: dict) -> bool:
    """Whether a bundle is a pod's sandbox (pause) container."""
    return any(annotations.get(k) == v for k, v in SANDBOX_TYPES)


def member_sandbox(annotations: dict, cid: str) -> Optional[str]:
    """The id of the pod sandbox a bundle is a member of, or None (not a pod's container)."""
    for kind, value, sandbox in MEMBER_ANNOTATIONS:
        sid = annotations.get(sandbox)
        if annotations.get(kind) == value and sid and sid != cid:
            return sid
    return None


def pod_dir_of(store: StateStore, sid: str) -> str:
    return os.path.join(store.dir(sid), POD_DIR_NAME)


def pod_vm_of(store: StateStore, sid: str) -> Optional[ContainerState]:
    """The live sandbox state a member of sid joins; None if sid is not in this --root
    (the member is then a VM of its own); RuntimeFailure if it is ours but cannot take it."""
    try:
        sandbox = store.load(sid)
    except ContainerNotFound:
        return None
    if sandbox.current_status() not in LIVE or not sandbox.agent_socket:
        raise RuntimeFailure(f"the pod's sandbox container {sid} is not running "
                             f"({sandbox.current_status()}): its VM is the pod's")
    if not sandbox.pod_dir:
        raise RuntimeFailure(f"the pod's sandbox container {sid} has no pod share (a pod VM "
                             "needs the runtime to run as root), so its containers cannot "
                             "join it")
    return sandbox


# --- the sandbox's side -------------------------------------------------------------------
def prepare_pod_dir(path: str) -> str:
    """<state dir>/pod as a shared mount point of its own, before virtiofsd starts."""
    os.mkdir(path, 0o711)
    bind(path, path)
    try:
        make_shared(path)
    except OSError:
        detach_under(path)
        raise
    return path


def release_pod_dir(path: str) -> None:
    """Unmounts every member's binds and the pod directory itself, then removes it."""
    if os.path.lexists(path):
        detach_under(path)
        remove_tree(path)


# --- a member's side ----------------------------------------------------------------------
def member_dir(pod_dir: str, cid: str) -> str:
    return os.path.join(pod_dir, cid)


def bind_member(pod_dir: str, cid: str, bundle: Bundle) -> dict:
    """Binds the member's rootfs and host bind mounts under the pod directory; returns its
    guest root as state.json keeps it (container_root() makes the agent's from it). On
    failure nothing is left mounted or made."""
    if not os.path.isdir(pod_dir):
        raise RuntimeFailure(f"the pod directory {pod_dir} is gone (the pod's sandbox ended)")
    here = member_dir(pod_dir, cid)
    guest = f"{GUEST_POD_DIR}/{cid}"
    os.mkdir(here, 0o700)
    try:
        os.mkdir(os.path.join(here, "rootfs"))
        os.mkdir(os.path.join(here, "mounts"))
        _bind_private(bundle.root, os.path.join(here, "rootfs"))
        mounts = []
        for n, m in enumerate(bundle.mounts):
            if m.type == "tmpfs":
                data = ",".join(o for o in m.options if o.startswith(TMPFS_OPTIONS))
                mounts.append({"destination": m.destination, "source": data, "tmpfs": True,
                               "read_only": m.read_only})
                continue
            target = os.path.join(here, "mounts", str(n))
            _make_mount_point(m.source, m.destination, target)
            if m.read_only:   # read-only on the host: the guest cannot be trusted to keep it
                _bind_read_only(pod_dir, m.source, target)
            else:
                _bind_private(m.source, target)
            mounts.append({"destination": m.destination, "source": f"{guest}/mounts/{n}",
                           "tmpfs": False, "read_only": m.read_only})
    except BaseException:
        unbind_member(pod_dir, cid)
        raise
    return {"path": f"{guest}/rootfs", "read_only": bundle.root_readonly, "mounts": mounts}


def _bind_private(source: str, target: str) -> None:
    bind(source, target)
    try:
        make_slave(target)   # nothing mounted below it later goes back to the source
    except OSError:
        detach_under(target)
        raise


def _bind_read_only(pod_dir: str, source: str, target: str) -> None:
    """The staging point sits beside the pod directory, outside its shared mount."""
    stage = os.path.join(os.path.dirname(pod_dir), f".stage-{os.getpid()}")
    _make_mount_point(source, target, stage)
    try:
        bind_read_only(source, target, stage)
        make_slave(target)
    except BaseException:
        detach_under(target)
        raise
    finally:
        (os.rmdir if os.path.isdir(stage) else os.unlink)(stage)


def _make_mount_point(source: str, destination: str, target: str) -> None:
    from ..errors import ConfigError
    try:
        st = os.stat(source)
    except OSError as e:
        raise ConfigError(f"mount {destination}: source {source}: {e.strerror}") from None
    if stat.S_ISDIR(st.st_mode):
        os.mkdir(target)
    elif stat.S_ISREG(st.st_mode):
        os.close(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
    else:
        raise ConfigError(f"mount {destination}: source {source} is neither a directory nor "
                          "a regular file")


def unbind_member(pod_dir: str, cid: str) -> None:
    """Unmounts the member's binds, then removes its directory (never across a mount)."""
    here = member_dir(pod_dir, cid)
    if os.path.lexists(here):
        detach_under(here)
        remove_tree(here)


def container_root(spec: dict):
    """The agent's ContainerRoot from what bind_member() returned."""
    from ..agent.container_root import ContainerRoot, RootMount
    root = ContainerRoot(path=spec["path"], read_only=bool(spec.get("read_only")),
                         mounts=tuple(RootMount(destination=m["destination"], source=m["source"],
                                                tmpfs=bool(m["tmpfs"]),
                                                read_only=bool(m["read_only"]))
                                      for m in spec.get("mounts", ())))
    root.check()
    return root


class MemberVm:
    """What a member's monitor holds instead of a VM of its own: a connection to the pod
    VM's agent, over which its process starts in its own root (Monitor's boot object)."""

    def __init__(self, sandbox: ContainerState, root):
        from ..agent import AgentClient, AgentError, DEFAULT_VSOCK_PORT
        self.sid, self.root = sandbox.id, root
        self.socket_path, self.pod_dir = sandbox.agent_socket, sandbox.pod_dir
        try:
            self.client = AgentClient.connect(self.socket_path, DEFAULT_VSOCK_PORT)
            self.client.wait_ready(10)
        except (OSError, AgentError) as e:
            raise RuntimeFailure(f"cannot reach the pod VM of sandbox {self.sid}: {e}") from None

    def exec_stream(self, argv, **kwargs):
        return self.client.exec_stream(argv, root=self.root, **kwargs)

    def pause(self) -> None:
        raise RuntimeFailure(refuse_pause(self.sid))

    resume = pause

    def stop(self) -> None:
        self.client.close()


def refuse_pause(sid: str) -> str:
    return (f"a container of a pod runs in the pod's VM (sandbox {sid}): pausing or resuming "
            "it alone would freeze or thaw every container of the pod")


class JoinedClient:
    """An agent client whose processes start in a member's mount namespace (exec)."""

    def __init__(self, client, join_pid: Optional[int], root):
        self.client, self.join_pid, self.root = client, join_pid, root

    def exec_stream(self, argv, **kwargs):
        if self.join_pid:
            return self.client.exec_stream(argv, join_pid=self.join_pid, **kwargs)
        return self.client.exec_stream(argv, root=self.root, **kwargs)   # not started yet
