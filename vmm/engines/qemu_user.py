"""Running QEMU as an unprivileged user of its own (QemuOptions(user=...)).

When we are root, QEMU (which runs guest code under TCG and implements what the guest's
devices see) need not be: it drops to a uid no other process uses, so a guest that breaks
into QEMU cannot read the host's files, signal or ptrace other VMs' QEMUs, or reach other
sandboxes' sockets. QEMU 7.2's own `-runas` cannot do it: it changes uid after `-sandbox`
is installed, and `elevateprivileges=deny` (or `children`) then kills QEMU at start
(checked; `-run-with user=` is QEMU 9); a uid change inside QEMU would also clear the
parent-death signal that makes QEMU die with its owner (child_process.py). So the uid
changes between fork and exec (subprocess's user=/group=/extra_groups=[], before the
spawner's pre-exec hook sets the death signal), and QEMU must open nothing by a path only
root can reach. What it would open by path is handed over instead:

- the kernel and initrd (under root's 0700 home): `-kernel /proc/self/fd/N`, which opens
  the file we opened, whatever the directories around it allow;
- the vhost-user sockets of our own back ends (in a 0700 directory of ours, maybe under
  another 0700 directory, a sandbox's runtime directory): each socket is given to QEMU's
  uid (chown, mode 0700: still no other user can connect), their directory made
  searchable (0711), and QEMU starts in it (subprocess enters cwd while still root) and
  connects by the bare name: a relative path is resolved from the working directory, so
  the directories above it are never checked. Not a descriptor: QEMU 7.2's vhost-user
  netdev refuses a `chardev socket,fd=N` ("does not support FD passing");
- a vhost-user socket someone else serves (QemuOptions(vhost_user=...)): blk and vsock
  are connected here and given as `-chardev socket,fd=N`; a net one keeps its path,
  which that uid must be able to reach.

Guest RAM is QEMU's own memfd, created after the switch; the disks are opened by our back
ends, never by QEMU. Paths in QemuOptions(extra_args) are the caller's: they must be
reachable by that uid (or pass user=None).

Which uid: `auto` takes one from a range no Debian or systemd allocation uses,
UID_BASE + (our pid << 9) + a slot free in this process: pids are unique among live
processes, and a QEMU dies with the process that started it, so two live QEMUs never
share a uid. Group = the same number, no supplementary groups.
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


class QemuUser:
    """The uid of one QEMU and what it inherits; release() once QEMU is reaped."""

    def __init__(self, user):
        """user: QemuOptions.user ("auto", an int uid, or None)."""
        self.uid: Optional[int] = None
        self.cwd: Optional[str] = None  # QEMU's working directory (own_sockets())
        self._slot: Optional[int] = None
        self._fds: List[int] = []
        self._socks: List[socket.socket] = []
        if user == "auto":
            if os.geteuid() == 0:
                self._slot = _take_slot()
                self.uid = UID_BASE + (os.getpid() << 9) + self._slot
        elif user is not None:
            self.uid = int(user)

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
        """Our back ends' entries, their sockets open to QEMU's uid alone and named
        relative to its working directory (self.cwd)."""
        if not self.active:
            return list(devices)
        out = []
        for dev in devices:
            where, name = os.path.split(str(dev["socket"]))
            if self.cwd not in (None, where):
                raise ValueError(f"our vhost-user sockets are in two directories: {self.cwd}, {where}")
            self.cwd = where
            os.chown(os.path.join(where, name), self.uid, self.uid)
            os.chmod(os.path.join(where, name), 0o700)
            os.chmod(where, 0o711)
            out.append(dict(dev, socket=name))
        return out

    def vhost_user(self, devices) -> list:
        """Someone else's back ends: a blk or vsock socket becomes a connected descriptor
        ("fd"); net keeps its path (see the module docstring)."""
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
        return {"user": self.uid, "group": self.uid, "extra_groups": [],
                **({"cwd": self.cwd} if self.cwd else {})}

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
