"""Device configs: what virtio devices a machine should have (Disk, Vsock, Net).

Plain frozen values: making one starts no process and creates no C object, so a config
can be built, compared and passed around freely. The engine that boots the machine turns
each into a device of the C core when it starts (engines/virtio_device.py), and checks
what only then can be checked (the disk file exists, the socket path fits).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

from .errors import ConfigError

NET_BACKENDS = ("passt", "socket", "tap")


def parse_mac(mac: Optional[str]) -> bytes:
    """The six bytes of "02:00:00:00:00:01"; None draws a random locally administered,
    unicast address (02:xx:xx:xx:xx:xx), a new one on every call."""
    if mac is None:
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


@dataclass(frozen=True)
class Vsock:
    """virtio-vsock with guest CID `cid`; the host side is the Unix socket `socket_path`
    (host clients connect there and write `CONNECT <port>\\n`; guest connections to host
    port P go to `<socket_path>_P`)."""
    cid: int
    socket_path: str


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
    # An egress policy (vmm.net.policy.Policy) the device enforces on every frame the
    # guest sends; None lets everything through.
    policy: Optional[object] = None

    def __post_init__(self):
        if self.backend not in NET_BACKENDS:
            raise ConfigError(f"net backend {self.backend!r} is not one of {', '.join(NET_BACKENDS)}")
        parse_mac(self.mac)
