"""vmm.Sandbox: a VM booted from an image disk (or a host directory), with the guest agent
as PID 1, that runs commands and file operations on request.

    disk = vmm.Sandbox.format_writable_disk("state.ext4", size="4G")   # once
    with vmm.Sandbox.create("image.erofs", writable_disk=disk) as sb:
        r = sb.exec(["sh", "-c", "echo hi"], timeout=10)               # ExecResult
        sb.fs.write("/root/notes", b"kept on the writable disk")
    # stop(): the agent syncs, unmounts and powers off; forced after a timeout

The machine gets the agent initramfs (vmm.guest.agent), the image disk read-only as
/dev/vda, the writable disk (if any) as /dev/vdb, and a vsock device whose host end is a
Unix socket in a private runtime directory (runtime_dir.py). The guest kernel is quiet;
its console goes to a log file (console.py). Without a writable disk the sandbox is
ephemeral (a tmpfs upper layer). With root_dir= instead of an image disk, a host
directory shared read-only over virtio-fs is the lower layer (root_dir.py) and the
writable disk, if any, is /dev/vda. Volumes (volumes.py) follow as more disks, and host
directories (HostDir) as virtio-fs shared dirs, each mounted at its guest path before the
agent is ready. What the guest learns on its kernel command line is in agent_cmdline.py.

Where the layers sit: Machine (vmm.machine) boots and owns the VM; AgentClient
(vmm.agent) speaks the protocol; this module ties the two into one object with one
lifetime, and turns "never became ready" into BootFailed with the console's tail.
The asyncio flavour is in aio.py.
"""
from __future__ import annotations

import os
import shutil
import threading
import time
from typing import TYPE_CHECKING, Dict, List, Optional, Sequence, Tuple

from ..agent import (DEFAULT_MAX_OUTPUT, DEFAULT_VSOCK_PORT, AgentClient, AgentError,
                     Capabilities, ExecResult, Process, SandboxNotRunning, Timeout)
from ..devices import Disk, Net, SharedDir, Vsock
from ..errors import ConfigError
from ..machine import ExitStatus, Machine
from ..net.network import Nat, Network, NetworkState, TapNetwork, guest_state, kernel_arg
from ..net.policy import Policy
from ..net.ports import reserve_ports
from .agent_cmdline import ROOT_TAG, agent_cmdline
from .agent_dial import AgentDial
from .checks import check_env, check_hostname, check_timeout, check_workdir, existing_disk
from .console import ConsoleLog
from .disk_lock import DiskLock
from .errors import BootFailed
from .root_dir import check_root_dir, root_failure
from .runtime_dir import make_runtime_dir
from .volumes import Mount, attach, check_mounts, lock_mounts, mount_failure
from .writable_disk import format_writable_disk

if TYPE_CHECKING:
    from ..agent.container_root import ContainerRoot

DEFAULT_BOOT_TIMEOUT = 60.0   # TCG boots in seconds; a loaded host needs headroom
DEFAULT_STOP_TIMEOUT = 10.0
GUEST_CID = 3                 # each sandbox has its own vsock device: no CID clashes
DEFAULT_NETWORK = Network()   # NAT, scope public, no published ports (frozen: shareable)


