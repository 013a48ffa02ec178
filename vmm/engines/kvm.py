"""The kvm engine: the C core (vmm._core) runs the VM; this wraps it in the Engine interface.

The vCPUs run on the core's own threads; cffi releases the GIL for every C call, so Python
never holds up a vCPU. The serial console reaches Python through a pipe: the core writes
the guest's bytes to the write end, a reader thread here hands them to on_console, and the
core closes its end when the last vCPU thread ends, so wait() returns with the whole
console delivered.

Python devices (tests, prototypes): KvmOptions(python_devices=[PythonDevice(...), ...]), a
port or MMIO range whose accesses call a Python function on the vCPU thread.

Confinement: once started, the vCPU threads and the device I/O thread run under seccomp
filters (csrc/seccomp.h), on by default; the vCPU threads of a VM with Python devices run
without (see KvmOptions.seccomp).

virtio devices (spec.disks, spec.vsock, spec.nets): opened here, attached to the VM behind
the core's virtio-mmio transport in the order of engines/device_order.py, announced to the
guest as `virtio_mmio.device=4K@<base>:<irq>` in the kernel command line, and closed after
the VM is destroyed. Where each device sits is the core's decision (vmm_virtio_mmio_slot),
asked before any VM exists so that Machine() checks the whole command line. Queue
notifies arrive by ioeventfd and interrupts leave by irqfd; KvmOptions(ioeventfd=False,
irqfd=False) forces the fallbacks (MMIO exits, KVM_IRQ_LINE) for tests.
"""
from __future__ import annotations

import contextlib
import os
import select
import threading
import time
from typing import TYPE_CHECKING

from .._binding import check, ffi, lib
from ..cmdline import KernelCmdline, caller_parts
from ..errors import ConfigError, EngineUnavailable, GuestError
from ..kernel_image import core_limits
from .base import Engine, ExitStatus, MachineSpec
from .panic_watch import PanicWatch
from .options import KvmOptions
from .device_order import attached_devices, stats_entry
from .virtiofsd import SharedDirServers
from .vhost_user_front import open_for, vhost_user_devices
from ..devices import SharedDir

if TYPE_CHECKING:
    from .inspection import Inspection

# The exact prefix every guest gets: console on the UART we emulate, reset through the
# i8042 (our clean "shutdown"), and a panic resets at once instead of hanging.
CMDLINE_PREFIX = "console=ttyS0 reboot=k panic=-1 "

_KINDS = {lib.VMM_EXIT_SHUTDOWN: "shutdown", lib.VMM_EXIT_HOST_STOP: "host-stop",
          lib.VMM_EXIT_ERROR: "error"}


def probe() -> dict:
    """/dev/kvm's API version and capabilities:
    {"ok", "api_version", "vcpu_mmap_size", "capabilities": {name: value}, "required": [...]},
    plus "error" (one line) when the kvm engine cannot run on it."""
    info = ffi.new("struct vmm_kvm_info *")
    error = None
    try:
        check(lib.vmm_kvm_probe, info)
    except ConfigError as e:
        error = e.core_message  # info is still filled as far as the probe got
    caps = info.caps[0:info.ncaps]
    out = {"ok": error is None, "api_version": info.api_version, "vcpu_mmap_size": info.vcpu_mmap_size,
           "capabilities": {ffi.string(c.name).decode(): c.value for c in caps},
           "required": [ffi.string(c.name).decode() for c in caps if c.required]}
    if error is not None:
        out["error"] = error
    return out


def load_check(kernel, initrd=None, cmdline: str = "", memory_mib: int = 128) -> None:
    """Run the C loader on a scratch memory (no KVM); raises ConfigError with its message."""
    check(lib.vmm_kernel_load_check, os.fsencode(kernel), os.fsencode(initrd) if initrd else ffi.NULL,
          cmdline.encode(), memory_mib << 20)


@ffi.def_extern()  # an exception prints its traceback; the guest then reads 0
def vmm_python_device_access(handle, offset, size, is_write, value):
    dev = ffi.from_handle(handle)
    r = dev.fn(offset, size, bool(is_write), value)
    return 0 if is_write or r is None else int(r) & ((1 << (8 * size)) - 1)


