"""virtiofsd: the file server behind a SharedDir, one process per shared directory.

QEMU 7.2's C virtiofsd (/usr/lib/qemu/virtiofsd, Debian's qemu-system-common; VMM_VIRTIOFSD
overrides the path) is a vhost-user back end: whichever front end connects to its socket
(QEMU's vhost-user-fs-device on the qemu engine, the C core's vhost-user front end on the
kvm engine) hands it guest memory and the virtio-fs queues, and it serves the guest's FUSE
requests from the shared directory. Nothing here depends on the engine:

    fsd = Virtiofsd.start(SharedDir("/srv/src", "src"), "/run/vmm-x/fs0.sock")
    ...               # the socket listens now; a front end connects to it
    fsd.stop()        # idempotent; also ends virtiofsd's sandboxed child

The socket is ours: bound and listening here (mode 0600, in the caller's private
directory) and handed to virtiofsd as `--fd`, so it listens before start() returns and
virtiofsd writes no pid file under /run (which an ordinary user could not).

Lifetime. virtiofsd is spawned like QEMU (child_process.spawn): SIGKILL when its owner
dies, however it dies. Once a front end connects, virtiofsd forks its sandboxed worker
(pid 1 of a new pid namespace), which has its own parent-death signal (SIGTERM) on that
process and also ends when the vhost-user connection closes. stop() sends SIGTERM to both,
then SIGKILL to whichever lingers, and waits until both are gone.

Sandbox. virtiofsd's own `sandbox=namespace`: new mount, pid and net namespaces, and
pivot_root into the shared directory, so a path the guest sends cannot name anything
outside it (a symlink in the share is resolved inside that root: a link to /etc reaches
the share's own etc, if any); seccomp and dropped capabilities on top (we also drop
CAP_MKNOD: a guest cannot make device nodes in a host directory).
- As root, virtiofsd runs as root: guest uids and gids are host uids and gids, as with
  any virtiofsd.
- As an ordinary user, virtiofsd could not make its namespaces, so it starts inside a user
  namespace of its own in which uid/gid 0 is the caller (the only mapping an unprivileged
  process may write): files the guest's root creates belong to the caller on the host,
  the caller's files look root's to the guest, other host owners show as 65534 (nobody),
  and a guest user other than root cannot create files (EINVAL: virtiofsd cannot switch
  to an unmapped uid). A host that refuses unprivileged user namespaces gets an error saying so.
  virtiofsd's fd limit is then the caller's hard limit (it cannot raise it; it holds one
  O_PATH descriptor per inode the guest has looked up).

Read-only. virtiofsd 7.2 has no read-only option, so it starts in a mount namespace of
its own (entered between fork and exec) where the shared directory is bind-mounted onto
itself and made read-only recursively (mount_setattr): whatever the guest asks for,
virtiofsd's writes there fail with EROFS.

Cache mode: `cache=auto` with `timeout=0`, for correctness rather than speed. auto caches
file data in the guest only while a file is open (the cache is dropped at each open, so a
file the host changed is read afresh: close-to-open consistency), without writeback
(each guest write() reaches the host file at once). timeout=0 makes the guest revalidate
names and attributes on every use instead of trusting them for auto's default 1 s, so a
file the host creates, grows or removes is seen by the guest's next stat or open.
`cache=none` would be stricter still but means direct I/O, under which the guest's 6.1
kernel refuses a shared mmap (a program that maps a file, e.g. git, fails);
`cache=always` keeps data across opens and would hide host changes.

Log. virtiofsd's stderr is read through a pipe into log_path (default: the caller's
choice of file), capped like a console file (CappedFile: at most 2 x LOG_FILE_BYTES, the
older half in <path>.1); the last lines are kept in memory for error messages. A virtiofsd
that fails to start (missing source, namespaces refused) raises VirtiofsdError with them.
"""
from __future__ import annotations

