"""virtio devices of the C core, as small config objects and thin handles.

Config objects (Disk, Vsock, Net) say what a machine should have; open() turns one into a
Device, the C object that serves a guest through a transport: the in-process virtio-mmio
of the KVM engine, or a VhostUserServer for the QEMU engine. A Device is closed exactly
once, after every server using it has stopped.
"""
from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from typing import Optional

from .errors import ConfigError, VmmError

NET_STREAM, NET_TAP = 0, 1
_ERRLEN = 256


def _core():
    from . import _core
    return _core.ffi, _core.lib


def _err():
    ffi, _ = _core()
    return ffi.new("char[]", _ERRLEN), _ERRLEN


def _errstr(buf) -> str:
    ffi, _ = _core()
    return ffi.string(buf).decode(errors="replace")


def _parse_mac(mac: Optional[str]) -> bytes:
    if mac is None:
        # Locally administered, unicast, random: 02:xx:xx:xx:xx:xx.
        return bytes([0x02]) + os.urandom(5)
    parts = mac.split(":")
    try:
        raw = bytes(int(p, 16) for p in parts)
    except ValueError:
        raw = b""
    if len(parts) != 6 or len(raw) != 6 or any(len(p) != 2 for p in parts):
        raise ConfigError(f"MAC address {mac!r} is not six hex bytes like 02:00:00:00:00:01")
    if raw[0] & 1:
        raise ConfigError(f"MAC address {mac!r} is a multicast address")
    return raw


@dataclass(frozen=True)
class Disk:
    """A virtio-blk disk backed by a host file; the guest sees `serial` under /dev/disk/by-id."""
    path: str
    read_only: bool = False
    serial: Optional[str] = None

    def open(self) -> "Device":
        path = os.fspath(self.path)
        if not os.path.exists(path):
            raise ConfigError(f"disk image {path} does not exist")
        if self.serial is not None and len(self.serial.encode()) > 20:
            raise ConfigError(f"disk serial {self.serial!r} is longer than 20 bytes")
        ffi, lib = _core()
        err, n = _err()
        serial = self.serial.encode() if self.serial is not None else ffi.NULL
        p = lib.vmm_blk_new(path.encode(), int(self.read_only), serial, err, n)
        if p == ffi.NULL:
            raise ConfigError(_errstr(err))
        return Device(p, "blk")


@dataclass(frozen=True)
class Vsock:
    """virtio-vsock with guest CID `cid`; the host side is the Unix socket `socket_path`
    (host clients connect there and write `CONNECT <port>\\n`; guest connections to host
    port P go to `<socket_path>_P`)."""
    cid: int
    socket_path: str

    def open(self) -> "Device":
        if not 3 <= self.cid < 0xFFFFFFFF:
            raise ConfigError(f"vsock guest CID {self.cid} must be between 3 and 2^32-2")
        ffi, lib = _core()
        err, n = _err()
        p = lib.vmm_vsock_new(self.cid, os.fspath(self.socket_path).encode(), err, n)
        if p == ffi.NULL:
            raise ConfigError(_errstr(err))
        return Device(p, "vsock")


# passt's end of the socketpair needs a send buffer larger than the guest's TCP receive
# window. passt sends a guest as much as that window allows, in batches of up to 128
# frames, with non-blocking writes; whatever does not fit in the socket is dropped
# (partial sendmsg), and passt only recovers by retransmitting after duplicate ACKs or
# its timer: with the 208 KiB default, a third of passt's batches to a TCG guest were cut
# short and downloads ran at 2-15 MiB/s with ~19 s stalls. 8 MiB (16 MiB once the kernel
# doubles it) holds a whole window of a Linux guest (tcp_rmem max 6 MiB). Memory is
# charged only while frames wait for us.
PASST_SNDBUF = 8 << 20
_SO_SNDBUFFORCE = getattr(socket, "SO_SNDBUFFORCE", 32)


