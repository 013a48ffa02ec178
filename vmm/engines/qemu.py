"""The qemu engine: QEMU's microvm machine with TCG runs the vCPUs.

For hosts whose /dev/kvm is missing or is a software hypervisor (docs/platform.md).
One qemu-system-x86_64 child per VM, driven entirely through its file descriptors:

    stdin/stdout   the guest's serial console (ttyS0), via a stdio chardev
    stderr         QEMU's own messages; the tail becomes the message of an "error" exit
    socketpair     `-device isa-debugcon,iobase=0x440`: the guest's boot-timer byte (123)
                   arrives here and is timestamped on arrival

One I/O thread reads all three until QEMU closes them, then reaps the child and decides
how the VM ended. Guest RAM is a shared memfd so that device back ends attach over
vhost-user: spec.disks, spec.vsock and spec.nets are opened as our own C devices and each
served on a private Unix socket before QEMU starts (vhost_backends.py); QEMU only carries
the virtio-mmio transport. spec.shared_dirs are served by one virtiofsd each (virtiofsd.py),
started before QEMU and attached as vhost-user-fs-device after our own devices.
QemuOptions(vhost_user=...) adds back ends served by someone else (see vhost_user_args()),
QemuOptions(extra_args=...) any other QEMU arguments.

Confinement: QEMU runs under its own seccomp filter (`-sandbox`, see SANDBOX), and guest
RAM is not offered to KSM (`merge=off`); QemuOptions(sandbox=False, mem_merge=True) undo
either. Started by root, QEMU runs as a uid of its own (qemu_user.py; QemuOptions(user=)).

exit_stats() stays {}: TCG executes guest code inside QEMU's own process, so there are
no VM exits to count, and QEMU exposes no comparable counters.
"""
from __future__ import annotations

import os
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import TYPE_CHECKING, Callable, List, Optional

from ..cmdline import KernelCmdline, caller_parts
from ..errors import ConfigError, EngineUnavailable
from . import qemu_binary
from .base import Engine, ExitStatus, MachineSpec
from .child_process import spawn
from .panic_watch import PanicWatch
from .options import QemuOptions, check_tb_size
from .qemu_user import QemuUser
from .vhost_backends import VhostBackends
from .virtiofsd import SharedDirServers

if TYPE_CHECKING:
    from .inspection import Inspection

BOOT_TIMER_PORT = 0x440
BOOT_TIMER_INIT_STARTED = 123
# reboot=t: without ACPI the guest resets by triple fault, which -no-reboot turns into
# QEMU exiting. panic=-1: a panicking guest resets at once instead of hanging.
# no_timer_check: Linux checks that the IO-APIC timer ticks within a few of its own loops,
# which a TCG guest on a loaded host misses (8 of 180 guests panicked "IO-APIC + timer
# doesn't work!" with 30 booting at once, 0 of 150 with the check skipped).
# noapictimer: under TCG the kernel finds no TSC frequency and no HPET/PM timer, so it
# calibrates the local APIC timer against jiffies (25 ticks, then 25 more to verify), and
# on a loaded host the verification then fails ("APIC timer disabled due to verification
# failure"): ~200 ms of a boot spent learning not to use it. The PIT ticks instead, as it
# did after that failure (other vCPUs get the tick by broadcast). Sandbox create to first exec 1385
# -> 1014 ms median, 14 alternated rounds under load (docs/architecture.md, "Where a
# sandbox start goes"). TCG only: a KVM guest has a TSC-deadline timer and no calibration.
BASE_CMDLINE = "console=ttyS0 reboot=t panic=-1 no_timer_check noapictimer"
STDERR_TAIL = 4096
STOP_GRACE_S = 2.0
MAX_CPUS_TCG = 255

# QEMU's own seccomp filter (QemuOptions.sandbox): besides the default set, deny obsolete
# system calls, set*uid/gid, fork/exec (a `migrate exec:` or a helper script is then fatal)
# and scheduler/priority changes. QEMU 7.2 ends itself with SIGSYS on a denied call.
SANDBOX = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"

# Device kinds a vhost-user back end may serve, and the QEMU device each becomes.
VHOST_USER_DEVICES = {
    "blk": "vhost-user-blk",
    "vsock": "vhost-user-vsock-device",
    "net": "virtio-net-device",
    "fs": "vhost-user-fs-device",
}