def mmio_slot(index: int):
    """(base, size, irq) of the index-th virtio device's window, or None past the core's
    limit (attaching it then fails with the core's own message)."""
    info = ffi.new("struct vmm_virtio_mmio_info *")
    if lib.vmm_virtio_mmio_slot(index, info) != 0:
        return None
    return info.base, info.size, info.irq


def device_arg(base: int, size: int, irq: int) -> str:
    """How Linux's virtio_mmio driver learns of a device without ACPI or a device tree."""
    return f"virtio_mmio.device={size >> 10}K@{base:#x}:{irq}"


def _all_devices(spec) -> list:
    return attached_devices(spec) + vhost_user_devices(spec)


# --- the engine --------------------------------------------------------------------------------

def _fields(cdata, ctype) -> dict:
    return {name: getattr(cdata, name) for name, _ in ffi.typeof(ctype).fields}


def _read_struct(vm, ctype, getter):
    out = ffi.new(ctype + " *")
    getter(vm, out)
    return _fields(out, ctype)


def exit_reasons() -> tuple:
    """The reasons exits are counted by, in the core's order (struct vmm_exit_stats)."""
    return tuple(name for name, _ in ffi.typeof("struct vmm_exit_stats").fields)


def max_vcpus() -> int:
    """The most vCPUs a VM can have here: the C core's table, or less if KVM says so."""
    core_max = core_limits().max_cpus   # the C core's fixed vCPU table
    kvm_max = probe()["capabilities"].get("MAX_VCPUS") or 0
    # KVM_CAP_MAX_VCPUS of 0 means "ask KVM_CAP_NR_VCPUS"; every KVM since 2011 answers,
    # and the core's own table still bounds it.
    return min(core_max, kvm_max) if kvm_max > 0 else core_max


