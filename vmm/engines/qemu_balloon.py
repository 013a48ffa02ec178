"""The qemu engine's balloon: free page reporting only, so the host drops guest RAM the
guest freed (docs/architecture.md, "QEMU engine memory").

    balloon_args(spec)      -> ["-device", "virtio-balloon-device,..."] or []
    PAGE_REPORTING_ARG      the kernel command line's part for it (always there: inert
                            without the device)
"""
from __future__ import annotations

import os
from typing import List

from ..errors import ConfigError
from .base import MachineSpec
from .device_order import attached_devices
from .options import QemuOptions

# `virtio-balloon-device,free-page-reporting=on`: the guest's buddy allocator reports free
# blocks (two seconds after a free, in batches) and QEMU discards them, punching holes in
# the guest-RAM memfd (QEMU's RssShmem falls; our vhost-user back ends map the same memfd
# and pin none of those pages), so the kernel's freed init sections and whatever a
# workload freed stop costing host memory. It never inflates (no target size is ever set)
# and deflate-on-oom is on, so it cannot take memory the guest needs.
# VMM_QEMU_BALLOON=off turns it off for callers that take no engine options.
#
# The guest reports blocks of 2^order pages; its own default (the pageblock, 4 MiB in our
# kernel) left the ~3.5 MiB of freed init sections unreported. Measured per idle sandbox
# (bench density --count 20 --mode concurrent, guest RAM touched 30.7 MiB without the
# balloon): order 3 (32 KiB) 27.6, order 0 27.5, order 5 28.0, the default 30.7. Order 3
# keeps single pages and small frees (a busy guest's constant churn) out of reporting.
# The balloon driver overwrites the kernel's parameter when it registers, so the guest
# agent writes it again from the command line (guest/agent/pid1.c).
BALLOON_ENV = "VMM_QEMU_BALLOON"
BALLOON_DEVICE = "virtio-balloon-device,free-page-reporting=on,deflate-on-oom=on"
PAGE_REPORTING_ORDER = 3
# On every qemu guest's command line (engines/qemu.py BASE_CMDLINE): without a balloon the
# kernel never reads it, and one prefix for all keeps the command line's size predictable.
PAGE_REPORTING_ARG = f"page_reporting.page_reporting_order={PAGE_REPORTING_ORDER}"

# microvm without ACPI has 8 virtio-mmio transports; a ninth device fails QEMU's start
# ("No 'virtio-bus' bus found"). The balloon takes a free one or, by default, none.
MICROVM_TRANSPORTS = 8


def balloon_on(spec: MachineSpec) -> bool:
    """Whether the machine gets the free-page-reporting balloon: QemuOptions(balloon=), else
    $VMM_QEMU_BALLOON, else yes; by default only while a virtio-mmio transport is left
    after the devices asked for (an explicit balloon=True without one is refused)."""
    options = spec.options if spec.options is not None else QemuOptions()
    wanted = options.balloon
    if wanted is None:
        text = os.environ.get(BALLOON_ENV, "").strip().lower()
        if text not in ("", "on", "1", "yes", "off", "0", "no"):
            raise ConfigError(f"{BALLOON_ENV}={text!r}: say on or off")
        if text in ("off", "0", "no"):
            return False
    elif not wanted:
        return False
    # Shared directories (virtio-fs, where the spec has them) take transports too.
    used = (len(attached_devices(spec)) + len(options.vhost_user)
            + len(getattr(spec, "shared_dirs", ()) or ()))
    if used < MICROVM_TRANSPORTS:
        return True
    if wanted:
        raise ConfigError(f"QemuOptions(balloon=True): the machine's {used} devices take all "
                          f"{MICROVM_TRANSPORTS} virtio-mmio transports of QEMU's microvm; "
                          "leave balloon unset to go without it")
    return False


def balloon_args(spec: MachineSpec) -> List[str]:
    """QEMU's arguments for the balloon (one -device; no other device depends on its
    virtio-mmio slot: disks are named by their own order and serials)."""
    return ["-device", BALLOON_DEVICE] if balloon_on(spec) else []
