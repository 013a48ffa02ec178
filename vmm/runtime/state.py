"""Where the runtime keeps its containers: one directory per container id under the root
(`--root`, default /run/vmm-runtime, or $XDG_RUNTIME_DIR/vmm-runtime for an ordinary user),
holding state.json and the monitor's control socket.

A container's life, as runc's `state` reports it:
    creating  `create` is booting the VM
    created   the VM is up and the process waits for `start`
    running   the process runs in the guest
    paused    the VM is frozen (`pause`; `resume` thaws it)
    stopped   the process ended (or the monitor that owned the VM is gone)

The monitor process (monitor.py) owns the VM and writes its phase here; `state` derives
"stopped" itself when the monitor's pid no longer names the same process (its start time
is recorded beside the pid, so a reused pid is not taken for the monitor). Writes go
through a temporary file and rename, so a reader never sees half a file; transitions take
the container's lock file.
"""
from __future__ import annotations

import datetime
import errno
import fcntl
import json
import os
import re
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional

from ..errors import ConfigError
# One reading of /proc/PID/stat for every "is this still the same process" check (it
# also counts a zombie as dead: a monitor its shim has not reaped yet has ended).
from ..sandbox.state import process_start_time
from .host_mounts import detach_under, remove_tree

OCI_VERSION = "1.0.2"
ID = re.compile(r"[\w+.-]{1,1024}", re.ASCII)
STATE_MAX_BYTES = 1 << 20
CREATING, CREATED, RUNNING, STOPPED = "creating", "created", "running", "stopped"
PAUSED = "paused"                    # the VM is frozen (pause); resume thaws it
LIVE = (CREATED, RUNNING, PAUSED)    # a monitor holds the VM


class ContainerNotFound(ConfigError):
    def __init__(self, cid: str):
        super().__init__("container does not exist")
        self.cid = cid


class ContainerExists(ConfigError):
    def __init__(self, cid: str):
        super().__init__("container with given ID already exists")   # as runc


def default_root() -> str:
    if os.geteuid() == 0:
        return "/run/vmm-runtime"
    base = os.environ.get("XDG_RUNTIME_DIR") or f"/tmp/vmm-runtime-{os.geteuid()}"
    return os.path.join(base, "vmm-runtime")


def check_id(cid: str) -> str:
    if not isinstance(cid, str) or not ID.fullmatch(cid) or cid in (".", ".."):
        raise ConfigError("invalid container ID format")   # runc's words, which callers match
    return cid


def now_rfc3339() -> str:
    t = datetime.datetime.now(datetime.timezone.utc)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond * 1000:09d}Z"


@dataclass
class ContainerState:
    id: str
    bundle: str
    rootfs: str
    created: str
    status: str = CREATING
    pid: int = 0                  # the monitor's pid: it exits with the process's status
    pid_start: Optional[int] = None
    exit_code: Optional[int] = None
    owner: str = ""
    annotations: Dict[str, str] = field(default_factory=dict)
    error: Optional[str] = None   # why create failed, if it did
    agent_socket: Optional[str] = None  # where `exec` reaches the guest agent
    guest_pid: Optional[int] = None     # the process's pid in the guest, once started
    # A pod (pod.py): a sandbox's pod share (host path); a member's sandbox id, the share
    # its binds are under, and its guest root (what pod.container_root() reads).
    pod_dir: Optional[str] = None
    pod_sandbox: Optional[str] = None
    pod_root: Optional[dict] = None

    def alive(self) -> bool:
        return self.pid > 0 and self.pid_start is not None and \
            process_start_time(self.pid) == self.pid_start

    def current_status(self) -> str:
        """The status, with a monitor that died counted as stopped."""
        if self.status in (CREATING,) + LIVE and self.pid and not self.alive():
            return STOPPED
        return self.status

    def oci(self) -> dict:
        """The state as runc's `state` prints it."""
        status = self.current_status()
        out = {"ociVersion": OCI_VERSION, "id": self.id,
               "pid": self.pid if status in LIVE else 0,
               "status": status, "bundle": self.bundle, "rootfs": self.rootfs,
               "created": self.created, "owner": self.owner}
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        return out


class StateStore:
    def __init__(self, root: Optional[str] = None):
        self.root = os.path.abspath(root or default_root())

    def dir(self, cid: str) -> str:
        return os.path.join(self.root, check_id(cid))

    def socket_path(self, cid: str) -> str:
        return os.path.join(self.dir(cid), "monitor.sock")

    def create(self, state: ContainerState) -> None:
        """Claims the id (ContainerExists if taken) and writes the first state."""
        os.makedirs(self.root, mode=0o711, exist_ok=True)
        try:
            os.mkdir(self.dir(state.id), 0o700)
        except FileExistsError:
            raise ContainerExists(state.id) from None
        self.write(state)

    def lock(self, cid: str) -> "_Lock":
        return _Lock(os.path.join(self.dir(cid), "lock"))

    def load(self, cid: str) -> ContainerState:
        path = os.path.join(self.dir(cid), "state.json")
        try:
            with open(path, "rb") as f:
                data = f.read(STATE_MAX_BYTES + 1)
        except FileNotFoundError:
            raise ContainerNotFound(cid) from None
        try:
            raw = json.loads(data)
            return ContainerState(**{k: raw[k] for k in ContainerState.__dataclass_fields__ if k in raw})
        except (ValueError, TypeError) as e:
            raise ConfigError(f"the state of container {cid} is damaged ({path}): {e}") from None

    def write(self, state: ContainerState) -> None:
        d = self.dir(state.id)
        tmp = os.path.join(d, f".state.{os.getpid()}.tmp")
        with open(tmp, "w") as f:
            json.dump(asdict(state), f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, os.path.join(d, "state.json"))

    def update(self, cid: str, **changes) -> ContainerState:
        with self.lock(cid):
            st = self.load(cid)
            for k, v in changes.items():
                setattr(st, k, v)
            self.write(st)
            return st

    def remove(self, cid: str) -> None:
        """Removes the container's directory; whatever is mounted below it (a pod sandbox's
        share, with a member's binds of a user's directories) is unmounted first, and the
        removal never goes into a mount point: OSError if one is left."""
        d = self.dir(cid)
        detach_under(d)
        for attempt in range(2):
            try:
                return remove_tree(d)
            except OSError as e:
                # A monitor ending meanwhile may add a file (its last state): once more,
                # then leave what stays, as before; a mount point left is an error.
                if e.errno == errno.EBUSY:
                    raise

    def ids(self) -> List[str]:
        try:
            names = os.listdir(self.root)
        except FileNotFoundError:
            return []
        return sorted(n for n in names if ID.fullmatch(n)
                      and os.path.exists(os.path.join(self.root, n, "state.json")))


class _Lock:
    def __init__(self, path: str):
        self.path = path
        self.fd = -1

    def __enter__(self):
        try:
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as e:
            if e.errno == errno.ENOENT:
                raise ContainerNotFound(os.path.basename(os.path.dirname(self.path))) from None
            raise
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        os.close(self.fd)
        self.fd = -1
