"""The kernel command line a sandbox boots with: how the host tells the guest agent,
as PID 1, what it needs before any connection exists.

The guest side of this contract is guest/agent/pid1.c, which reads the `vmm.*`
parameters from /proc/cmdline (the kernel does not pass dotted parameters to init);
guest/agent/PROTOCOL.md ("PID-1 configuration") lists them with their defaults:

    vmm.root=     the image disk, mounted read-only (the sandbox's /dev/vda)
    vmm.data=     the writable disk (/dev/vdb), or `none` for a tmpfs upper layer
    vmm.port=     the vsock port the agent listens on
    vmm.hostname= the guest's hostname (omitted: the agent's default)
    vmm.net=      eth0's address, gateway, MTU, DNS (vmm/net/network.py); omitted: no NIC
    vmm.vol=      volumes: SERIAL:MODE:PATH,... (volume_arg below); omitted: none
    vmm.fs=       shared host dirs (virtio-fs): TAG:MODE:PATH,... (shared_dir_arg below)

The engine puts its own console/reboot/panic arguments in front, and Machine checks the
whole line against the kernel's capacity.
"""
from __future__ import annotations

from typing import Optional, Sequence

from ..agent import DEFAULT_VSOCK_PORT
from ..errors import ConfigError

# The kernel stays quiet (errors and panics still reach the console log): a sandbox's
# console is for failures, and printing a boot log costs boot time under TCG.
BASE_CMDLINE = "quiet"
IMAGE_DEVICE = "/dev/vda"     # the sandbox attaches the image disk first ...
WRITABLE_DEVICE = "/dev/vdb"  # ... and the writable disk, if any, second
# Volumes follow as /dev/vdc.., but the guest finds each by the virtio serial the host
# gives its disk (GET_ID, /sys/block/vdX/serial), so that order is never relied on.
# Bytes of the command line the volumes and shared dirs may take together (of 2048, the
# kernel's limit); the agent reads up to 2047 of each parameter.
VOLUME_ARG_BUDGET = 1024
# Bytes of a guest path sent as they are; the rest go as %XX (UTF-8), so a path may hold
# spaces, commas and colons without splitting the parameter or its entries.
_PATH_SAFE = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789/._-+@~=")


def volume_serial(index: int) -> str:
    """The virtio-blk serial of the index-th volume's disk (at most 20 bytes)."""
    return f"vmm-vol{index}"


def shared_dir_tag(index: int) -> str:
    """The virtio-fs tag of the index-th shared host directory (at most 36 bytes)."""
    return f"vmm-fs-{index}"


def encode_guest_path(path: str) -> str:
    return "".join(chr(b) if b in _PATH_SAFE else f"%{b:02X}" for b in path.encode())


def _mount_arg(key: str, entries: Sequence[tuple], what: str, used: int) -> str:
    if not entries:
        return ""
    arg = f"vmm.{key}=" + ",".join(
        f"{encode_guest_path(ident)}:{'ro' if ro else 'rw'}:{encode_guest_path(path)}"
        for ident, path, ro in entries)
    if used + len(arg) > VOLUME_ARG_BUDGET:
        raise ConfigError(f"{len(entries)} {what} need {used + len(arg)} bytes of the kernel "
                          f"command line, over the {VOLUME_ARG_BUDGET} bytes they may take: "
                          "use fewer volumes or shorter guest paths")
    return arg


def volume_arg(volumes: Sequence[tuple]) -> str:
    """`vmm.vol=SERIAL:rw|ro:PATH,...` for (serial, guest_path, read_only) triples in mount
    order (paths already checked by volumes.check_guest_path), or "" for none.
    ConfigError if they do not fit VOLUME_ARG_BUDGET."""
    return _mount_arg("vol", volumes, "volume mounts", 0)


def shared_dir_arg(dirs: Sequence[tuple], used: int = 0) -> str:
    """`vmm.fs=TAG:rw|ro:PATH,...` for (tag, guest_path, read_only) triples in mount order,
    or "" for none; `used` is what volume_arg() took already, since both share
    VOLUME_ARG_BUDGET (ConfigError if they do not fit)."""
    return _mount_arg("fs", dirs, "volume and shared dir mounts", used + 1 if used else 0)


def agent_cmdline(*, writable: bool, hostname: Optional[str], port: int = DEFAULT_VSOCK_PORT,
                  net: str = "", volumes: str = "", extra: str = "") -> str:
    """The kernel command line of a sandbox (the engine adds console/reboot/panic).

    hostname must already be checked (checks.check_hostname): a space in it would
    split into another parameter. volumes is volume_arg()'s result.
    """
    parts = [BASE_CMDLINE, f"vmm.root={IMAGE_DEVICE}",
             f"vmm.data={WRITABLE_DEVICE if writable else 'none'}", f"vmm.port={port}"]
    if hostname is not None:
        parts.append(f"vmm.hostname={hostname}")
    if net:
        parts.append(net)
    if volumes:
        parts.append(volumes)
    if extra:
        parts.append(extra)
    return " ".join(parts)
