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
from ..devices import SharedDir
from ..errors import ConfigError
from .options import KvmOptions
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


# virtio-fs on the kvm engine: the hiprio queue and one request queue (config
# num_request_queues = 1), of QEMU's vhost-user-fs-device's default size, so both engines
# give the guest the same device.
FS_QUEUES = 2
FS_QUEUE_SIZE = 128


def vhost_user_devices(spec) -> list:
    """[(kind, name, config)]: the devices of a kvm-engine MachineSpec that a vhost-user
    back end serves, attached after the machine's own: the shared dirs ("fs", "fs<i>", a
    SharedDir, served by our virtiofsd), then the KvmOptions(vhost_user=[{...}]) entries
    ("vhost-user<i>", a dict, served by someone else)."""
    options = spec.options if isinstance(spec.options, KvmOptions) else None
    out = [("fs", f"fs{i}", shared) for i, shared in enumerate(spec.shared_dirs)]
    return out + [(dev["kind"], f"vhost-user{i}", dev)
                  for i, dev in enumerate(options.vhost_user if options else ())]


def open_for(cfg, socket_path=None) -> Device:
    """The front end for a KvmOptions(vhost_user=) entry (a dict), or for a SharedDir
    whose virtiofsd listens at socket_path."""
    if isinstance(cfg, SharedDir):
        return open_vhost_user_device("fs", socket_path, config=fs_config(cfg.tag),
                                      num_queues=FS_QUEUES, queue_size=FS_QUEUE_SIZE)
    return open_vhost_user_device(cfg["kind"], cfg["socket"], config=cfg["config"],
                                  num_queues=cfg["num_queues"],
                                  queue_size=cfg.get("queue_size", DEFAULT_QUEUE_SIZE))