import ctypes
import os
import resource
import select
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
from typing import List, Optional, Sequence

from ..console_limits import CappedFile, ConsoleTail
from ..errors import ConfigError, EngineUnavailable, VmmError
from .child_process import spawn

DEFAULT_BINARY = "/usr/lib/qemu/virtiofsd"
BINARY_ENV = "VMM_VIRTIOFSD"
CACHE_OPTIONS = ("cache=auto", "timeout=0")
# Printed (log level info) once the source checked out and virtiofsd waits for its front end.
READY_MARK = b"Waiting for vhost-user socket connection"
START_TIMEOUT_S = 10.0
STOP_GRACE_S = 2.0
LOG_FILE_BYTES = 1 << 20
TAIL_BYTES = 4096
MAX_SOCKET_PATH = 107   # sun_path's 108 bytes, NUL included

_CLONE_NEWNS = 0x00020000
_CLONE_NEWUSER = 0x10000000
_MS_REC = 0x4000
_MS_BIND = 0x1000
_MS_PRIVATE = 1 << 18
_SYS_MOUNT_SETATTR = 442          # x86_64 (and every architecture since 5.12)
_AT_FDCWD = -100
_AT_RECURSIVE = 0x8000
_MOUNT_ATTR_RDONLY = 0x1
_MOUNT_ATTR_NOSUID = 0x2
_MOUNT_ATTR_NODEV = 0x4

_libc = ctypes.CDLL(None, use_errno=True)   # loaded before any fork


class VirtiofsdError(VmmError):
    """virtiofsd could not start, or ended while its machine ran."""


class _MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]


def virtiofsd_binary() -> str:
    """The virtiofsd to run, or EngineUnavailable saying how to get it."""
    path = os.environ.get(BINARY_ENV) or DEFAULT_BINARY
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        raise EngineUnavailable(f"shared directories need virtiofsd, and {path} is not an "
                                "executable (apt-get install qemu-system-common, or set "
                                f"{BINARY_ENV})")
    return path


def unprivileged() -> bool:
    """Whether virtiofsd must run in a user namespace of its own (see the module docstring)."""
    return os.geteuid() != 0


def fuse_escape(value: str) -> str:
    """A value inside virtiofsd's comma-separated -o list (libfuse unescapes backslashes)."""
    return value.replace("\\", "\\\\").replace(",", "\\,")


def virtiofsd_argv(binary: str, source: str, fd: int, *, as_user: bool) -> List[str]:
    """virtiofsd's command line for the resolved source directory, listening on fd."""
    argv = [binary, f"--fd={fd}", "-o", f"source={fuse_escape(source)}",
            "-o", "sandbox=namespace", "-o", "log_level=info",
            "-o", "modcaps=-mknod"]
    for opt in CACHE_OPTIONS:
        argv += ["-o", opt]
    if as_user:
        # It would raise RLIMIT_NOFILE's hard limit, which only root may: keep ours.
        argv.append(f"--rlimit-nofile={resource.getrlimit(resource.RLIMIT_NOFILE)[1]}")
    return argv