class KvmEngine(Engine):
    """One VM of the C core. Methods may be called from any thread: calls into the core
    hold a reference (_ref) so close() never frees the VM under another thread."""
    name = "kvm"
    options_class = KvmOptions
    supports_shared_dirs = True

    @classmethod
    def max_cpus(cls) -> int:
        return max_vcpus()

    @classmethod
    def kernel_cmdline(cls, spec: MachineSpec) -> KernelCmdline:
        """Ours, then the devices (before the caller's: an init's arguments after `--` must
        stay last), then the caller's."""
        line = KernelCmdline().append(CMDLINE_PREFIX, "the kvm engine's {n}-byte prefix")
        args, names = [], []
        for i, (_, name, _) in enumerate(_all_devices(spec)):
            slot = mmio_slot(i)
            if slot is not None:
                args.append(device_arg(*slot) + " ")
                names.append(name)
        line.append("".join(args), f"{{n}} bytes of device arguments "
                                   f"(virtio_mmio.device= for {', '.join(names)})")
        return line.extend(caller_parts(spec.cmdline))

    def __init__(self, spec):
        super().__init__(spec)
        self._vm = None
        self._cond = threading.Condition()
        self._users = 0
        self._closing = False
        self._devices = list(self.options.python_devices)
        self._handles = []
        self._reader = None
        self._reader_made = threading.Event()
        self._read_fd = None
        self._status = None
        self._panic = PanicWatch()  # the console's panic line turns a reset into an error
        self._final = None  # what the getters return once the VM is gone
        self._attached = []  # (kind, name, virtio_device.Device) attached to the VM
        self._cmdline = ""  # the kernel command line, once loaded
        self._shared = SharedDirServers(spec.shared_dirs)  # their virtiofsds, started by start()
        self._fs_watch = None     # the thread that ends the VM if a virtiofsd dies
        self._fs_failure = None   # why it did

    @contextlib.contextmanager
    def _ref(self):
        with self._cond:
            vm = None if self._closing else self._vm
            if vm is not None:
                self._users += 1
        try:
            yield vm
        finally:
            if vm is not None:
                with self._cond:
                    self._users -= 1
                    self._cond.notify_all()

    # -- set-up --------------------------------------------------------------------------
    def start(self, on_console):
        if self._vm is not None or self._closing:
            raise RuntimeError("KvmEngine.start() called twice or after close()")
        self._shared.start()  # listening before the front ends connect; close() stops them
        read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
        self._read_fd = read_fd
        try:
            self._create(write_fd)
        except BaseException:
            self._reader_made.set()  # none will be: a waiter must not wait for it
            raise
        finally:
            os.close(write_fd)  # the core holds its own dup; EOF comes when it closes that
        try:
            check(lib.vmm_vm_start, self._vm, error=GuestError, context="cannot start the VM")
        finally:
            # After the vCPUs, not before: Thread.start() waits until the new thread runs,
            # a scheduling round trip (0.1-2 ms here) that would sit between Machine() and
            # the first guest entry. The pipe holds what the guest writes meanwhile; a
            # waiter that sees the guest end first waits for the reader to exist (_finish).
            self._reader = threading.Thread(target=self._read_console,
                                            args=(read_fd, on_console, self._panic),
                                            name="kvm-console", daemon=True)
            self._reader.start()
            self._reader_made.set()
        if self._shared.servers:
            self._fs_watch = threading.Thread(target=self._watch_virtiofsd, name="kvm-virtiofsd",
                                              daemon=True)
            self._fs_watch.start()

    def _watch_virtiofsd(self):
        """A shared dir's virtiofsd that ends on its own before stop(): the guest's file
        system is gone for good (the front end does not reconnect; its device is already
        failed), so the machine ends with the reason, as on the qemu engine, instead of
        leaving the guest to hang in its next file access."""
        fds = list(self._shared.exit_fds())
        while fds and not self._closing:
            ready, _, _ = select.select(fds, [], [], 0.25)
            for fd in ready:
                fds.remove(fd)
                failures = self._shared.errors()
                if failures and not self._closing:
                    self._fs_failure = "; ".join(failures)
                    self.stop()
                    return

    def _create(self, console_fd):
        spec = self.spec
        cmdline = self.kernel_cmdline(spec).text()  # Machine() checked it; a direct caller may not have
        cfg = ffi.new("struct vmm_vm_config *", {
            "cpus": spec.cpus, "memory_bytes": spec.memory_mib << 20,
            "hugepages": int(bool(spec.hugepages)), "console_fd": console_fd,
            "seccomp": ((lib.VMM_SECCOMP_VCPU if self.options.seccomp_vcpus else 0)
                        | (lib.VMM_SECCOMP_IO if self.options.seccomp_io else 0)),
            # A vhost-user back end maps guest RAM itself: it must be a memfd.
            "shared_memory": int(bool(vhost_user_devices(spec)))})
        try:
            vm = check(lib.vmm_vm_create, cfg, error=GuestError, context="cannot create the VM")
        except GuestError as e:
            if "/dev/kvm" in e.core_message:
                raise EngineUnavailable(e.core_message) from None
            raise
        with self._cond:
            self._vm = vm
        for dev in self._devices:
            handle = ffi.new_handle(dev)
            self._handles.append(handle)  # must outlive the VM: C holds the pointer
            check(lib.vmm_vm_add_python_device, vm, int(dev.mmio), dev.base, dev.length, handle)
        self._attach_devices(vm)
        if self.options.seccomp_probe is not None:
            port, thread, nr = self.options.seccomp_probe
            check(lib.vmm_vm_add_seccomp_probe, vm, port, int(thread == "io"), nr)
        initrd = os.fsencode(spec.initrd) if spec.initrd else ffi.NULL
        check(lib.vmm_vm_load_kernel, vm, os.fsencode(spec.kernel), initrd, cmdline.encode())
        self._cmdline = cmdline

    def _attach_devices(self, vm):
        wanted = _all_devices(self.spec)
        if not wanted:
            return
        from .virtio_device import open_device  # only machines with devices pay for its imports
        flags = ((0 if self.options.ioeventfd else lib.VMM_VDEV_NO_IOEVENTFD)
                 | (0 if self.options.irqfd else lib.VMM_VDEV_NO_IRQFD))
        sockets = iter(self._shared.servers)  # one listening virtiofsd per SharedDir, in order
        for i, (kind, name, cfg) in enumerate(wanted):
            if isinstance(cfg, SharedDir):
                dev = open_for(cfg, next(sockets).socket_path)
            elif isinstance(cfg, dict):  # KvmOptions(vhost_user=[...])
                dev = open_for(cfg)
            else:
                dev = open_device(cfg)
            self._attached.append((kind, name, dev))  # closed by close(), whatever happens next
            info = ffi.new("struct vmm_virtio_mmio_info *")
            check(lib.vmm_vm_add_device, vm, dev.ptr, flags, info, context=f"device {name}")
            if (info.base, info.size, info.irq) != mmio_slot(i):  # what the command line announces
                raise GuestError(f"device {name}: the core placed it at {info.base:#x}:{info.irq}, "
                                 f"not where the command line says ({mmio_slot(i)})")

    @staticmethod
    def _read_console(fd, on_console, panic):
        while True:
            try:
                data = os.read(fd, 65536)
            except OSError:
                data = b""
            if not data:
                panic.feed(b"", at_eof=True)
                return
            panic.feed(data)
            try:
                on_console(data)
            except Exception:
                pass  # a broken sink must not stop the console from draining

    # -- running -------------------------------------------------------------------------
    def wait(self, timeout=None):
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._status is None:
            # Short slices keep Ctrl-C responsive; the GIL is released inside.
            left = 0.25 if deadline is None else min(0.25, max(0.0, deadline - time.monotonic()))
            with self._ref() as vm:
                if vm is None:
                    return self._status
                if lib.vmm_vm_wait(vm, int(left * 1000)):
                    self._finish(vm)
                    break
            if deadline is not None and time.monotonic() >= deadline:
                return None
        return self._status

    def _finish(self, vm):
        """The VM has ended: wait for the last console bytes, then record the exit."""
        self._reader_made.wait()   # start() makes it just after the vCPUs run
        reader = self._reader
        if reader is not None and reader is not threading.current_thread():
            reader.join()  # the core closed its console fd with its last vCPU thread: EOF
        self._record_status(vm)

    def _record_status(self, vm):
        info = ffi.new("struct vmm_exit_info *")
        lib.vmm_vm_exit_info(vm, info)
        if self._status is None and info.kind != lib.VMM_EXIT_RUNNING:
            kind = _KINDS.get(info.kind, "error")
            message = ffi.string(info.message).decode(errors="replace")
            if kind == "shutdown" and self._panic.line is not None:
                # panic=-1 made the guest reset; say why, as the qemu engine does.
                kind, message = "error", self._panic.message()
            elif kind == "host-stop" and self._fs_failure is not None:
                kind, message = "error", (f"{self._fs_failure}; the machine was stopped: its "
                                          "shared directory cannot come back")
            self._status = ExitStatus(kind, message, info.code)

    def pause(self):
        with self._ref() as vm:
            if vm is not None:
                check(lib.vmm_vm_pause, vm, 1, error=GuestError, context="cannot pause the VM")

    def resume(self):
        with self._ref() as vm:
            if vm is not None:
                check(lib.vmm_vm_pause, vm, 0, error=GuestError, context="cannot resume the VM")

    def stop(self):
        with self._ref() as vm:
            if vm is not None:
                lib.vmm_vm_stop(vm)

    def console_input(self, data: bytes) -> None:
        view = memoryview(bytes(data))
        while view:
            with self._ref() as vm:
                if vm is None:
                    raise RuntimeError("the VM is not running")
                n = lib.vmm_vm_serial_input(vm, ffi.from_buffer(view), len(view))
            view = view[n:]
            if view and self.wait(0.01) is not None:
                return  # the FIFO is full and the guest is gone: drop the rest

    # -- observations ----------------------------------------------------------------------
    def _observe(self, key, read, empty):
        if self._final is not None:
            return self._final[key]
        with self._ref() as vm:
            return read(vm) if vm is not None else empty

    def timeline(self) -> dict:
        return self._observe("timeline", self._timeline, {})

    def exit_stats(self) -> dict:
        return self._observe("exit_stats", self._exit_stats, {})

    def device_stats(self) -> list:
        final = self._final
        if final is not None and "device_stats" in final:
            return [dict(d) for d in final["device_stats"]]
        return self._live_device_stats()

    def _live_device_stats(self):
        return [stats_entry(kind, name, dev.counters()) for kind, name, dev in self._attached]

    def inspect(self) -> "Inspection":
        """The command line, each device's virtio-mmio transport, the e820 map, where the
        kernel went and the exit counts (see inspection.py); the last values once closed."""
        from .inspection import Inspection  # a dataclass: loaded when someone asks
        # Before the kernel is loaded: the line it will get (Machine() has checked it).
        cmdline = self._cmdline or "".join(text for _, text in self.kernel_cmdline(self.spec).parts)
        return Inspection(
            engine=self.name, cmdline=cmdline,
            transports=tuple(dict(t) for t in self._observe("transport_info", self._transport_info, [])),
            e820=tuple(self._observe("e820", self._e820, [])),
            boot=dict(self._observe("boot_info", self._boot_info, {})),
            exit_stats=self.exit_stats(),
            exit_stats_at_boot_timer=self._observe("exit_stats_at_boot_timer",
                                                   self._exit_stats_at_boot_timer, {}))

    def _transport_info(self, vm):
        out = []
        info = ffi.new("struct vmm_virtio_mmio_info *")
        servers = {s["name"]: s for s in self._shared.info()}  # fs<i>: virtiofsd's pid, tag, log
        for i, (kind, name, _) in enumerate(self._attached):
            if lib.vmm_vm_device_info(vm, i, info) == 0:
                entry = dict(_fields(info, "struct vmm_virtio_mmio_info"), **servers.get(name, {}))
                out.append(dict(entry, kind=kind, name=name))
        return out

    @staticmethod
    def _timeline(vm):
        return {k: v for k, v in _read_struct(vm, "struct vmm_timeline", lib.vmm_vm_timeline).items() if v}

    @staticmethod
    def _exit_stats(vm):
        return _read_struct(vm, "struct vmm_exit_stats", lib.vmm_vm_stats)

    @staticmethod
    def _exit_stats_at_boot_timer(vm):
        out = ffi.new("struct vmm_exit_stats *")
        if lib.vmm_vm_stats_at_boot_timer(vm, out) != 0:
            return {}  # the guest has not written the boot timer (yet)
        return _fields(out, "struct vmm_exit_stats")

    @staticmethod
    def _e820(vm):
        out = ffi.new("struct vmm_e820_entry[]", 16)
        n = lib.vmm_vm_e820(vm, out, 16)
        return [(e.addr, e.size, e.type) for e in out[0:n]]

    @staticmethod
    def _boot_info(vm):
        b = ffi.new("struct vmm_boot_info *")
        if lib.vmm_vm_boot_info(vm, b) != 0:
            return {}
        info = _fields(b, "struct vmm_boot_info")
        info["kind"] = ffi.string(b.kind).decode()
        return info

    # -- teardown --------------------------------------------------------------------------
    def close(self):
        with self._cond:
            if self._closing:
                return
            self._closing = True  # no new references from here on
            vm = self._vm
        if vm is not None:
            lib.vmm_vm_stop(vm)   # a waiter in another thread returns within its slice
            with self._cond:
                while self._users:
                    self._cond.wait()
            while not lib.vmm_vm_wait(vm, 100):
                lib.vmm_vm_stop(vm)  # kick again: a kick can land just before a blocking call
            self._record_status(vm)
            self._final = {"timeline": self._timeline(vm), "exit_stats": self._exit_stats(vm),
                           "exit_stats_at_boot_timer": self._exit_stats_at_boot_timer(vm),
                           "e820": self._e820(vm), "boot_info": self._boot_info(vm),
                           "transport_info": self._transport_info(vm)}
            with self._cond:
                self._vm = None
            lib.vmm_vm_destroy(vm)  # joins the vCPU threads, closes fds, unmaps memory
        else:
            self._final = {"timeline": {}, "exit_stats": {}, "exit_stats_at_boot_timer": {},
                           "e820": [], "boot_info": {}, "transport_info": []}
        self._final["device_stats"] = self._live_device_stats()
        if self._reader is not None and self._reader is not threading.current_thread():
            self._reader.join()  # the core's console fd is closed by now: EOF
            self._reader = None
        if self._read_fd is not None:
            os.close(self._read_fd)
            self._read_fd = None
        self._handles.clear()
        if self._fs_watch is not None and self._fs_watch is not threading.current_thread():
            self._fs_watch.join()  # it sees _closing within its 0.25 s slice
        # The VM (and with it every transport) is gone: no one uses the devices any more;
        # then the virtiofsds, whose connections the closed front ends have ended.
        try:
            self._close_devices()
        finally:
            self._shared.stop()

    def _close_devices(self):
        attached, self._attached = self._attached, []
        first = None
        for _, _, dev in attached:
            try:
                dev.close()  # also ends a passt helper
            except Exception as e:
                first = first or e
        if first is not None:
            raise first