# TCG's translation cache. QEMU's default lets it grow to 1 GiB; a sandbox boot fills
# ~22 MiB of it and a first exec ~27, which stays resident (never given back) for the
# life of the VM: a third of QEMU's own memory per idle sandbox, and more the more varied
# code the guest runs. A smaller cache is flushed and refilled when full, which costs
# translation time: 16 MiB saves 11 MiB per idle sandbox for ~5% more QEMU CPU time to
# READY (12 MiB: 15 MiB for ~10%; 24 MiB: 2.7 MiB for nothing measurable), measured in
# alternated rounds (docs/architecture.md, "QEMU engine memory").
# VMM_QEMU_TB_SIZE_MIB overrides it for callers that take no engine options
# (vmm.Sandbox, msb, bench density); QemuOptions(tb_size_mib=...) wins over both.
TB_SIZE_MIB = 16
TB_SIZE_ENV = "VMM_QEMU_TB_SIZE_MIB"


def tb_size_mib(options: QemuOptions) -> int:
    """The translation cache size to give QEMU, MiB (0: QEMU's own default)."""
    if options.tb_size_mib is not None:
        return options.tb_size_mib
    text = os.environ.get(TB_SIZE_ENV, "").strip()
    if not text:
        return TB_SIZE_MIB
    try:
        value = int(text)
    except ValueError:
        raise ConfigError(f"{TB_SIZE_ENV}={text!r}: not a whole number of MiB") from None
    check_tb_size(value, TB_SIZE_ENV)
    return value


def accel_arg(options: QemuOptions) -> str:
    size = tb_size_mib(options)
    return "tcg" if size == 0 else f"tcg,tb-size={size}"


def kernel_cmdline(spec: MachineSpec) -> KernelCmdline:
    """Ours, then the caller's. (QEMU announces virtio-mmio devices itself.)"""
    line = KernelCmdline().append(BASE_CMDLINE + " ", "the qemu engine's {n}-byte prefix")
    return line.extend(caller_parts(spec.cmdline))


def _options(spec: MachineSpec) -> QemuOptions:
    return spec.options if spec.options is not None else QemuOptions()


def qemu_argv(spec: MachineSpec, binary: str, debugcon_fd: int, devices=(),
              user: Optional[QemuUser] = None, shared=()) -> List[str]:
    """The full qemu-system-x86_64 command line for spec; devices: vhost-user entries of
    the back ends the engine itself serves (before any from the QemuOptions); shared: the
    entries of the shared dirs' virtiofsds (next); user: the QemuUser QEMU runs as, which
    hands it the kernel, initrd and sockets as descriptors."""
    options = _options(spec)
    user = user if user is not None else QemuUser(None)
    mem = spec.memory_mib
    # rtc=on: without an RTC, Linux 6.1 polls for one for a full second at boot
    # (mc146818_get_time, "Unable to read current time from RTC") and the guest's
    # clock starts in 1970. With it the read is immediate and the date is right.
    # mem-merge: the machine's own RAM (the 64 KiB firmware) is offered to KSM unless off;
    # the memory backend's merge= below covers guest RAM (see there).
    merge = "on" if options.mem_merge else "off"
    machine = ("microvm,x-option-roms=off,isa-serial=on,rtc=on,acpi=off,"
               f"memory-backend=mem,mem-merge={merge}")
    argv = [
        binary,
        "-M", machine,
        # virtio 1.0 over MMIO: vhost-user backends refuse legacy devices.
        "-global", "virtio-mmio.force-legacy=false",
        "-accel", accel_arg(options),
        "-cpu", "max",
        "-smp", str(spec.cpus),
        "-m", str(mem),
        # Shared so a vhost-user backend can map guest RAM. merge: QEMU's default marks
        # guest RAM MADV_MERGEABLE, which lets KSM share identical pages across VMs: a
        # timing side channel between guests where KSM is on. Off unless asked for.
        "-object", f"memory-backend-memfd,id=mem,size={mem}M,share=on"
                   + (",hugetlb=on,hugetlbsize=2M" if spec.hugepages else "")
                   + f",merge={merge}",
        "-nodefaults", "-no-user-config", "-nographic", "-no-reboot",
        *(["-sandbox", SANDBOX] if options.sandbox else []),
        "-chardev", "stdio,id=con,signal=off",
        "-serial", "chardev:con",
        "-chardev", f"socket,id=dbg,fd={debugcon_fd}",
        "-device", f"isa-debugcon,iobase={BOOT_TIMER_PORT:#x},chardev=dbg",
        "-kernel", user.file(spec.kernel),
        "-append", kernel_cmdline(spec).text().strip(),
    ]
    if spec.initrd:
        argv += ["-initrd", user.file(spec.initrd)]
    # The virtiofsd sockets are connected here and inherited (user.vhost_user): QEMU may
    # run as a uid of its own, which could not reach them by path.
    argv += vhost_user_args(user.own_sockets(devices)
                            + user.vhost_user(list(shared) + list(options.vhost_user)))
    argv += list(options.extra_args)
    return argv