def _namespace_setup(source: str, read_only: bool, as_user: bool):
    """The child_setup (runs after fork, before exec) that gives virtiofsd its view:
    a user namespace mapping 0 to the caller (as_user), a private mount namespace with
    source bind-mounted read-only (read_only). None when neither is needed."""
    if not (read_only or as_user):
        return None
    path = os.fsencode(source)
    uid_map = f"0 {os.geteuid()} 1".encode()
    gid_map = f"0 {os.getegid()} 1".encode()
    attr = _MountAttr(attr_set=_MOUNT_ATTR_RDONLY | _MOUNT_ATTR_NOSUID | _MOUNT_ATTR_NODEV)
    flags = _CLONE_NEWNS | (_CLONE_NEWUSER if as_user else 0)

    def fail(step: str) -> None:
        err = ctypes.get_errno()
        hint = ""
        if step == "unshare" and as_user:
            hint = (" (not running as root, virtiofsd needs an unprivileged user namespace, "
                    "which this host refuses: run as root, or allow them with "
                    "sysctl user.max_user_namespaces / kernel.unprivileged_userns_clone)")
        os.write(2, f"vmm: setting up virtiofsd's namespace: {step}: "
                    f"{os.strerror(err)}{hint}\n".encode())
        os._exit(126)

    def write_file(name: str, data: bytes) -> None:
        try:
            fd = os.open(name, os.O_WRONLY)
            try:
                os.write(fd, data)
            finally:
                os.close(fd)
        except OSError as e:
            ctypes.set_errno(e.errno or 0)
            fail(f"writing {name}")

    def setup() -> None:
        if _libc.unshare(flags) != 0:
            fail("unshare")
        if as_user:
            write_file("/proc/self/setgroups", b"deny")
            write_file("/proc/self/uid_map", uid_map)
            write_file("/proc/self/gid_map", gid_map)
        if _libc.mount(None, b"/", None, _MS_REC | _MS_PRIVATE, None) != 0:
            fail("making mounts private")
        if read_only:
            if _libc.mount(path, path, None, _MS_BIND | _MS_REC, None) != 0:
                fail("bind-mounting the shared directory")
            if _libc.syscall(_SYS_MOUNT_SETATTR, _AT_FDCWD, path, _AT_RECURSIVE,
                             ctypes.byref(attr), ctypes.sizeof(attr)) != 0:
                fail("making the shared directory read-only")
    return setup


