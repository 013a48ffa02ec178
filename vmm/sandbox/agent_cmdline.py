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

The engine puts its own console/reboot/panic arguments in front, and Machine checks the
whole line against the kernel's capacity.
"""
from __future__ import annotations

from typing import Optional

from ..agent import DEFAULT_VSOCK_PORT

# The kernel stays quiet (errors and panics still reach the console log): a sandbox's
# console is for failures, and printing a boot log costs boot time under TCG.
BASE_CMDLINE = "quiet"
IMAGE_DEVICE = "/dev/vda"     # the sandbox attaches the image disk first ...
WRITABLE_DEVICE = "/dev/vdb"  # ... and the writable disk, if any, second


def agent_cmdline(*, writable: bool, hostname: Optional[str], port: int = DEFAULT_VSOCK_PORT,
                  net: str = "", extra: str = "") -> str:
    """The kernel command line of a sandbox (the engine adds console/reboot/panic).

    hostname must already be checked (checks.check_hostname): a space in it would
    split into another parameter.
    """
    parts = [BASE_CMDLINE, f"vmm.root={IMAGE_DEVICE}",
             f"vmm.data={WRITABLE_DEVICE if writable else 'none'}", f"vmm.port={port}"]
    if hostname is not None:
        parts.append(f"vmm.hostname={hostname}")
    if net:
        parts.append(net)
    if extra:
        parts.append(extra)
    return " ".join(parts)
