"""Linux capabilities by name, and the five sets an exec can be given (the EXEC request's
CAPS field, guest/agent/PROTOCOL.md).

    caps = Capabilities(bounding=["CAP_NET_BIND_SERVICE"], permitted=["CAP_NET_BIND_SERVICE"],
                        effective=..., inheritable=..., ambient=...)
    caps.masks()   # five u64 bit masks, bit n = capability n

The numbers are the kernel's ABI (include/uapi/linux/capability.h); the table stops at
CAP_CHECKPOINT_RESTORE (40), the last one the guest agent knows. A name not in it is a
ValueError naming it (as runc refuses an unknown capability).
"""
from __future__ import annotations

from typing import Iterable, Tuple, Union

from ..record import Record   # not dataclasses: `msb exec` imports this (vmm/record.py)

NAMES = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID",
    "CAP_KILL", "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE", "CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW",
    "CAP_IPC_LOCK", "CAP_IPC_OWNER", "CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE", "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE", "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE",
    "CAP_AUDIT_WRITE", "CAP_AUDIT_CONTROL", "CAP_SETFCAP", "CAP_MAC_OVERRIDE", "CAP_MAC_ADMIN",
    "CAP_SYSLOG", "CAP_WAKE_ALARM", "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ", "CAP_PERFMON",
    "CAP_BPF", "CAP_CHECKPOINT_RESTORE",
)
NUMBERS = {name: n for n, name in enumerate(NAMES)}
LAST_CAP = len(NAMES) - 1      # 40
SETS = ("bounding", "effective", "permitted", "inheritable", "ambient")   # the wire's order

Cap = Union[str, int]


def cap_number(cap: Cap) -> int:
    """A capability's number from its name ("CAP_CHOWN", or "chown") or number (0..40)."""
    if isinstance(cap, bool):
        raise ValueError(f"not a capability: {cap!r}")
    if isinstance(cap, int):
        if not 0 <= cap <= LAST_CAP:
            raise ValueError(f"capability number {cap} is outside 0..{LAST_CAP}")
        return cap
    if not isinstance(cap, str):
        raise ValueError(f"not a capability: {cap!r}")
    key = cap.upper() if cap.upper().startswith("CAP_") else "CAP_" + cap.upper()
    if key not in NUMBERS:
        raise ValueError(f"unknown capability {cap[:64]!r}")
    return NUMBERS[key]


def _mask(caps: Iterable[Cap]) -> int:
    mask = 0
    for c in caps:
        mask |= 1 << cap_number(c)
    return mask


class Capabilities(Record):
    """The five capability sets of a process (names or numbers); a set left out is empty,
    as in an OCI bundle's process.capabilities."""
    bounding: Tuple[Cap, ...] = ()
    effective: Tuple[Cap, ...] = ()
    permitted: Tuple[Cap, ...] = ()
    inheritable: Tuple[Cap, ...] = ()
    ambient: Tuple[Cap, ...] = ()

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for name in SETS:
            value = getattr(self, name)
            if isinstance(value, (str, bytes)):
                raise ValueError(f"capabilities.{name} must be a list of names, not {value!r}")
            setattr(self, name, tuple(value))
        self.masks()   # names checked here, not at the first exec

    def masks(self) -> Tuple[int, ...]:
        """The five sets as bit masks, in the wire's order (SETS)."""
        return tuple(_mask(getattr(self, name)) for name in SETS)