class Virtiofsd:
    """One running virtiofsd; start() makes one, stop() ends it (idempotent)."""

    def __init__(self, shared, socket_path: str, log_path: Optional[str],
                 proc: subprocess.Popen):
        self.shared = shared
        self.socket_path = socket_path
        self.log_path = log_path
        self.source = None           # the resolved directory virtiofsd serves
        self._proc = proc
        self._tail = ConsoleTail(TAIL_BYTES)
        self._log: Optional[CappedFile] = None
        self._lock = threading.Lock()
        self._ready = threading.Event()   # ready mark seen, or the pipe ended
        self._marked = False
        self._stopping = False
        self._stopped = False
        self._reader: Optional[threading.Thread] = None
        # Readable once virtiofsd has exited: an engine watches it next to its VM's own
        # descriptors, and asks failure() why.
        self.exit_fd: int = os.pidfd_open(proc.pid)

    @property
    def pid(self) -> int:
        return self._proc.pid

    @property
    def returncode(self) -> Optional[int]:
        return self._proc.poll()

    def alive(self) -> bool:
        return self._proc.poll() is None

    @classmethod
    def start(cls, shared, socket_path: str, *, log_path: Optional[str] = None,
              timeout: float = START_TIMEOUT_S) -> "Virtiofsd":
        """Start virtiofsd serving shared (a vmm.devices.SharedDir) on a new socket at
        socket_path, which must not exist yet (its directory should be private). Returns
        once the socket listens and virtiofsd has checked its source; VirtiofsdError
        (with virtiofsd's last lines) if it ends first."""
        from ..devices import check_shared_source
        binary = virtiofsd_binary()
        source = check_shared_source(shared.host_path, shared.tag)
        log_path = log_path if log_path is not None else shared.log_path
        as_user = unprivileged()
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            listener.bind(socket_path)
            os.chmod(socket_path, 0o600)
            listener.listen(1)
            argv = virtiofsd_argv(binary, source, listener.fileno(), as_user=as_user)
            proc = spawn(argv, child_setup=_namespace_setup(source, shared.read_only, as_user),
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, pass_fds=(listener.fileno(),),
                         start_new_session=True)
        except BaseException:
            listener.close()
            _unlink(socket_path)
            raise
        listener.close()   # virtiofsd has its own copy: the path keeps listening
        fsd = cls(shared, socket_path, log_path, proc)
        fsd.source = source
        try:
            fsd._begin_log()
            fsd._wait_ready(timeout)
        except BaseException:
            fsd.stop()
            raise
        return fsd

    # --- the log -------------------------------------------------------------------------
    def _begin_log(self) -> None:
        if self.log_path is not None:
            try:
                self._log = CappedFile(self.log_path, LOG_FILE_BYTES)
            except OSError as e:
                raise ConfigError(f"shared dir {self.shared.tag!r}: cannot open virtiofsd's "
                                  f"log {self.log_path}: {e.strerror}") from None
        self._reader = threading.Thread(target=self._read_log, daemon=True,
                                        name=f"virtiofsd-log-{self.pid}")
        self._reader.start()

    def _read_log(self) -> None:
        stream = self._proc.stderr
        carry = b""   # the end of the last read: the mark may straddle two reads
        try:
            while True:
                data = os.read(stream.fileno(), 65536)
                if not data:
                    break
                window, carry = carry + data, (carry + data)[-len(READY_MARK):]
                with self._lock:
                    self._tail.add(data)
                    if self._log is not None:
                        try:
                            self._log.write(data)
                        except OSError:
                            self._log = None   # a full disk must not stop the reading
                    if not self._marked and READY_MARK in window:
                        self._marked = True
                        self._ready.set()
        finally:
            self._ready.set()

    def tail(self, lines: int = 8) -> str:
        """virtiofsd's last lines of output."""
        with self._lock:
            text = self._tail.value().decode(errors="replace")
        return "\n".join(text.strip().splitlines()[-lines:])

    def _wait_ready(self, timeout: float) -> None:
        if not self._ready.wait(timeout):
            raise VirtiofsdError(f"virtiofsd for shared dir {self.shared.tag!r} "
                                 f"({self.source}) did not start within {timeout:g}s"
                                 f"{self._last_lines()}")
        if self._marked and self.alive():
            return
        try:
            rc = self._proc.wait(STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            rc = None
        self._reader.join(STOP_GRACE_S)
        raise VirtiofsdError(f"virtiofsd for shared dir {self.shared.tag!r} ({self.source}) "
                             f"failed to start ({_how(rc)}){self._last_lines()}")

    def _last_lines(self) -> str:
        tail = self.tail()
        where = f" (log: {self.log_path})" if self.log_path else ""
        return f": {tail}{where}" if tail else where

    def failure(self) -> Optional[str]:
        """Why virtiofsd ended on its own before stop(), with its last lines; None if it
        runs or was stopped, or exited cleanly (its front end went away)."""
        rc = self._proc.poll()
        if rc is None or rc == 0 or self._stopping:
            return None
        return f"virtiofsd for {self.shared.tag!r} ended ({_how(rc)}){self._last_lines()}"

    # --- stopping ------------------------------------------------------------------------
    def stop(self, grace: float = STOP_GRACE_S) -> None:
        """End virtiofsd and its sandboxed worker (SIGTERM, then SIGKILL after grace
        seconds), wait until both are gone, close the log, remove the socket."""
        if self._stopped:
            return
        self._stopping = True
        workers = _child_pidfds(self.pid) if self.alive() else []
        try:
            if self.alive():
                _signal(self._proc, signal.SIGTERM)
                for fd in workers:
                    _pidfd_signal(fd, signal.SIGTERM)
            try:
                self._proc.wait(grace)
            except subprocess.TimeoutExpired:
                _signal(self._proc, signal.SIGKILL)
                self._proc.wait()
            for fd in workers:
                if not select.select([fd], [], [], grace)[0]:
                    _pidfd_signal(fd, signal.SIGKILL)
                    select.select([fd], [], [], grace)
        finally:
            for fd in workers:
                os.close(fd)
            self._stopped = True
            if self._reader is not None:
                self._reader.join(grace)
            self._proc.stderr.close()
            with self._lock:
                if self._log is not None:
                    self._log.close()
                    self._log = None
            _unlink(self.socket_path)
            os.close(self.exit_fd)
            self.exit_fd = -1


class SharedDirServers:
    """The virtiofsds of one machine: one per SharedDir, their sockets (and, unless a
    SharedDir names its own, their logs) in a private 0700 directory of the machine's.
    start() starts all or none; stop() ends all and removes the directory."""

    def __init__(self, shared_dirs: Sequence, run_dir: Optional[str] = None):
        self._shared = tuple(shared_dirs)
        self._run_dir = run_dir
        self._own_dir = False
        self.servers: List[Virtiofsd] = []

    def start(self) -> None:
        if not self._shared:
            return
        try:
            if self._run_dir is None:
                self._run_dir = tempfile.mkdtemp(prefix="vmm-fs-")
                self._own_dir = True
            longest = os.path.join(self._run_dir, f"fs{len(self._shared) - 1}.sock")
            if len(os.fsencode(longest)) > MAX_SOCKET_PATH:
                raise ConfigError(f"virtiofsd's socket path {longest} is longer than a Unix "
                                  f"socket allows ({MAX_SOCKET_PATH} bytes): set TMPDIR to "
                                  "a shorter directory")
            for i, shared in enumerate(self._shared):
                log = shared.log_path or os.path.join(self._run_dir, f"virtiofsd-fs{i}.log")
                self.servers.append(Virtiofsd.start(
                    shared, os.path.join(self._run_dir, f"fs{i}.sock"), log_path=log))
        except BaseException:
            self.stop()
            raise

    def devices(self) -> List[dict]:
        """vhost-user entries for the front end: kind "fs", the socket and the tag."""
        return [{"kind": "fs", "socket": s.socket_path, "options": {"tag": s.shared.tag}}
                for s in self.servers]

    def errors(self) -> List[str]:
        """Why each virtiofsd that ended on its own did (see Virtiofsd.failure())."""
        return [f for f in (s.failure() for s in self.servers) if f]

    def exit_fds(self) -> List[int]:
        """One descriptor per running virtiofsd, readable once it has exited."""
        return [s.exit_fd for s in self.servers]

    def info(self) -> List[dict]:
        return [{"kind": "fs", "name": f"fs{i}", "tag": s.shared.tag, "pid": s.pid,
                 "read_only": s.shared.read_only, "source": s.source, "log": s.log_path}
                for i, s in enumerate(self.servers)]

    def stop(self) -> None:
        first: Optional[BaseException] = None
        for s in self.servers:
            try:
                s.stop()
            except Exception as e:
                first = first or e
        if self._own_dir and self._run_dir is not None:
            shutil.rmtree(self._run_dir, ignore_errors=True)
            self._run_dir = None
        if first is not None:
            raise VirtiofsdError(f"stopping virtiofsd failed: {first}") from first


def _child_pidfds(pid: int) -> List[int]:
    """pidfds of pid's children (virtiofsd's sandboxed worker), taken before pid is
    signalled: once it is gone they are reparented and no longer listed."""
    fds = []
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            children = [int(c) for c in f.read().split()]
    except OSError:
        return fds
    for child in children:
        try:
            fds.append(os.pidfd_open(child))
        except OSError:
            pass   # already gone
    return fds


def _pidfd_signal(fd: int, sig) -> None:
    try:
        signal.pidfd_send_signal(fd, sig)
    except ProcessLookupError:
        pass


def _signal(proc: subprocess.Popen, sig) -> None:
    try:
        proc.send_signal(sig)
    except ProcessLookupError:
        pass


def _how(rc: Optional[int]) -> str:
    if rc is None:
        return "still running"
    if rc < 0:
        return f"signal {signal.Signals(-rc).name}"
    return f"exit status {rc}"


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
