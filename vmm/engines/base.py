"""What every engine shares: the request (MachineSpec), the result (ExitStatus) and the
Engine interface. The per-engine options are in options.py, what can be observed of a run
in inspection.py (both loaded only when used: `import vmm` stays quick).

These types live here, below both Machine and the engines, so that an engine never imports
machine.py (which imports the engines).

An engine instance runs one VM from a MachineSpec. The contract:
- start(on_console): boot; console bytes are passed to on_console(bytes) from any thread.
- wait(timeout): the ExitStatus once the VM has ended, else None after timeout seconds
  (timeout None = wait forever).
- stop(): ask the VM to end now (host stop); wait() then returns kind "host-stop"
  unless the guest had already ended.
- close(): release every resource (threads joined, fds closed, memory unmapped,
  child processes reaped). Idempotent; safe before start() and after a failure.
- timeline(): dict of phase -> CLOCK_MONOTONIC ns for the phases this engine observed
  (see vmm.timeline.PHASES).
- exit_stats(): dict of exit reason -> count (engines that cannot see exits return {}).
- inspect(): an Inspection; the last values once the VM is closed.
- console_input(bytes): input to the guest's serial console.

What Machine checks before creating an engine (class-level, so no VM is needed):
- kernel_cmdline(spec): the whole kernel command line as a vmm.cmdline.KernelCmdline.
- max_cpus(): the most vCPUs this engine can run on this host.
- options_class: the type of spec.options this engine takes.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Optional

if TYPE_CHECKING:  # for annotations only: loaded when an engine needs them, not at import
    from ..cmdline import KernelCmdline
    from .inspection import Inspection


@dataclass
class ExitStatus:
    """How a machine ended.

    kind: "shutdown" (the guest reset or powered off), "host-stop" (stop() was called),
    "error" (KVM or the engine failed; message says how, with registers where known).
    """
    kind: str
    message: str = ""
    code: int = 0

    @property
    def ok(self) -> bool:
        return self.kind == "shutdown"


@dataclass
class MachineSpec:
    """What to boot. Engines receive this.

    Devices are vmm.devices configs (Disk, Vsock, Net, SharedDir); each engine attaches them its own
    way (kvm: in-process virtio-mmio; qemu: one vhost-user server per device), in the order
    of engines/device_order.py, so the first disk is /dev/vda, the second /dev/vdb, ...
    cmdline is the caller's part of the kernel command line: a str, or a KernelCmdline
    whose parts keep their own names in error messages. options: the chosen engine's
    KvmOptions or QemuOptions, or None for the defaults. shared_dirs: SharedDirs, each
    served by a virtiofsd of its own (engines/virtiofsd.py) as a virtio-fs device after
    the other devices; only engines whose supports_shared_dirs is true take them.
    """
    kernel: str
    initrd: Optional[str] = None
    cmdline: "str | KernelCmdline" = ""
    cpus: int = 1
    memory_mib: int = 128
    hugepages: bool = False
    disks: tuple = ()
    vsock: Optional[object] = None
    nets: tuple = ()
    options: Optional[object] = None
    shared_dirs: tuple = ()


class Engine(abc.ABC):
    name = "?"
    options_class: type = type(None)
    # Whether the engine attaches MachineSpec.shared_dirs (virtio-fs over vhost-user);
    # Machine refuses shared dirs on one that does not, before anything starts.
    supports_shared_dirs = False

    @classmethod
    def max_cpus(cls) -> int:
        return 1

    @classmethod
    @abc.abstractmethod
    def kernel_cmdline(cls, spec: MachineSpec) -> "KernelCmdline": ...

    def __init__(self, spec: MachineSpec):
        self.spec = spec
        self.options = spec.options if spec.options is not None else self.options_class()

    @abc.abstractmethod
    def start(self, on_console: Callable[[bytes], None]) -> None: ...

    @abc.abstractmethod
    def wait(self, timeout: Optional[float]): ...

    @abc.abstractmethod
    def stop(self) -> None: ...

    @abc.abstractmethod
    def close(self) -> None: ...

    @abc.abstractmethod
    def timeline(self) -> dict: ...

    @abc.abstractmethod
    def inspect(self) -> "Inspection": ...

    def exit_stats(self) -> dict:
        return {}

    def device_stats(self) -> list:
        """Counters of each device in spec.disks + [spec.vsock] + spec.nets order (see
        engines.virtio_device.Device.counters), with "kind" and "name" keys added."""
        return []

    def pause(self) -> None:
        raise NotImplementedError(f"the {self.name} engine cannot pause")

    def resume(self) -> None:
        raise NotImplementedError(f"the {self.name} engine cannot pause")

    def console_input(self, data: bytes) -> None:
        raise NotImplementedError(f"the {self.name} engine takes no console input")