class Sandbox:
    """One running sandbox VM. Use Sandbox.create(); stop() (or `with`) ends it."""

    format_writable_disk = staticmethod(format_writable_disk)

    def __init__(self, *, _private=None):
        if _private is not True:
            raise TypeError("use Sandbox.create(image_disk, ...) to start a sandbox")
        self.machine: Optional[Machine] = None
        self.root_dir: Optional[str] = None   # the host directory that is the root, if any
        self._client: Optional[AgentClient] = None
        self._dial: Optional[AgentDial] = None
        self._console: Optional[ConsoleLog] = None
        self._disk_lock: Optional[DiskLock] = None
        self._volume_locks: List[DiskLock] = []
        self.volumes: Tuple[Mount, ...] = ()   # VolumeMounts and HostDirs, in mount order
        self._mount_ids: Tuple[str, ...] = ()  # each one's disk serial or virtio-fs tag
        self._nat: Optional[Nat] = None
        self._tap: Optional[TapNetwork] = None
        self.network: Optional[NetworkState] = None  # None: no NIC
        self.runtime_dir: Optional[str] = None
        self.socket_path: Optional[str] = None
        self.console_log: Optional[str] = None
        self.hostname: Optional[str] = None
        self.ready = None            # the agent's ReadyInfo
        self.exit_status: Optional[ExitStatus] = None
        self.stopped_gracefully = False
        self._times: Dict[str, int] = {}
        self._guest: Dict[str, int] = {}
        self._stop_lock = threading.Lock()

    # --- creation ------------------------------------------------------------------------
    @classmethod
    def create(cls, image_disk=None, *, root_dir=None, writable_disk=None, cpus: int = 1,
               memory_mib: int = 512, env: Optional[Dict[str, str]] = None,
               workdir: Optional[str] = None,
               hostname: Optional[str] = None, engine: str = "auto", kernel=None, initrd=None,
               rlimits: Optional[Dict[int, Tuple[int, int]]] = None,
               boot_timeout: float = DEFAULT_BOOT_TIMEOUT, console_log=None,
               extra_cmdline: str = "", network: Optional[Network] = DEFAULT_NETWORK,
               volumes: Sequence[Mount] = (), read_only_root: bool = False) -> "Sandbox":
        """Boot a sandbox and wait until its agent is ready and configured.

        image_disk: EROFS or ext4 root file system, attached read-only.
        root_dir: instead of image_disk, a host directory holding the root file system
        (an unpacked rootfs), shared read-only over virtio-fs; the guest's writes go to
        the writable disk or tmpfs above it and never reach the directory.
        writable_disk: ext4 from format_writable_disk(), or None for an ephemeral sandbox.
        env, workdir, rlimits: defaults for every exec. kernel/initrd: override the
        project's guest kernel and agent initramfs. console_log: keep the guest console
        in this file (default: a file in the private runtime dir, removed on stop).
        network: a vmm.net.network.Network (NAT through passt, published ports), or None
        for no NIC at all; sb.network then says what the guest got.
        volumes: VolumeMounts (ext4 disk files, e.g. named volumes from volume_store.py)
        and HostDirs (host directories, shared over virtio-fs), mounted at their guest
        paths before the first exec; a read-write VolumeMount must not be in use by
        another sandbox, a HostDir's directory must exist.
        read_only_root: the guest's root is read-only once the sandbox is ready (a write
        to it fails with EROFS; /tmp, /dev, volumes and host dirs stay as they are); to
        write files first, create it writable and call make_root_read_only() after.
        Raises BootFailed (with the console tail) if the guest is not ready within
        boot_timeout seconds or ends before that (naming the volume or host directory if
        one could not be mounted); ConfigError for a published host port, a volume in use
        or a missing host directory, before anything boots.
        """
        if (image_disk is None) == (root_dir is None):
            raise ConfigError("Sandbox.create() needs exactly one root: an image disk or "
                              "root_dir (a directory), " +
                              ("not both" if root_dir is not None else "and got neither"))
        if root_dir is not None:
            root_dir = check_root_dir(root_dir)
        else:
            image_disk = existing_disk(image_disk, "image disk")
        if writable_disk is not None:
            writable_disk = existing_disk(writable_disk, "writable disk")
            if image_disk is not None and \
                    os.path.realpath(writable_disk) == os.path.realpath(image_disk):
                raise ConfigError(f"the writable disk and the image disk are the same file: {image_disk}")
        check_hostname(hostname)
        check_env(env)
        check_workdir(workdir)
        check_timeout("boot_timeout", boot_timeout)
        mounts = check_mounts(volumes, image_disk, writable_disk)
        if network is not None and not isinstance(network, (Network, TapNetwork)):
            raise ConfigError(f"network must be a vmm.net.Network, a TapNetwork or None, not {network!r}")
        # The instance's half of construction (the class's own method, not a reach inside).
        sb = cls(_private=True)
        sb.root_dir = root_dir
        return sb._start(
            image_disk, writable_disk, console_log=console_log, kernel=kernel, initrd=initrd,
            cpus=cpus, memory_mib=memory_mib, engine=engine, hostname=hostname,
            extra_cmdline=extra_cmdline, boot_timeout=boot_timeout, env=env, workdir=workdir,
            rlimits=rlimits, network=network, volumes=mounts, read_only_root=read_only_root)

    def _start(self, image_disk, writable_disk: Optional[str], *, console_log, kernel,
               initrd, cpus, memory_mib, engine, hostname, extra_cmdline, boot_timeout, env,
               workdir, rlimits, network, volumes, read_only_root=False) -> "Sandbox":
        """The second half of create(), on checked arguments: set up, boot, wait for
        READY, configure; on any failure release everything and raise."""
        self._times["sandbox_create"] = time.monotonic_ns()
        self.hostname = hostname
        self.volumes = volumes
        if network is not None and not network.has_nic:
            network = None  # scope "none": no NIC, as network=None
        self._tap = network if isinstance(network, TapNetwork) else None
        if self._tap is not None:
            self.network = self._tap.state()
        elif network is not None:  # host ports checked (and 0 picked) before anything starts
            self.network = guest_state(network, reserve_ports(network.published()))
        try:
            self._setup(image_disk, writable_disk, console_log)
            self._boot(kernel=kernel, initrd=initrd, cpus=cpus, memory_mib=memory_mib,
                       engine=engine, hostname=hostname, writable=writable_disk is not None,
                       image_disk=image_disk, writable_disk=writable_disk,
                       extra_cmdline=extra_cmdline)
            self._wait_ready(boot_timeout)
            self._configure(env, workdir, rlimits, read_only_root)  # the hostname went on the command line
        except BaseException:
            self._teardown()
            raise
        self._times["sandbox_ready"] = time.monotonic_ns()
        return self

    def _setup(self, image_disk, writable_disk: Optional[str], console_log) -> None:
        if writable_disk is not None:
            self._disk_lock = DiskLock(writable_disk)
        self._volume_locks = lock_mounts(self.volumes)
        self.runtime_dir = make_runtime_dir()
        self.socket_path = os.path.join(self.runtime_dir, "agent.sock")
        self.console_log = os.fspath(console_log) if console_log is not None else \
            os.path.join(self.runtime_dir, "console.log")
        self._console = ConsoleLog(self.console_log)

    def _boot(self, *, kernel, initrd, cpus, memory_mib, engine, hostname, writable,
              image_disk, writable_disk, extra_cmdline) -> None:
        from ..guest import kernel as kernel_mod
        from ..guest.agent import agent_initramfs
        kernel = kernel if kernel is not None else kernel_mod.guest_kernel()
        initrd = initrd if initrd is not None else agent_initramfs()
        # The order makes the image /dev/vda and the writable disk /dev/vdb (/dev/vda with a
        # root directory instead of an image), the devices agent_cmdline names to the guest.
        disks = [Disk(image_disk, read_only=True, serial="image")] if self.root_dir is None else []
        shared = [] if self.root_dir is None else \
            [SharedDir(self.root_dir, tag=ROOT_TAG, read_only=True, cache="always")]
        if writable:
            disks.append(Disk(writable_disk, read_only=False, serial="data"))
        mounts = attach(self.volumes)   # volume disks, shared dirs, vmm.vol= and vmm.fs=
        disks += mounts.disks
        self._mount_ids = mounts.ids
        nets = []
        net_arg = ""
        if self._tap is not None:
            nets.append(Net(backend="tap", fd=self._tap.fd, mac=self._tap.mac))
            net_arg = kernel_arg(self.network)
        elif self.network is not None:
            # passt is spawned once QEMU is: its fork+exec then overlaps the guest's boot
            self._nat = Nat(self.network, spawn=False)
            policy = Policy.parse(self.network.scope, self.network.rules,
                                  gateways=self.network.gateways, dns=[self.network.dns],
                                  published=self.network.ports)
            nets.append(Net(backend="passt", fd=self._nat.fd, policy=policy))
            net_arg = kernel_arg(self.network)
        try:  # the agent connects to us once up (agent_dial.py)
            self._dial = AgentDial(self.socket_path, DEFAULT_VSOCK_PORT, DEFAULT_VSOCK_PORT)
        except OSError:  # e.g. a runtime dir too long for the socket's path: we connect
            self._dial = None
        self.machine = Machine(kernel, initrd=initrd,
                               cmdline=agent_cmdline(writable=writable, hostname=hostname,
                                                     net=net_arg, volumes=mounts.cmdline,
                                                     extra=extra_cmdline,
                                                     root_dir=self.root_dir is not None,
                                                     dial=self._dial and self._dial.port),
                               cpus=cpus, memory_mib=memory_mib, engine=engine,
                               console=self._console.write, disks=disks,
                               vsock=Vsock(GUEST_CID, self.socket_path), nets=nets,
                               shared_dirs=shared + list(mounts.shared_dirs))
        self.machine.start()
        if self._nat is not None:
            self._nat.spawn()
            self._nat.release_fd()  # the device holds its own copy now
            self._nat.wait_ready()  # passt started up while the machine did
            machine = self.machine
            object.__setattr__(self.network, "counters", lambda: next(
                (d.get("policy", {}) for d in machine.device_stats if d["kind"] == "net"), {}))

    def _wait_ready(self, timeout: float) -> None:
        """Connect to the agent and take its READY, or raise BootFailed.

        The connecting runs in a thread because a vsock CONNECT can sit unanswered while
        the guest boots (or after it died); this thread watches the VM and the deadline
        and ends the wait at once when either says so (tearing down the VM closes the
        socket under the connecting thread, which then ends too)."""
        started = time.monotonic()
        m = self.machine
        box: dict = {}

        def connect():
            try:
                if self._dial is not None:
                    box["client"] = self._dial.wait(timeout, alive=lambda: m.wait(0) is None)
                else:
                    box["client"] = AgentClient.connect_when_ready(
                        self.socket_path, DEFAULT_VSOCK_PORT, timeout=timeout,
                        alive=lambda: m.wait(0) is None)
            except BaseException as e:  # handed to the waiting thread
                box["error"] = e

        t = threading.Thread(target=connect, name="vmm-sandbox-connect", daemon=True)
        t.start()
        deadline = started + timeout
        while t.is_alive() and m.wait(0) is None and time.monotonic() < deadline:
            t.join(0.02)
        if "client" not in box:
            self._fail_boot(box.get("error"), started, timeout, t, box)
        self._close_dial()
        self._client = box["client"]
        self.ready = self._client.ready
        self._times["ready_received"] = self.ready.received_monotonic_ns
        self._join_guest_clock()

    def _fail_boot(self, error: Optional[BaseException], started: float, timeout: float,
                   connector: threading.Thread, box: dict) -> None:
        ended = self.machine.wait(0)
        # A log in the private runtime dir goes with it; only the caller's own survives.
        kept_log = self.runtime_dir is None or not self.console_log.startswith(self.runtime_dir)
        self._teardown()   # stops the VM: the console is complete after this
        connector.join(10)
        if "client" in box:  # it connected just as we gave up
            box["client"].close()
        failed_mount = mount_failure(self._console.tail(), self.volumes, self._mount_ids)
        if failed_mount is None and self.root_dir is not None:
            failed_mount = root_failure(self._console.tail(), self.root_dir)
        if failed_mount is not None:
            reason = failed_mount
        elif ended is not None:
            reason = f"the VM ended before its agent was ready ({ended.kind}: {ended.message})"
        elif error is None or isinstance(error, Timeout):
            reason = f"no ready agent within the boot timeout of {timeout:g}s"
        else:
            reason = f"{error}"
        raise BootFailed(reason, console_tail=self._console.tail(), status=ended,
                         elapsed=time.monotonic() - started,
                         log_path=self.console_log if kept_log else None) from None

    def _join_guest_clock(self) -> None:
        """Place the guest's boot timestamps (CLOCK_BOOTTIME) on the host's monotonic clock.

        A PING returns the guest's clock; assuming it was read halfway through the round
        trip, offset = host midpoint - guest time, within +-half the round trip.
        """
        r = self.ready
        self._guest = {"agent_start_ns": r.agent_start_ns, "ready_ns": r.ready_ns,
                       "ready_sent_ns": r.now_ns}
        t0 = time.monotonic_ns()
        try:
            guest_now = self._client.ping(timeout=10)
        except AgentError:
            return  # no conversion then; a broken agent shows on the first real request
        t1 = time.monotonic_ns()
        if not guest_now:
            return
        offset = (t0 + t1) // 2 - guest_now
        self._guest.update(clock_offset_ns=offset, clock_uncertainty_ns=(t1 - t0) // 2)
        if r.agent_start_ns:
            self._times["agent_start"] = r.agent_start_ns + offset
        if r.ready_ns:
            self._times["agent_ready"] = r.ready_ns + offset

    def _configure(self, env, workdir, rlimits, read_only_root=False) -> None:
        if env or workdir is not None or rlimits or read_only_root:
            try:
                self._client.configure(env=env, workdir=workdir, rlimits=rlimits,
                                       read_only_root=read_only_root)
            except (SandboxNotRunning, Timeout) as e:
                ended = self.machine.wait(0)
                self._teardown()
                raise BootFailed(f"the agent went away while being configured: {e}",
                                 console_tail=self._console.tail(), status=ended) from None
            except AgentError as e:
                raise ConfigError(f"the agent refused the sandbox configuration: {e}") from None
        self._times["configured"] = time.monotonic_ns()

    # --- state --------------------------------------------------------------------------
    @property
    def engine(self) -> str:
        return self.machine.engine

    @property
    def running(self) -> bool:
        return (self.exit_status is None and self._client is not None
                and not self._client.closed and self.machine.wait(0) is None)

    @property
    def timeline(self) -> dict:
        """Boot phases on the host's CLOCK_MONOTONIC (ns): the Machine's (process_start,
        machine_created, vm_created, boot_timer, ...) joined with the sandbox's
        (sandbox_create, agent_start and agent_ready converted from the guest's clock,
        ready_received, configured, sandbox_ready). Under "guest": the raw guest
        CLOCK_BOOTTIME values and the offset/uncertainty used to convert them."""
        t = dict(self.machine.timeline) if self.machine is not None else {}
        t.update(self._times)
        t["guest"] = dict(self._guest)
        return t

    @property
    def console(self) -> str:
        """The tail of the guest console (console_log keeps more: capped, vmm/console_limits.py)."""
        return self._console.tail() if self._console is not None else ""

    def _live(self) -> AgentClient:
        if self._client is None or self.exit_status is not None:
            raise SandboxNotRunning("the sandbox is stopped")
        if self._client.closed:
            status = self.machine.wait(0)
            why = f"the VM ended ({status.kind}: {status.message})" if status else \
                "the agent connection was lost"
            raise SandboxNotRunning(f"the sandbox is not running: {why}")
        return self._client

    # --- commands and files ----------------------------------------------------------------
    def exec(self, argv: Sequence[str], *, env: Optional[Dict[str, str]] = None,
             cwd: Optional[str] = None, user: Optional[str] = None, stdin=None,
             timeout: Optional[float] = None, tty: bool = False, rows: int = 24,
             cols: int = 80, rlimits: Optional[Dict[int, Tuple[int, int]]] = None,
             max_output: Optional[int] = DEFAULT_MAX_OUTPUT, groups: Optional[Sequence[int]] = None,
             umask: Optional[int] = None, no_new_privileges: bool = False,
             capabilities: Optional[Capabilities] = None, root: Optional["ContainerRoot"] = None,
             join_pid: Optional[int] = None) -> ExecResult:
        """Run argv to completion: ExecResult(code, signal, stdout, stderr, exit_code).

        groups: exactly these supplementary gids (default: the user's from the guest's
        /etc/group). umask: 0..0o777 (default 022). no_new_privileges: the process cannot
        gain privileges through execve (setuid files, file capabilities).
        capabilities: a vmm.agent.Capabilities with its five sets (default: the user's,
        every capability for root); a non-root user keeps those in its ambient set.
        ValueError for a bad value; ExecFailed kind bad_capabilities if the guest kernel
        refuses the sets (e.g. an ambient one not also permitted and inheritable).
        root: a vmm.agent.ContainerRoot: a guest directory as the process's `/`, with
        mounts inside it, in a mount namespace of its own (ExecFailed kind bad_root if
        the guest cannot set it up); join_pid: run in the mount namespace of that guest
        process (e.g. a root= process's pid). Not both.

        Raises ExecFailed (errno, kind; exit_code 127 not found, 126 not executable),
        Timeout (the guest process group was killed; output so far attached),
        OutputTooLarge (more than max_output bytes of output, 64 MiB by default; killed,
        the first max_output bytes attached), SandboxNotRunning.
        """
        check_env(env)
        return self._live().exec(argv, env=env, cwd=cwd, user=user, stdin=stdin,
                                 timeout=timeout, tty=tty, rows=rows, cols=cols,
                                 rlimits=rlimits, max_output=max_output, groups=groups,
                                 umask=umask, no_new_privileges=no_new_privileges,
                                 capabilities=capabilities, root=root, join_pid=join_pid)

    def exec_stream(self, argv: Sequence[str], *, env: Optional[Dict[str, str]] = None,
                    cwd: Optional[str] = None, user: Optional[str] = None, tty: bool = False,
                    rows: int = 24, cols: int = 80,
                    rlimits: Optional[Dict[int, Tuple[int, int]]] = None,
                    groups: Optional[Sequence[int]] = None, umask: Optional[int] = None,
                    no_new_privileges: bool = False,
                    capabilities: Optional[Capabilities] = None,
                    root: Optional["ContainerRoot"] = None,
                    join_pid: Optional[int] = None) -> Process:
        """Start argv and return its Process: write()/close_stdin(), iterate
        ("stdout"|"stderr", bytes) as output arrives, signal(), resize(), wait().
        groups, umask, no_new_privileges, capabilities, root, join_pid: as for exec()."""
        check_env(env)
        return self._live().exec_stream(argv, env=env, cwd=cwd, user=user, tty=tty,
                                        rows=rows, cols=cols, rlimits=rlimits, groups=groups,
                                        umask=umask, no_new_privileges=no_new_privileges,
                                        capabilities=capabilities, root=root,
                                        join_pid=join_pid)

    def make_root_read_only(self) -> None:
        """From now on the guest's root is read-only (EROFS), as an OCI root.readonly
        container's; /tmp, /dev, /proc, /sys, volumes, host dirs and tmpfs mounts made
        on it keep their own modes. One way: there is no call to undo it."""
        self._live().configure(read_only_root=True)

    @property
    def fs(self):
        """read/write/stat/list/mkdir/remove/exists of files in the guest."""
        return self._live().fs

    # --- the end --------------------------------------------------------------------------
    def stop(self, timeout: float = DEFAULT_STOP_TIMEOUT) -> ExitStatus:
        """Graceful stop: the agent ends every process, syncs, unmounts and powers off.
        If the VM has not ended after timeout seconds it is stopped by force.
        Idempotent; returns how the VM ended."""
        with self._stop_lock:
            if self.exit_status is not None:
                return self.exit_status
            deadline = time.monotonic() + timeout
            status = None
            if self._client is not None and not self._client.closed and self.machine.wait(0) is None:
                try:
                    # The request only; AgentClient.shutdown() would also wait for the
                    # connection to close, which the VM's end does for us below.
                    self._client.request_shutdown(timeout)
                except AgentError:
                    pass  # gone already, or not answering: the wait below decides
                status = self.machine.wait(max(0.0, deadline - time.monotonic()))
            elif self.machine is not None:
                status = self.machine.wait(0)
            self.stopped_gracefully = status is not None and status.kind == "shutdown"
            self._teardown()
            self.exit_status = self.machine.status if self.machine is not None else \
                ExitStatus("host-stop", "never started")
            self._times["stopped"] = time.monotonic_ns()
            return self.exit_status

    def _close_dial(self) -> None:
        if self._dial is not None:
            self._dial.close()
            self._dial = None

    def _teardown(self) -> None:
        """Release everything; safe to call more than once and after partial set-up."""
        self._close_dial()
        if self._client is not None:
            self._client.close()
        if self.machine is not None:
            self.machine.stop()   # forced if still running; idempotent
        if self._nat is not None:
            self._nat.close()     # after the device let go of its end
        if self._console is not None:
            self._console.close()
        if self.runtime_dir is not None:
            shutil.rmtree(self.runtime_dir, ignore_errors=True)
            self.runtime_dir = None
        if self._disk_lock is not None:
            self._disk_lock.release()
        for lock in self._volume_locks:
            lock.release()

    def __enter__(self) -> "Sandbox":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def __del__(self):
        try:
            if self.exit_status is None:
                self._teardown()
        except Exception:
            pass
