"""Machine: one virtual machine, whichever engine runs it.

The engine (vmm.engines) does the work; Machine validates the request, keeps the boot
timeline and the console, and guarantees cleanup (context manager, idempotent stop()).
What the console may cost (its tail in memory, a console file, a rate) is bounded by
vmm.console_limits.ConsoleLimits.
"""
from __future__ import annotations

import os
import threading
import time
from typing import TYPE_CHECKING, Optional  # typing is loaded by then: costs nothing

from .errors import ConfigError, GuestError
from . import engines as _engines
from . import kernel_image
from .console_limits import ConsoleLimits, ConsoleSink, ConsoleTail
# Defined below the engines (which return them) and re-exported: vmm.machine.ExitStatus and
# vmm.ExitStatus stay where callers found them.
from .engines.base import ExitStatus, MachineSpec
from .timeline import ordered, process_start_ns

if TYPE_CHECKING:
    from .engines.inspection import Inspection

__all__ = ["Machine", "ExitStatus", "MachineSpec"]

# A console sink: None, a path (str or PathLike), an fd (int) or a callable(bytes).
# (Spelled as a string so that `import vmm` need not import typing.)
ConsoleTarget = "None | str | os.PathLike | int | Callable[[bytes], None]"


class Machine:
    """One VM. cmdline: your part of the kernel command line (a str, or a
    vmm.cmdline.KernelCmdline of named parts); the engine puts its own before it. options:
    vmm.KvmOptions or vmm.QemuOptions for the engine that runs it.

    console: where the guest's serial output goes as it arrives, besides Machine.console
    (its last bytes): a path (a file capped and rotated to <path>.1), an fd (both rate
    limited), or a callable given every byte. console_limits: a ConsoleLimits for those
    bounds (vmm/console_limits.py: 1 MiB in memory, 2 x 4 MiB on disk, 64 KiB/s)."""
    MAX_CPUS = 255  # qemu's TCG limit, the most any engine runs; each engine's own is checked too

    def __init__(self, kernel, initrd=None, cmdline="", cpus: int = 1, memory_mib: int = 128,
                 engine: str = "auto", console: ConsoleTarget = None, hugepages: bool = False,
                 disks=(), vsock=None, nets=(), options=None,
                 console_limits: Optional[ConsoleLimits] = None, shared_dirs=()):
        self.created_ns = time.monotonic_ns()
        self.spec = MachineSpec(kernel=os.fspath(kernel), initrd=os.fspath(initrd) if initrd else None,
                                cmdline=cmdline, cpus=cpus, memory_mib=memory_mib, hugepages=hugepages,
                                disks=tuple(disks), vsock=vsock, nets=tuple(nets), options=options,
                                shared_dirs=tuple(shared_dirs))
        _validate(self.spec)
        self.engine_choice = _engines.choose(engine)  # raises EngineUnavailable with the reason
        _validate_for_engine(self.spec, self.engine_choice)
        self.console_limits = console_limits if console_limits is not None else ConsoleLimits()
        if not isinstance(self.console_limits, ConsoleLimits):
            raise ConfigError("console_limits must be a vmm.console_limits.ConsoleLimits, "
                              f"not {type(console_limits).__name__}")
        self._console_tail = ConsoleTail(self.console_limits.tail_bytes)
        self._console_lock = threading.Lock()
        self._console_sink = ConsoleSink(console, self.console_limits)  # opens a path now
        try:
            self._engine = self.engine_choice.create(self.spec)
        except BaseException:
            self._console_sink.close()
            raise
        self._started = False
        self._status: Optional[ExitStatus] = None

    # --- console -----------------------------------------------------------------------
    def _on_console(self, data: bytes) -> None:
        with self._console_lock:
            self._console_tail.add(data)
            # Under the lock: the rate limit and the file keep state, and the engines'
            # readers may deliver from more than one thread.
            self._console_sink.write(data)
        callback = self._console_sink.callback
        if callback is not None:
            callback(data)  # outside the lock: it may read self.console

    def _end_console(self) -> None:
        """The guest has ended (its engine delivers no more): flush and close the sink."""
        with self._console_lock:
            self._console_sink.close()

    @property
    def console(self) -> bytes:
        """What the guest wrote to its serial console so far: all of it, or its last
        console_limits.tail_bytes (1 MiB unless set) once it wrote more."""
        with self._console_lock:
            return self._console_tail.value()

    @property
    def console_stats(self) -> dict:
        """Bytes the guest wrote (`written`), held in memory now (`held`, at most 2 x
        tail_bytes + one read), and dropped by the rate limit on the way to a console file
        or fd (`dropped`)."""
        with self._console_lock:
            return {"written": self._console_tail.total, "held": self._console_tail.held,
                    "dropped": self._console_sink.dropped}

    def send_console(self, data: bytes) -> None:
        """Input to the guest's serial console."""
        self._engine.console_input(data)

    # --- lifecycle -----------------------------------------------------------------------
    @property
    def engine(self) -> str:
        return self.engine_choice.name

    def start(self) -> None:
        if self._started:
            raise RuntimeError("Machine.start() called twice")
        self._started = True
        try:
            self._engine.start(self._on_console)
        except BaseException as e:
            self._engine.close()
            # The same ending on every engine: a machine that failed to start never ran.
            self._status = ExitStatus("error", f"the machine did not start: {e}")
            raise

    def wait(self, timeout: Optional[float] = None) -> Optional[ExitStatus]:
        """Wait for the guest to end; the ExitStatus, or None if still running at timeout."""
        if self._status is None:
            self._status = self._engine.wait(timeout)
            if self._status is not None:
                self._end_console()
        return self._status

    def pause(self) -> None:
        """Freeze the guest: no guest instruction runs until resume() (host-side device
        back ends keep serving what is already queued). Returns once the guest is frozen.
        stop() works on a paused machine."""
        if not self._started or self._status is not None:
            raise GuestError("pause() needs a running machine")
        self._engine.pause()

    def resume(self) -> None:
        """Let a paused guest run again."""
        if not self._started or self._status is not None:
            raise GuestError("resume() needs a running machine")
        self._engine.resume()

    def stop(self) -> ExitStatus:
        """Stop the machine from the host (idempotent). Releases every resource."""
        if self._status is None and self._started:
            self._engine.stop()
            self._status = self._engine.wait(None)
        self._engine.close()
        if self._status is None:
            self._status = ExitStatus("host-stop", "never started")
        self._end_console()
        return self._status

    @property
    def status(self) -> Optional[ExitStatus]:
        return self._status

    @property
    def timeline(self) -> dict:
        """Boot phases, CLOCK_MONOTONIC ns: process_start, machine_created, vm_created,
        kernel_loaded, first_vcpu_entry, boot_timer, exit (absent if not reached)."""
        t = {"process_start": process_start_ns(), "machine_created": self.created_ns}
        t.update(self._engine.timeline())
        return ordered(t)

    def inspect(self) -> "Inspection":
        """What the engine did: the kernel command line it gave, each device's transport
        (kvm: virtio-mmio base, irq, counters), the e820 map and where the kernel went (kvm),
        exit counts, QEMU's pid (qemu). Valid before, during and after the run."""
        return self._engine.inspect()

    @property
    def device_stats(self) -> list:
        """Per-device counters, in attach order: [{"kind": "blk", "requests": ..., ...}]."""
        return self._engine.device_stats()

    @property
    def exit_stats(self) -> dict:
        """Exit counts by reason (io, mmio, hlt, ...), from the engine."""
        return self._engine.exit_stats()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()
        return False

    def __del__(self):
        try:
            if getattr(self, "_engine", None) is not None:
                self.stop()
        except Exception:
            pass


