"""Running QEMU as an unprivileged user of its own (QemuOptions(user=...)).

When we are root, QEMU (which runs guest code under TCG and parses everything the guest
device models see) need not be: it drops to a uid no other process uses, so a guest that
breaks into QEMU cannot read the host's files, signal or ptrace other VMs' QEMUs, or touch
our back ends' sockets. QEMU 7.2's own `-runas` cannot be used: it changes uid after
`-sandbox` is installed, and `elevateprivileges=deny` then kills QEMU at start (checked;
`-run-with user=` is QEMU 9). So the uid changes between fork and exec (subprocess's
user=/group=/extra_groups=[]), and QEMU must open nothing by path that only root can
reach. What it would open by path is handed over as inherited file descriptors instead:

- the kernel and initrd (under root's 0700 home): `-kernel /proc/self/fd/N`, which opens
  the file we opened, whatever the directories around it allow;
- the vhost-user sockets of our own back ends (in a 0700 directory of ours): each socket
  is given to QEMU's uid (chown, mode 0700: still no other user can connect) and its
  directory made traversable but not listable (0711). Not a descriptor: QEMU 7.2's
  vhost-user netdev refuses a `chardev socket,fd=N` ("does not support FD passing");
- a vhost-user socket someone else serves (QemuOptions(vhost_user=...)): blk and vsock
  are connected here and given as `-chardev socket,fd=N`; a net one keeps its path,
  which that uid must be able to reach.

Guest RAM is QEMU's own memfd, created after the switch; the disks are opened by our back
ends, never by QEMU. Paths in QemuOptions(extra_args) are the caller's: they must be
reachable by that uid (or pass user=None).

Which uid: `auto` takes one from a range no Debian or systemd allocation uses,
UID_BASE + (our pid << 9) + a slot free in this process: pids are unique among live
processes, and a QEMU dies with the process that started it (child_process.py), so two
live QEMUs never share a uid. Group = the same number, no supplementary groups.
"""
from __future__ import annotations

import os
import socket
import threading
from typing import List, Optional

UID_BASE = 0x70000000      # 1879048192; with pid_max <= 2**22, the top is 0xF0000000
SLOTS_PER_PROCESS = 512

_lock = threading.Lock()
_taken: set = set()


def wanted_uid(user) -> Optional[int]:
    """The uid QEMU should run as for QemuOptions.user, or None to stay as we are."""
    if user is None:
        return None
    if user == "auto":
        return None if os.geteuid() != 0 else -1  # -1: allocate at start
    return int(user)


class QemuUser:
    """The uid of one QEMU and the descriptors it inherits; release() when QEMU is gone."""

    def __init__(self, user):
        self.uid = wanted_uid(user)
        self._slot: Optional[int] = None
        self._fds: List[int] = []
        self._socks: List[socket.socket] = []
        if self.uid == -1:
            self._slot = _take_slot()
            self.uid = UID_BASE + (os.getpid() << 9) + self._slot

    @property
    def active(self) -> bool:
        return self.uid is not None

    def file(self, path: str) -> str:
        """The path QEMU opens for path: itself, or our open descriptor of it."""
        if not self.active:
            return path
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        self._fds.append(fd)
        return f"/proc/self/fd/{fd}"

    def own_sockets(self, devices) -> list:
        """Let QEMU's uid, and only it, connect to our back ends' sockets (by path)."""
        if not self.active:
            return list(devices)
        for dev in devices:
            path = str(dev["socket"])
            os.chown(path, self.uid, self.uid)
            os.chmod(path, 0o700)
            os.chmod(os.path.dirname(path), 0o711)
        return list(devices)

    def vhost_user(self, devices) -> list:
        """Someone else's back ends: blk and vsock sockets replaced by a connected
        descriptor ("fd"); net keeps its path (see the module docstring)."""
        if not self.active:
            return list(devices)
        out = []
        for dev in devices:
            path = dev.get("socket")
            if not path or "fd" in dev or dev.get("kind") == "net":
                out.append(dev)
                continue
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
            self._socks.append(s)
            s.connect(str(path))  # the back end listens before QEMU starts
            out.append(dict(dev, fd=s.fileno()))
        return out

    def pass_fds(self) -> tuple:
        return tuple(self._fds) + tuple(s.fileno() for s in self._socks)

    def popen_args(self) -> dict:
        if not self.active:
            return {}
        return {"user": self.uid, "group": self.uid, "extra_groups": []}

    def close_fds(self) -> None:
        """Our copies: QEMU has its own once it runs (or never will)."""
        for fd in self._fds:
            os.close(fd)
        for s in self._socks:
            s.close()
        self._fds, self._socks = [], []

    def release(self) -> None:
        self.close_fds()
        if self._slot is not None:
            with _lock:
                _taken.discard(self._slot)
            self._slot = None


def _take_slot() -> int:
    with _lock:
        for slot in range(SLOTS_PER_PROCESS):
            if slot not in _taken:
                _taken.add(slot)
                return slot
    from ..errors import ConfigError
    raise ConfigError(f"more than {SLOTS_PER_PROCESS} QEMU processes at once in one process "
                      "(each runs as a uid of its own)")
