"""Which devices a MachineSpec attaches, in the one order every engine uses.

Order is disks, then the vsock device, then nets: the guest sees the first disk as
/dev/vda, the second as /dev/vdb, and device_stats() lists counters in the same order,
each named so a caller need not recount (vda, vdb, ..., vsock, net0, net1, ...).
"""
from __future__ import annotations

import string
from typing import List, Tuple

from ..errors import ConfigError


def disk_name(index: int) -> str:
    """Linux's virtio-blk naming: vda..vdz, then vdaa, vdab, ..."""
    letters = string.ascii_lowercase
    name = ""
    index += 1
    while index:
        index, r = divmod(index - 1, 26)
        name = letters[r] + name
    return "vd" + name


def attached_devices(spec) -> List[Tuple[str, str, object]]:
    """[(kind, name, config)] with kind "blk" | "vsock" | "net"."""
    out = [("blk", disk_name(i), d) for i, d in enumerate(spec.disks)]
    if spec.vsock is not None:
        out.append(("vsock", "vsock", spec.vsock))
    out += [("net", f"net{i}", n) for i, n in enumerate(spec.nets)]
    if not out:
        return out
    # Here, not at the top: a machine without devices need not load the config types.
    from ..devices import Disk, Net, Vsock
    config_of = {"blk": Disk, "vsock": Vsock, "net": Net}
    for kind, name, cfg in out:
        if not isinstance(cfg, config_of[kind]):
            raise ConfigError(f"device {name}: {cfg!r} is not a vmm.devices config object "
                              f"({config_of[kind].__name__})")
    return out


def stats_entry(kind: str, name: str, counters: dict) -> dict:
    return dict(counters, kind=kind, name=name)
