"""Device configs: what virtio devices a machine should have (Disk, Vsock, Net, SharedDir).

Plain frozen values: making one starts no process and creates no C object, so a config
can be built, compared and passed around freely. The engine that boots the machine turns
each into a device of the C core when it starts (engines/virtio_device.py), and checks
what only then can be checked (the disk file exists, the socket path fits).
"""
from __future__ import annotations

import os
import stat
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


# virtio-fs: the tag is the device's 36-byte config field (NUL-padded), which the guest
# names in `mount -t virtiofs TAG`. A comma or colon would split QEMU's -device argument or
# the guest agent's `vmm.fs=TAG:MODE:PATH` list.
MAX_TAG_BYTES = 36


def check_tag(tag) -> None:
    """A virtio-fs tag: 1-36 bytes of UTF-8, no NUL, comma, colon or whitespace."""
    if not isinstance(tag, str):
        raise ConfigError(f"shared dir tag must be a str, not {type(tag).__name__}")
    raw = tag.encode("utf-8", "surrogateescape")
    if not 1 <= len(raw) <= MAX_TAG_BYTES:
        raise ConfigError(f"shared dir tag {tag!r} must be 1 to {MAX_TAG_BYTES} bytes, "
                          f"not {len(raw)}")
    bad = [c for c in ("\0", ",", ":") if c in tag] + [c for c in tag if c.isspace()]
    if bad:
        raise ConfigError(f"shared dir tag {tag!r} contains {bad[0]!r}: a tag may not contain "
                          "NUL, comma, colon or whitespace")


def existing_directory(path: str, what: str) -> str:
    """path resolved (symlinks followed: virtiofsd refuses a symlink as its source, and a
    later relinking must not change what is served); ConfigError, its message starting
    with what ("root directory"), if path is missing, unreachable or not a directory."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise ConfigError(f"{what} {path} does not exist") from None
    except OSError as e:
        raise ConfigError(f"{what} {path} cannot be reached: {e.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise ConfigError(f"{what} {path} is not a directory")
    return os.path.realpath(path)


def check_shared_source(path: str, tag: str) -> str:
    """The directory a SharedDir shares, resolved (existing_directory). Checked when a
    Machine is made and again when virtiofsd starts."""
    return existing_directory(path, f"shared dir {tag!r}: the host directory")


@dataclass(frozen=True)
class SharedDir:
    """A host directory the guest mounts as virtio-fs: `mount -t virtiofs TAG /mnt`.

    Served by one virtiofsd per SharedDir (engines/virtiofsd.py), started before the guest
    boots and ended with the machine. read_only is enforced by virtiofsd's own view of the
    directory (a read-only bind mount in a mount namespace of its own), whatever the guest
    mounts. log_path: where virtiofsd's messages go (capped like a console file); None: a
    file in the machine's private runtime directory, named by Machine.inspect().
    cache: "auto" (default: host changes are seen, engines/virtiofsd.py) or "always", for
    a tree nobody changes while it is shared (a sandbox's root directory, an overlay lower
    layer): the guest keeps file data, names and attributes across opens."""
    host_path: str
    tag: str
    read_only: bool = False
    log_path: Optional[str] = None
    cache: str = "auto"

    def __post_init__(self):
        if not isinstance(self.host_path, (str, os.PathLike)):
            raise ConfigError(f"shared dir host_path must be a path, not {self.host_path!r}")
        object.__setattr__(self, "host_path", os.fspath(self.host_path))
        if not self.host_path:
            raise ConfigError("shared dir host_path is empty")
        check_tag(self.tag)
        if not isinstance(self.read_only, bool):
            raise ConfigError(f"shared dir {self.tag!r}: read_only must be True or False, "
                              f"not {self.read_only!r}")
        if self.log_path is not None:
            object.__setattr__(self, "log_path", os.fspath(self.log_path))
        if self.cache not in ("auto", "always"):
            raise ConfigError(f"shared dir {self.tag!r}: cache must be 'auto' or 'always', "
                              f"not {self.cache!r}")