def passt_socketpair():
    """(ours, theirs): a connected Unix stream pair for passt --fd, theirs with a send
    buffer big enough for passt (above). Without CAP_NET_ADMIN the size is capped by
    net.core.wmem_max."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        theirs.setsockopt(socket.SOL_SOCKET, _SO_SNDBUFFORCE, PASST_SNDBUF)
    except OSError:
        theirs.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, PASST_SNDBUF)
    return ours, theirs


@dataclass(frozen=True)
class Net:
    """virtio-net. backend "socket": a Unix stream socket at socket_path speaking 4-byte
    big-endian length framing (passt, QEMU's stream netdev); "tap": the tap device `tap`;
    "passt": passt started by the engine (it passes the connected socket as `fd`)."""
    backend: str = "passt"
    mac: Optional[str] = None
    socket_path: Optional[str] = None
    tap: Optional[str] = None
    fd: Optional[int] = None

    def __post_init__(self):
        if self.backend not in ("passt", "socket", "tap"):
            raise ConfigError(f"net backend {self.backend!r} is not one of passt, socket, tap")
        _parse_mac(self.mac)

    def _start_passt(self):
        """passt (userspace NAT, no root) on one end of a socketpair; we keep the other."""
        import shutil
        import subprocess
        exe = shutil.which("passt")
        if not exe:
            raise ConfigError("net backend passt needs the passt program (Debian package passt)")
        ours, theirs = passt_socketpair()
        try:
            proc = subprocess.Popen([exe, "--foreground", "--quiet", "--fd", str(theirs.fileno())],
                                    pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        finally:
            theirs.close()
        return ours.detach(), proc

    def _backend_fd(self):
        """(fd, kind, helper process or None) of the frame backend."""
        if self.fd is not None:
            return os.dup(self.fd), NET_TAP if self.backend == "tap" else NET_STREAM, None
        if self.backend == "tap":
            if not self.tap:
                raise ConfigError("net backend tap needs a tap device name (tap=...)")
            ffi, lib = _core()
            err, n = _err()
            fd = lib.vmm_net_open_tap(self.tap.encode(), err, n)
            if fd < 0:
                raise ConfigError(_errstr(err))
            return fd, NET_TAP, None
        if self.backend == "passt" and not self.socket_path:
            fd, proc = self._start_passt()
            return fd, NET_STREAM, proc
        if not self.socket_path:
            raise ConfigError(f"net backend {self.backend} needs socket_path or fd")
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(os.fspath(self.socket_path))
        except OSError as e:
            s.close()
            raise ConfigError(f"cannot connect to the network socket {self.socket_path}: {e.strerror}") from None
        return s.detach(), NET_STREAM, None

    def open(self) -> "Device":
        mac = _parse_mac(self.mac)
        fd, kind, proc = self._backend_fd()
        ffi, lib = _core()
        err, n = _err()
        p = lib.vmm_net_new(fd, kind, mac, err, n)
        if p == ffi.NULL:
            if proc:
                proc.kill()
                proc.wait()
            raise ConfigError(_errstr(err))
        return Device(p, "net", helper=proc)


COUNTERS = ("requests", "bytes_read", "bytes_written", "frames_in", "frames_out", "errors",
            "rejected", "interrupts", "connections", "resets")


class Device:
    """A device object of the C core. Not thread-safe to close while in use."""

    def __init__(self, ptr, kind: str, helper=None):
        self._p = ptr
        self.kind = kind
        self._servers = 0
        self._helper = helper  # a backend process we started (passt), ended on close

    @property
    def ptr(self):
        if self._p is None:
            raise VmmError(f"virtio-{self.kind} device is closed")
        return self._p

    def counters(self) -> dict:
        ffi, lib = _core()
        c = ffi.new("struct vmm_vdev_counters *")
        lib.vmm_vdev_counters(self.ptr, c)
        return {k: getattr(c, k) for k in COUNTERS}

    @property
    def broken(self) -> Optional[str]:
        ffi, lib = _core()
        r = lib.vmm_vdev_broken(self.ptr)
        return None if r == ffi.NULL else ffi.string(r).decode()

    @property
    def features(self) -> int:
        return _core()[1].vmm_vdev_features(self.ptr)

    def config(self, off: int = 0, length: int = 64) -> bytes:
        ffi, lib = _core()
        buf = ffi.new("uint8_t[]", length)
        lib.vmm_vdev_config_read(self.ptr, off, buf, length)
        return bytes(ffi.buffer(buf))

    def reset(self) -> None:
        _core()[1].vmm_vdev_reset(self.ptr)

    def close(self) -> None:
        if self._p is None:
            return
        if self._servers:
            raise VmmError(f"virtio-{self.kind} device still has a running vhost-user server")
        _core()[1].vmm_vdev_free(self._p)
        self._p = None
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


class VhostUserServer:
    """Serves one Device over vhost-user on the Unix socket `path` (its own C thread)."""

    def __init__(self, device: Device, path: str):
        ffi, lib = _core()
        path = os.fspath(path)
        if os.path.exists(path):
            os.unlink(path)
        err, n = _err()
        p = lib.vmm_vhost_user_start(device.ptr, path.encode(), err, n)
        if p == ffi.NULL:
            raise VmmError(_errstr(err))
        self._p = p
        self.device = device
        self.path = path
        device._servers += 1

    @property
    def connected(self) -> bool:
        return self._p is not None and bool(_core()[1].vmm_vhost_user_connected(self._p))

    @property
    def error(self) -> Optional[str]:
        ffi, lib = _core()
        if self._p is None:
            return None
        r = lib.vmm_vhost_user_error(self._p)
        return None if r == ffi.NULL else ffi.string(r).decode()

    def stop(self) -> None:
        if self._p is None:
            return
        _core()[1].vmm_vhost_user_stop(self._p)
        self._p = None
        self.device._servers -= 1

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()
