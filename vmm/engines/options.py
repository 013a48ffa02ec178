"""Options only one engine understands, as typed values Machine(options=...) accepts.

Machine refuses options of the engine it did not choose, so a caller learns at Machine()
that, say, Python devices will not exist under QEMU.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Tuple

from ..errors import ConfigError


@dataclass(frozen=True)
class PythonDevice:
    """kvm engine: a port (mmio=False) or MMIO range whose accesses call
    fn(offset, size, is_write, value) -> value read, on the vCPU thread (tests, prototypes)."""
    base: int
    length: int
    fn: Callable[[int, int, bool, int], Optional[int]]
    mmio: bool = True


@dataclass(frozen=True)
class KvmOptions:
    """Options only the kvm engine understands.

    python_devices: PythonDevice ranges added to the VM before boot.
    ioeventfd / irqfd: False forces the slow paths for virtio queue notifies (an MMIO exit
    each) and interrupts (KVM_IRQ_LINE), which a KVM without those features would take;
    tests use it to cover both."""
    python_devices: Tuple[PythonDevice, ...] = ()
    ioeventfd: bool = True
    irqfd: bool = True

    def __post_init__(self):
        object.__setattr__(self, "python_devices", tuple(self.python_devices))


@dataclass(frozen=True)
class QemuOptions:
    """Options only the qemu engine understands.

    extra_args: appended to the qemu-system-x86_64 command line as they are.
    vhost_user: further vhost-user back ends someone else serves, each
    {"kind": "blk" | "vsock" | "net", "socket": path, "options": {...}} (see
    engines.qemu.vhost_user_args), attached after the machine's own devices.
    tb_size_mib: TCG's translation cache in MiB (`-accel tcg,tb-size=N`); None: the
    engine's default (engines.qemu.tb_size_mib()), 0: QEMU's own (up to 1 GiB, of which
    a booted guest fills ~26 MiB)."""
    extra_args: Tuple[str, ...] = ()
    vhost_user: Tuple[dict, ...] = ()
    tb_size_mib: Optional[int] = None

    def __post_init__(self):
        object.__setattr__(self, "extra_args", tuple(str(a) for a in self.extra_args))
        object.__setattr__(self, "vhost_user", tuple(self.vhost_user))
        check_tb_size(self.tb_size_mib, "QemuOptions(tb_size_mib=...)")


MAX_TB_SIZE_MIB = 1024   # QEMU's own ceiling for the translation cache


def check_tb_size(value, what: str) -> None:
    """A translation-cache size must be a whole number of MiB, 0..MAX_TB_SIZE_MIB."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_TB_SIZE_MIB:
        raise ConfigError(f"{what}: the TCG translation cache size must be a whole number "
                          f"of MiB from 0 (QEMU's default) to {MAX_TB_SIZE_MIB}, not {value!r}")