def _validate(spec: MachineSpec) -> None:
    if not os.path.isfile(spec.kernel):
        raise ConfigError(f"kernel not found: {spec.kernel}")
    if spec.initrd is not None and not os.path.isfile(spec.initrd):
        raise ConfigError(f"initrd not found: {spec.initrd}")
    if not isinstance(spec.cpus, int) or not 1 <= spec.cpus <= Machine.MAX_CPUS:
        raise ConfigError(f"cpus must be between 1 and {Machine.MAX_CPUS}, got {spec.cpus}")
    least = kernel_image.core_limits().min_memory_bytes >> 20
    if not isinstance(spec.memory_mib, int) or spec.memory_mib < least:
        raise ConfigError(f"memory_mib must be at least {least}, got {spec.memory_mib}")
    # Not a kernel, or too little memory for it: say so before any engine starts.
    kernel_image.check_memory(kernel_image.inspect(spec.kernel), spec.memory_mib)
    if spec.shared_dirs:
        _validate_shared_dirs(spec.shared_dirs)


def _validate_shared_dirs(shared_dirs) -> None:
    from .devices import SharedDir, check_shared_source  # only machines that share load it
    tags = set()
    for shared in shared_dirs:
        if not isinstance(shared, SharedDir):
            raise ConfigError(f"shared_dirs takes vmm.devices.SharedDir values, not {shared!r}")
        if shared.tag in tags:
            raise ConfigError(f"two shared dirs have the tag {shared.tag!r}: each needs its own")
        tags.add(shared.tag)
        check_shared_source(shared.host_path, shared.tag)


def _validate_for_engine(spec: MachineSpec, choice) -> None:
    """What depends on the engine: its options, its whole kernel command line (its prefix
    and device arguments included) and its vCPU count."""
    engine_cls = choice.engine_class()
    if spec.shared_dirs and not engine_cls.supports_shared_dirs:
        raise ConfigError(f"the {choice.name} engine cannot attach shared directories "
                          "(virtio-fs) yet; use engine='qemu'")
    if spec.options is not None and not isinstance(spec.options, engine_cls.options_class):
        raise ConfigError(f"options {type(spec.options).__name__} are not for the {choice.name} "
                          f"engine ({choice.reason}); it takes {engine_cls.options_class.__name__}")
    engine_cls.kernel_cmdline(spec).check()
    if spec.cpus > 1:  # every engine runs one; only ask (the kvm engine probes) for more
        most = engine_cls.max_cpus()
        if spec.cpus > most:
            raise ConfigError(f"cpus {spec.cpus} is more than the {choice.name} engine "
                              f"supports here (at most {most})")