def vhost_user_args(devices) -> List[str]:
    """QEMU arguments attaching vhost-user device backends.

    Each device is a dict: {"kind": "blk" | "vsock" | "net" | "fs", "socket": path}, plus
    optional "options" (a dict of extra -device properties, e.g. {"num-queues": 1}; "fs"
    needs {"tag": TAG}, the name the guest mounts), and
    "fd": a socket already connected to it that QEMU inherits (used instead of the path).
    QEMU is the vhost-user client: the backend must be listening on the socket.
    """
    args: List[str] = []
    for i, dev in enumerate(devices):
        kind, path = dev.get("kind"), dev.get("socket")
        if kind not in VHOST_USER_DEVICES:
            raise ConfigError(f"vhost-user device {i}: unknown kind {kind!r}; "
                             f"choose one of {', '.join(VHOST_USER_DEVICES)}")
        if not path:
            raise ConfigError(f"vhost-user device {i} ({kind}): no socket path")
        if "," in str(path):
            raise ConfigError(f"vhost-user device {i}: socket path {path!r} contains a comma")
        chardev = f"vu{i}"
        where = f"fd={int(dev['fd'])}" if "fd" in dev else f"path={path}"
        args += ["-chardev", f"socket,id={chardev},{where}"]
        if kind == "fs" and not dev.get("options", {}).get("tag"):
            raise ConfigError(f"vhost-user device {i} (fs): no tag (options={{'tag': ...}})")
        for k, v in dev.get("options", {}).items():
            if "," in f"{k}{v}":
                raise ConfigError(f"vhost-user device {i} ({kind}): option {k}={v!r} "
                                  "contains a comma")
        props = "".join(f",{k}={v}" for k, v in dev.get("options", {}).items())
        if kind == "net":
            args += ["-netdev", f"vhost-user,id=net{i},chardev={chardev}",
                     "-device", f"virtio-net-device,netdev=net{i}{props}"]
        else:
            args += ["-device", f"{VHOST_USER_DEVICES[kind]},chardev={chardev}{props}"]
    return args


