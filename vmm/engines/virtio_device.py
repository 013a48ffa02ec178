"""A virtio device of the C core, made from a config of vmm.devices, and its handle.

open_device(Disk | Vsock | Net) creates the C object (and, for Net with backend "passt",
the passt process); the Device it returns serves a guest through exactly one transport:
the kvm engine's in-process virtio-mmio, or a VhostUserServer for the qemu engine. A
Device is closed exactly once, after every transport using it has stopped.
"""
from __future__ import annotations

import os
from typing import Optional

from .. import _binding
from ..devices import Disk, Net, Vsock, parse_mac
from ..errors import ConfigError, VmmError

COUNTERS = ("requests", "bytes_read", "bytes_written", "frames_in", "frames_out", "errors",
            "rejected", "interrupts", "connections", "resets", "budget_yields")


def open_device(config) -> "Device":
    """The C core's device for a Disk, Vsock or Net config; ConfigError with the core's
    reason (or ours) if it cannot be made."""
    if isinstance(config, Disk):
        return _open_disk(config)
    if isinstance(config, Vsock):
        return _open_vsock(config)
    if isinstance(config, Net):
        return _open_net(config)
    raise ConfigError(f"{config!r} is not a vmm.devices config (Disk, Vsock or Net)")


def _open_disk(disk: Disk) -> "Device":
    path = os.fspath(disk.path)
    if not os.path.exists(path):
        raise ConfigError(f"disk image {path} does not exist")
    if disk.serial is not None and len(disk.serial.encode()) > 20:
        raise ConfigError(f"disk serial {disk.serial!r} is longer than 20 bytes")
    serial = disk.serial.encode() if disk.serial is not None else _binding.ffi.NULL
    return Device(_binding.check(_binding.lib.vmm_blk_new, path.encode(), int(disk.read_only), serial),
                  "blk")


def _open_vsock(vsock: Vsock) -> "Device":
    if not 3 <= vsock.cid < 0xFFFFFFFF:
        raise ConfigError(f"vsock guest CID {vsock.cid} must be between 3 and 2^32-2")
    return Device(_binding.check(_binding.lib.vmm_vsock_new, vsock.cid,
                                 os.fspath(vsock.socket_path).encode()), "vsock")


def _open_net(net: Net) -> "Device":
    from .net_backend import open_backend  # subprocess, socket: only machines with a net
    mac = parse_mac(net.mac)
    fd, kind, proc = open_backend(net)
    try:
        p = _binding.check(_binding.lib.vmm_net_new, fd, kind, mac)  # owns fd, also on failure
    except ConfigError:
        if proc:
            proc.kill()
            proc.wait()
        raise
    dev = Device(p, "net", helper=proc)
    if net.policy is not None:
        from ..net.policy import PolicyEngine
        try:
            dev.policy = PolicyEngine(net.policy)   # freed after the device (close())
            _binding.check(_binding.lib.vmm_net_set_policy, p, dev.policy.handle)
        except BaseException:
            dev.close()
            raise
    return dev


class Device:
    """A device object of the C core. Not thread-safe to close while in use."""

    def __init__(self, ptr, kind: str, helper=None):
        self._p = ptr
        self.kind = kind
        self._servers = 0
        self._helper = helper  # a backend process we started (passt), ended on close
        self.policy = None     # net: the PolicyEngine the C device checks frames against

    @property
    def ptr(self):
        if self._p is None:
            raise VmmError(f"virtio-{self.kind} device is closed")
        return self._p

    def add_server(self) -> None:
        """A vhost-user server now serves this device: close() refuses until it stops."""
        self._servers += 1

    def remove_server(self) -> None:
        self._servers -= 1

    def counters(self) -> dict:
        c = _binding.ffi.new("struct vmm_vdev_counters *")
        _binding.lib.vmm_vdev_counters(self.ptr, c)
        out = {k: getattr(c, k) for k in COUNTERS}
        if self.policy is not None:
            out["policy"] = self.policy.stats()   # verdict counts and per-rule hits
        return out

    @property
    def broken(self) -> Optional[str]:
        return _binding.string(_binding.lib.vmm_vdev_broken(self.ptr))

    @property
    def features(self) -> int:
        return _binding.lib.vmm_vdev_features(self.ptr)

    def config(self, off: int = 0, length: int = 64) -> bytes:
        ffi = _binding.ffi
        buf = ffi.new("uint8_t[]", length)
        _binding.lib.vmm_vdev_config_read(self.ptr, off, buf, length)
        return bytes(ffi.buffer(buf))

    def reset(self) -> None:
        _binding.lib.vmm_vdev_reset(self.ptr)

    def close(self) -> None:
        if self._p is None:
            return
        if self._servers:
            raise VmmError(f"virtio-{self.kind} device still has a running vhost-user server")
        _binding.lib.vmm_vdev_free(self._p)
        self._p = None
        self.policy = None  # the C device that used it is gone
        if self._helper is not None:
            self._helper.terminate()
            try:
                self._helper.wait(5)
            except Exception:
                self._helper.kill()
                self._helper.wait()
            self._helper = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            if self._p is not None and not self._servers:
                self.close()
        except Exception:
            pass
