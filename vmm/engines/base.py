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
"""
from __future__ import annotations

import abc
from typing import Callable, Optional


class Engine(abc.ABC):
    name = "?"

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

    def console_input(self, data: bytes) -> None:
        raise NotImplementedError(f"the {self.name} engine takes no console input")
