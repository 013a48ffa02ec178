"""Options only one engine understands, as typed values Machine(options=...) accepts.

Machine refuses options of the engine it did not choose, so a caller learns at Machine()
that, say, Python devices will not exist under QEMU.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Tuple, Union

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
    tests use it to cover both.
    seccomp: confine the vCPU threads and the device I/O thread with seccomp filters that
    allow only the system calls they make (csrc/seccomp_filter.c); a thread that makes any
    other call ends the process with one line on stderr naming it (exit status 159).
    None (the default) means on, except on the vCPU threads of a VM with Python devices:
    they run Python there, which needs far more than the filter allows (seccomp=True with
    Python devices is refused; the device I/O thread is confined either way).
    seccomp=False turns it off (e.g. to debug with a tool that makes calls of its own on
    those threads).
    seccomp_probe: tests only: (port, "vcpu" | "io", syscall number): a guest write to the
    port makes that thread issue the call, to see the filter end the process."""
    python_devices: Tuple[PythonDevice, ...] = ()
    ioeventfd: bool = True
    irqfd: bool = True
    seccomp: Optional[bool] = None
    seccomp_probe: Optional[Tuple[int, str, int]] = None

    def __post_init__(self):
        object.__setattr__(self, "python_devices", tuple(self.python_devices))
        if self.seccomp and self.python_devices:
            raise ConfigError("KvmOptions(seccomp=True) cannot have Python devices: they run "
                              "Python on the vCPU thread, which the seccomp filter does not allow "
                              "(leave seccomp unset or pass seccomp=False)")
        if self.seccomp_probe is not None and self.seccomp_probe[1] not in ("vcpu", "io"):
            raise ConfigError(f"seccomp_probe thread must be 'vcpu' or 'io', not {self.seccomp_probe[1]!r}")

    @property
    def seccomp_vcpus(self) -> bool:
        """Whether the vCPU threads run under the seccomp filter (see seccomp)."""
        return self.seccomp if self.seccomp is not None else not self.python_devices

    @property
    def seccomp_io(self) -> bool:
        """Whether the device I/O thread runs under the seccomp filter (see seccomp)."""
        return self.seccomp is not False


@dataclass(frozen=True)
class QemuOptions:
    """Options only the qemu engine understands.

    extra_args: appended to the qemu-system-x86_64 command line as they are.
    vhost_user: further vhost-user back ends someone else serves, each
    {"kind": "blk" | "vsock" | "net" | "fs", "socket": path, "options": {...}} (see
    engines.qemu.vhost_user_args), attached after the machine's own devices; a virtio-fs
    server (e.g. a virtiofsd you run) may be given as ("fs", socket_path, tag).
    sandbox: run QEMU under its seccomp filter (`-sandbox on` denying obsolete calls,
    privilege changes, spawning and resource control); False for extra_args that need one
    of those (e.g. a netdev helper script).
    mem_merge: let KSM merge guest RAM with identical pages elsewhere (QEMU's own default).
    Off: merged pages make a cross-VM timing side channel where KSM runs.
    user: the uid QEMU runs as. "auto": when we are root, a uid of its own that no other
    process uses (engines/qemu_user.py), else ours; an int: that uid (root only); None:
    ours. Paths in extra_args must be reachable by that uid.
    tb_size_mib: TCG's translation cache in MiB (`-accel tcg,tb-size=N`); None: the
    engine's default (engines.qemu.tb_size_mib()), 0: QEMU's own (up to 1 GiB, of which
    a booted guest fills ~26 MiB)."""
    extra_args: Tuple[str, ...] = ()
    vhost_user: Tuple[dict, ...] = ()
    sandbox: bool = True
    mem_merge: bool = False
    user: Union[str, int, None] = "auto"
    tb_size_mib: Optional[int] = None

    def __post_init__(self):
        object.__setattr__(self, "extra_args", tuple(str(a) for a in self.extra_args))
        object.__setattr__(self, "vhost_user", tuple(_vhost_user_entry(d) for d in self.vhost_user))
        if self.user is not None and self.user != "auto" and (isinstance(self.user, bool)
                                                              or not isinstance(self.user, int)
                                                              or not 0 < self.user < 2**32 - 1):
            raise ConfigError(f"QemuOptions.user takes 'auto', None or a uid other than 0, "
                              f"not {self.user!r}")
        check_tb_size(self.tb_size_mib, "QemuOptions(tb_size_mib=...)")


def _vhost_user_entry(dev) -> dict:
    """A QemuOptions.vhost_user entry as a dict; ("fs", socket_path, tag) is the short
    form of {"kind": "fs", "socket": socket_path, "options": {"tag": tag}}."""
    if isinstance(dev, dict):
        if dev.get("kind") == "fs":
            _check_fs_tag(dev.get("options", {}).get("tag"))
        return dev
    if isinstance(dev, (tuple, list)) and len(dev) == 3 and dev[0] == "fs":
        _check_fs_tag(dev[2])
        return {"kind": "fs", "socket": str(dev[1]), "options": {"tag": dev[2]}}
    raise ConfigError(f"QemuOptions.vhost_user entry {dev!r} is neither a dict nor "
                      "('fs', socket_path, tag)")


def _check_fs_tag(tag) -> None:
    from ..devices import check_tag  # QEMU's -device argument must not be split by it
    check_tag(tag)


MAX_TB_SIZE_MIB = 1024   # QEMU's own ceiling for the translation cache


def check_tb_size(value, what: str) -> None:
    """A translation-cache size must be a whole number of MiB, 0..MAX_TB_SIZE_MIB."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_TB_SIZE_MIB:
        raise ConfigError(f"{what}: the TCG translation cache size must be a whole number "
                          f"of MiB from 0 (QEMU's default) to {MAX_TB_SIZE_MIB}, not {value!r}")
