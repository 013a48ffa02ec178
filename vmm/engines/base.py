"""The interface every engine implements. Machine talks only to this.

An engine instance runs one VM from a MachineSpec. The contract:
- start(on_console): boot; console bytes are passed to on_console(bytes) from any thread.
- wait(timeout): the ExitStatus once the VM has ended, else None after timeout seconds
  (timeout None = wait forever).
- stop(): ask the VM to end now (host stop); wait() then returns kind "host-stop"
  unless the guest had already ended.
- close(): release every resource (threads joined, fds closed, memory unmapped,
  child processes reaped). Idempotent; safe before start() and after a failure.
- timeline(): dict of phase -> CLOCK_MONOTONIC ns for the phases this engine observed:
  vm_created, kernel_loaded, first_vcpu_entry, boot_timer, exit.
- exit_stats(): dict of exit reason -> count (engines that cannot see exits return {}).
- console_input(bytes): input to the guest's serial console.

Limits Machine checks before creating an engine (class-level, so no VM is needed):
- cmdline_prefix: what the engine puts before the user's kernel command line.
- max_cpus(): the most vCPUs this engine can run on this host.
"""
from __future__ import annotations

import abc
from typing import Callable, Optional


class Engine(abc.ABC):
    name = "?"
    cmdline_prefix = ""

    @classmethod
    def max_cpus(cls) -> int:
        return 1

    def __init__(self, spec):
        self.spec = spec

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

    def exit_stats(self) -> dict:
        return {}

    def device_stats(self) -> list:
        """Counters of each device in spec.disks + [spec.vsock] + spec.nets order (see
        vmm.devices.Device.counters), with "kind" and "name" keys added."""
        return []

    def console_input(self, data: bytes) -> None:
        raise NotImplementedError(f"the {self.name} engine takes no console input")