class QemuEngine(Engine):
    name = "qemu"
    options_class = QemuOptions
    supports_shared_dirs = True

    @classmethod
    def max_cpus(cls) -> int:
        # microvm under TCG: beyond 255 QEMU wants x2APIC with a kernel irqchip (KVM only).
        return MAX_CPUS_TCG

    @classmethod
    def kernel_cmdline(cls, spec: MachineSpec) -> KernelCmdline:
        return kernel_cmdline(spec)

    def __init__(self, spec):
        super().__init__(spec)
        self._proc: Optional[subprocess.Popen] = None
        self._debugcon: Optional[socket.socket] = None
        self._thread: Optional[threading.Thread] = None
        self._done = threading.Event()
        self._status: Optional[ExitStatus] = None
        self._stop_requested = False
        self._closed = False
        self._times = {}
        self._stderr = bytearray()
        self._panic = PanicWatch()
        self._paused = False
        self._backends = VhostBackends(spec)
        self._shared = SharedDirServers(spec.shared_dirs)
        self._fs_failure: Optional[str] = None
        self._user: Optional[QemuUser] = None

    # --- start -------------------------------------------------------------------------
    def start(self, on_console: Callable[[bytes], None]) -> None:
        if self._proc is not None or self._closed:
            raise RuntimeError("QemuEngine.start() called twice or after close()")
        binary = qemu_binary()
        if binary is None:
            raise EngineUnavailable("the qemu engine needs qemu-system-x86_64 "
                                    "(apt-get install qemu-system-x86)")
        self._user = user = QemuUser(_options(self.spec).user)
        # Every back end listens before QEMU connects; a failure here closes what opened.
        try:
            self._backends.open()
            self._shared.start()
        except BaseException:
            user.release()
            self._backends.close()
            raise
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self._debugcon = ours
        try:
            argv = qemu_argv(self.spec, binary, theirs.fileno(), self._backends.qemu_devices,
                             user, shared=self._shared.devices())
            # A session of its own: a terminal's Ctrl-C reaches us, and we stop QEMU.
            # spawn(): QEMU dies with this process, even if it is SIGKILLed.
            self._proc = spawn(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, pass_fds=(theirs.fileno(),) + user.pass_fds(),
                               start_new_session=True, **user.popen_args())
        except BaseException:
            user.release()
            self._backends.close()
            self._shared.stop()
            raise
        finally:
            theirs.close()  # QEMU has its own copy now (or never will)
            user.close_fds()
        self._times["vm_created"] = time.monotonic_ns()
        self._thread = threading.Thread(target=self._io_loop, args=(on_console,),
                                        name=f"qemu-io-{self._proc.pid}", daemon=True)
        self._thread.start()

    # --- the I/O thread ----------------------------------------------------------------
    def _io_loop(self, on_console) -> None:
        proc = self._proc
        sel = selectors.DefaultSelector()
        try:
            sel.register(proc.stdout, selectors.EVENT_READ, "console")
            sel.register(proc.stderr, selectors.EVENT_READ, "stderr")
            sel.register(self._debugcon, selectors.EVENT_READ, "debugcon")
            qemu_open = 3
            # Watched only while QEMU runs: a virtiofsd QEMU never connected to (QEMU
            # failed at start) waits on, and is ended by close().
            for fd in self._shared.exit_fds():
                sel.register(fd, selectors.EVENT_READ, "virtiofsd")
            while qemu_open:
                for key, _ in sel.select():
                    if key.data == "virtiofsd":
                        sel.unregister(key.fd)
                        self._virtiofsd_ended()
                        continue
                    data = os.read(key.fd, 65536)
                    if not data:
                        sel.unregister(key.fileobj)
                        qemu_open -= 1
                        continue
                    self._dispatch(key.data, data, on_console)
        except Exception as e:  # keep going to the reap: the child must not leak
            self._stderr += f"\n[vmm: console reader failed: {e!r}]".encode()
            self._kill()
        finally:
            sel.close()
            self._panic.feed(b"", at_eof=True)
            rc = proc.wait()
            ended = time.monotonic_ns()
            # The status first: whoever sees "exit" in the timeline may call stop() at once,
            # and must find the guest's own ending already decided.
            self._status = self._classify(rc)
            self._times["exit"] = ended
            self._done.set()

    def _virtiofsd_ended(self) -> None:
        """A shared dir's server exited. After the guest's own ending that is its due
        (QEMU closed the connection: status 0); otherwise the guest's file system is gone
        for good (QEMU 7.2 cannot reconnect vhost-user-fs), so the machine ends with the
        reason rather than hang in its next file access."""
        failures = self._shared.errors()
        if failures and not self._stop_requested:
            self._fs_failure = "; ".join(failures)
            self._kill()

    def _dispatch(self, what: str, data: bytes, on_console) -> None:
        now = time.monotonic_ns()
        if what == "debugcon":
            if BOOT_TIMER_INIT_STARTED in data:
                self._times.setdefault("boot_timer", now)
        elif what == "stderr":
            self._stderr += data
            del self._stderr[:-STDERR_TAIL]
        else:
            self._times.setdefault("first_console", now)
            self._panic.feed(data)
            try:
                on_console(data)
            except Exception:
                pass  # a failing console sink must not take the VM's reader down

    def _classify(self, rc: int) -> ExitStatus:
        if self._panic.line is not None:
            return ExitStatus("error", self._panic.message(), rc)
        if self._fs_failure is not None:
            return ExitStatus("error", f"{self._fs_failure}; the machine was stopped: its "
                              "shared directory cannot come back", rc)
        if self._stop_requested:
            return ExitStatus("host-stop", "stopped by the host", rc)
        if rc == 0:
            # -no-reboot: a guest reset (reboot=t) makes QEMU exit with status 0.
            return ExitStatus("shutdown", "guest reset", rc)
        tail = self._stderr.decode(errors="replace").strip()
        # e.g. a vhost-user peer that broke the protocol, a virtiofsd that died
        broken = self._backends.errors() + self._shared.errors()
        if broken:
            tail = f"{tail} [devices: {'; '.join(broken)}]".strip()
        how = f"exit status {rc}" if rc > 0 else f"signal {signal.Signals(-rc).name}"
        return ExitStatus("error", f"qemu-system-x86_64 failed ({how}): {tail or 'no message'}", rc)

    # --- the rest of the interface -------------------------------------------------------
    def wait(self, timeout: Optional[float]):
        if self._proc is None:
            if self._closed:  # start() failed (Machine closed us): nothing ran, nothing to wait for
                return ExitStatus("error", "the VM never started")
            raise RuntimeError("QemuEngine.wait() before start()")
        self._await_exit(timeout)
        return self._status if self._done.is_set() else None

    def _await_exit(self, timeout: Optional[float]) -> bool:
        """Wait for the I/O thread to see QEMU exit. At interpreter exit daemon threads no
        longer run, so a machine stopped then (a Sandbox dropped by a script that died)
        is reaped here instead, or the exit would hang forever."""
        if not sys.is_finalizing():
            return self._done.wait(timeout)
        if not self._done.is_set():
            try:
                rc = self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                return False
            self._status = self._classify(rc)
            self._done.set()
        return True

    def pause(self) -> None:
        """SIGSTOP freezes the whole QEMU process, vCPUs and all; returns once the kernel
        reports it stopped. Our vhost-user back ends live in this process and keep going."""
        if self._proc is None or self._done.is_set():
            return
        self._paused = True
        self._signal(signal.SIGSTOP)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not self._done.is_set():
            try:
                with open(f"/proc/{self._proc.pid}/stat") as f:
                    if f.read().rsplit(")", 1)[1].split()[0] in ("T", "t"):
                        return
            except (OSError, IndexError):
                return
            time.sleep(0.002)

    def resume(self) -> None:
        if self._proc is not None and not self._done.is_set():
            self._paused = False
            self._signal(signal.SIGCONT)

    def stop(self) -> None:
        """SIGTERM (QEMU exits cleanly), then SIGKILL if it lingers."""
        if self._proc is None or self._done.is_set():
            return
        self._stop_requested = True
        self._signal(signal.SIGTERM)
        if self._paused:
            self._signal(signal.SIGCONT)  # a stopped QEMU acts on SIGTERM once it runs
        if not self._await_exit(STOP_GRACE_S):
            self._kill()

    def _kill(self) -> None:
        self._signal(signal.SIGKILL)

    def _signal(self, sig) -> None:
        try:
            self._proc.send_signal(sig)  # a no-op once the child is reaped
        except ProcessLookupError:
            pass

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._proc is not None:
            if not self._done.is_set():
                self._stop_requested = True
                self._kill()
            if self._thread is not None:
                self._thread.join()
            for f in (self._proc.stdin, self._proc.stdout, self._proc.stderr):
                try:
                    f.close()
                except OSError:
                    pass
            self._proc.wait()
        if self._debugcon is not None:
            self._debugcon.close()
        # Only now, with QEMU reaped, is no one using guest RAM through our devices.
        try:
            self._backends.close()
        finally:
            self._shared.stop()
        if self._user is not None:
            self._user.release()  # its uid may serve the next QEMU

    def timeline(self) -> dict:
        return dict(self._times)

    def exit_stats(self) -> dict:
        return {}  # TCG has no VM exits to count (see the module docstring)

    def inspect(self) -> "Inspection":
        """The command line and our devices; e820 and boot placement are QEMU's own."""
        from .inspection import Inspection  # a dataclass: loaded when someone asks
        return Inspection(engine=self.name, cmdline=kernel_cmdline(self.spec).text().strip(),
                          transports=tuple({"kind": s["kind"], "name": s["name"]}
                                           for s in self._backends.stats())
                          + tuple(self._shared.info()),
                          pid=self._proc.pid if self._proc is not None else None)

    def device_stats(self) -> list:
        """Counters of our devices (the last values once the VM is closed)."""
        return self._backends.stats()

    def console_input(self, data: bytes) -> None:
        if self._proc is None or self._done.is_set():
            return
        try:
            self._proc.stdin.write(data)
            self._proc.stdin.flush()
        except (BrokenPipeError, ValueError):
            pass  # QEMU is going away; its exit status says why
