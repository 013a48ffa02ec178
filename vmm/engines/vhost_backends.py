"""The QEMU engine's device back ends: one Device (virtio_device.py) per configured disk,
vsock and net, each served by its own VhostUserServer on a Unix socket in a private directory.

Life cycle: open() before QEMU is spawned (QEMU is the vhost-user client and must find
every socket listening), close() after QEMU has been reaped. close() always runs to the
end: servers stopped first (their threads joined, sockets closed), then devices closed
(which ends a passt helper), then the directory removed. A device that fails to open
leaves nothing behind: what was already opened is closed again before the error rises.

Isolation: the servers run on the C core's one event-loop thread of this process. Under msb
that process is the sandbox's own supervisor, so a back end that fails takes down one
sandbox. An embedder running several machines in one process shares that thread and
address space between them: the back end refuses what could crash it (unsealed memfds,
fds that are not eventfds) and bounds what could stall it (a reply waits at most 1 s for
a front end to read; a half-sent message holds only its own connection), but a crash
there would reach every machine of the process.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from typing import List, Optional

from ..errors import VmmError
from .device_order import attached_devices, stats_entry


class VhostBackends:
    def __init__(self, spec):
        self._spec = spec
        self._dir: Optional[str] = None
        self._attached = []     # (kind, name, Device)
        self._servers = []      # VhostUserServer, same order
        self._final: Optional[List[dict]] = None
        self.qemu_devices: List[dict] = []  # entries for qemu.vhost_user_args()

    def open(self) -> None:
        wanted = attached_devices(self._spec)
        if not wanted:
            return
        # Imported here: the C core loads only when a machine has devices.
        from .vhost_user_server import VhostUserServer
        from .virtio_device import open_device
        try:
            # mkdtemp makes the directory 0700: no other user can reach our sockets.
            self._dir = tempfile.mkdtemp(prefix="vmm-vhost-")
            for kind, name, cfg in wanted:
                dev = open_device(cfg)
                self._attached.append((kind, name, dev))
                path = os.path.join(self._dir, f"{name}.sock")
                self._servers.append(VhostUserServer(dev, path))
                self.qemu_devices.append({"kind": kind, "socket": path,
                                          "options": _qemu_options(kind, dev)})
        except BaseException:
            self.close()
            raise

    def stats(self) -> List[dict]:
        if self._final is not None:
            return [dict(s) for s in self._final]
        return [stats_entry(kind, name, dev.counters()) for kind, name, dev in self._attached]

    def errors(self) -> List[str]:
        """What a server or device reported as broken (for an exit message)."""
        out = []
        for (kind, name, dev), srv in zip(self._attached, self._servers):
            for what in (srv.error, dev.broken):
                if what:
                    out.append(f"{name}: {what}")
        return out

    def close(self) -> None:
        """Idempotent; collects every failure and raises the first one only at the end."""
        first: Optional[BaseException] = None
        if self._attached and self._final is None:
            try:
                self._final = self.stats()
            except Exception as e:
                first = first or e
        for srv in self._servers:
            try:
                srv.stop()
            except Exception as e:
                first = first or e
        self._servers = []
        for _, _, dev in self._attached:
            try:
                dev.close()
            except Exception as e:
                first = first or e
        self._attached = []
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None
        if first is not None:
            raise VmmError(f"closing the device back ends failed: {first}") from first


def _qemu_options(kind: str, dev) -> dict:
    """-device properties QEMU needs from us. For net, QEMU's virtio-net (not the back end)
    serves the config space, so it must be told the MAC the device was opened with."""
    if kind == "net":
        mac = dev.config(0, 6)
        return {"mac": ":".join(f"{b:02x}" for b in mac)}
    return {}
