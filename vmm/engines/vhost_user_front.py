"""A device of the kvm engine whose queues an external vhost-user back end serves.

open_vhost_user_device() connects the C core's vhost-user front end
(csrc/virtio/vhost_user_front.c) to a back end listening on a Unix socket (virtiofsd, or
our own VhostUserServer) and negotiates features; the Device it returns is attached by the
kvm engine over virtio-mmio like its own devices. Guest RAM must then be shareable: the
engine maps it from a memfd when the machine has any vhost-user device.

The back end is untrusted: a reply that does not come within reply_timeout_ms, or is not
the reply asked for, or a hang-up, marks the device broken (Device.broken says why, the
guest sees DEVICE_NEEDS_RESET) and the VM runs on.
"""
from __future__ import annotations

import os
import struct

from .. import _binding
from ..errors import ConfigError
from .virtio_device import Device

# virtio device ids (virtio 1.x, section 5)
KINDS = {"blk": 2, "fs": 26}
DEFAULT_QUEUE_SIZE = 256
FS_TAG_BYTES = 36


def fs_config(tag: str, num_request_queues: int = 1) -> bytes:
    """virtio-fs config space: tag[36], NUL-padded, then le32 num_request_queues."""
    raw = tag.encode()
    if not 1 <= len(raw) <= FS_TAG_BYTES or b"\0" in raw:
        raise ConfigError(f"virtio-fs tag {tag!r} must be 1-{FS_TAG_BYTES} bytes without NUL")
    return raw.ljust(FS_TAG_BYTES, b"\0") + struct.pack("<I", num_request_queues)


def blk_config(capacity_sectors: int) -> bytes:
    """virtio-blk config space with only the capacity (512-byte sectors) filled in."""
    return struct.pack("<Q", capacity_sectors)


def open_vhost_user_device(kind: str, socket_path, *, config: bytes, num_queues: int,
                           queue_size: int = DEFAULT_QUEUE_SIZE, reply_timeout_ms: int = 0) -> Device:
    """The front end for a back end listening at socket_path: kind "fs" or "blk" (the
    virtio device id the guest sees), config space bytes, num_queues queues of at most
    queue_size entries. reply_timeout_ms: how long any one reply may take (0: the core's
    default, 3 s). ConfigError naming the socket if the back end cannot be reached or
    negotiated with."""
    if kind not in KINDS:
        raise ConfigError(f"vhost-user device kind {kind!r}: choose one of {', '.join(KINDS)}")
    path = os.fspath(socket_path)
    config = bytes(config)
    ffi = _binding.ffi
    p = _binding.check(_binding.lib.vmm_vhost_user_front_new, KINDS[kind], path.encode(),
                       ffi.from_buffer(config) if config else ffi.NULL, len(config),
                       num_queues, queue_size, reply_timeout_ms)
    return Device(p, kind)
