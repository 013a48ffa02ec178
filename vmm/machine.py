"""Machine: one virtual machine, whichever engine runs it.

The engine (vmm.engines) does the work; Machine validates the request, keeps the boot
timeline and the console, and guarantees cleanup (context manager, idempotent stop()).
"""
from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from typing import Optional  # already loaded by the time vmm is imported: costs nothing

from .errors import ConfigError
from . import engines as _engines
from . import kernel_image
from .timeline import process_start_ns

# Linux's COMMAND_LINE_SIZE on x86, terminating NUL included: the engine's prefix and the
# user's command line share it.
CMDLINE_SIZE = 2048


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


# A console sink: None, a path (str or PathLike), an fd (int) or a callable(bytes).
# (Spelled as a string so that `import vmm` need not import typing.)
ConsoleSink = "None | str | os.PathLike | int | Callable[[bytes], None]"


@dataclass
class MachineSpec:
    """What to boot. Engines receive this.

    Devices are vmm.devices config objects (Disk, Vsock, Net); each engine attaches them its
    own way (kvm: in-process virtio-mmio; qemu: one vhost-user server per device), in list
    order, so the first disk is /dev/vda, the second /dev/vdb, and so on.
    """
    kernel: str
    initrd: Optional[str] = None
    cmdline: str = ""
    cpus: int = 1
    memory_mib: int = 128
    hugepages: bool = False
    disks: tuple = ()
    vsock: Optional[object] = None
    nets: tuple = ()
    extra: dict = field(default_factory=dict)


class Machine:
    MAX_CPUS = 255  # no engine runs more; each engine's own limit is checked too

    def __init__(self, kernel, initrd=None, cmdline: str = "", cpus: int = 1, memory_mib: int = 128,
                 engine: str = "auto", console: ConsoleSink = None, hugepages: bool = False,
                 disks=(), vsock=None, nets=()):
        self.created_ns = time.monotonic_ns()
        self.spec = MachineSpec(kernel=os.fspath(kernel), initrd=os.fspath(initrd) if initrd else None,
                                cmdline=cmdline, cpus=cpus, memory_mib=memory_mib, hugepages=hugepages,
                                disks=tuple(disks), vsock=vsock, nets=tuple(nets))
        _validate(self.spec)
        self.engine_choice = _engines.choose(engine)  # raises EngineUnavailable with the reason
        _validate_for_engine(self.spec, self.engine_choice)
        self._engine = self.engine_choice.create(self.spec)
        self._console_buf = bytearray()
        self._console_lock = threading.Lock()
        self._console_sink = _open_sink(console)
        self._started = False
        self._status: Optional[ExitStatus] = None

    # --- console -----------------------------------------------------------------------
    def _on_console(self, data: bytes) -> None:
        with self._console_lock:
            self._console_buf += data
        sink = self._console_sink
        if sink is not None:
            sink(data)

    @property
    def console(self) -> bytes:
        """Everything the guest wrote to its serial console so far."""
        with self._console_lock:
            return bytes(self._console_buf)

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
        except BaseException:
            self._engine.close()
            raise

    def wait(self, timeout: Optional[float] = None) -> Optional[ExitStatus]:
        """Wait for the guest to end; the ExitStatus, or None if still running at timeout."""
        if self._status is None:
            self._status = self._engine.wait(timeout)
        return self._status

    def stop(self) -> ExitStatus:
        """Stop the machine from the host (idempotent). Releases every resource."""
        if self._status is None and self._started:
            self._engine.stop()
            self._status = self._engine.wait(None)
        self._engine.close()
        if self._status is None:
            self._status = ExitStatus("host-stop", "never started")
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
        return {k: v for k, v in t.items() if v}

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
    if not isinstance(spec.memory_mib, int) or spec.memory_mib < 2:
        raise ConfigError(f"memory_mib must be at least 2, got {spec.memory_mib}")
    # Not a kernel, or too little memory for it: say so before any engine starts.
    kernel_image.check_memory(kernel_image.inspect(spec.kernel), spec.memory_mib)


def _validate_for_engine(spec: MachineSpec, choice) -> None:
    """The limits that depend on the engine: its command-line prefix and its vCPU count."""
    engine_cls = choice.engine_class()
    prefix = len(engine_cls.cmdline_prefix.encode())
    user = len(spec.cmdline.encode())
    if prefix + user > CMDLINE_SIZE - 1:
        raise ConfigError(
            f"kernel command line is {user} bytes; with the {choice.name} engine's {prefix}-byte "
            f"prefix that is {prefix + user}, over the limit of {CMDLINE_SIZE - 1} "
            f"({CMDLINE_SIZE} with the terminating NUL): at most {CMDLINE_SIZE - 1 - prefix} "
            "bytes are left for yours")
    if spec.cpus > 1:  # every engine runs one; only ask (the kvm engine probes) for more
        most = engine_cls.max_cpus()
        if spec.cpus > most:
            raise ConfigError(f"cpus {spec.cpus} is more than the {choice.name} engine "
                              f"supports here (at most {most})")


def _open_sink(console: ConsoleSink):
    if console is None:
        return None
    if callable(console):
        return console
    if isinstance(console, int):
        fd = console
        return lambda data: os.write(fd, data)
    if isinstance(console, (str, os.PathLike)):
        f = open(console, "ab", buffering=0)
        return f.write
    raise ConfigError(f"console must be None, a path, an fd or a callable, not {type(console).__name__}")
