"""Host side of the guest agent protocol: one connection, many sessions.

    client = AgentClient.connect("/run/x/vsock.sock", port=1024)   # or connect_unix(path)
    client.wait_ready(10)
    r = client.exec(["sh", "-c", "echo hi"], timeout=5)           # ExecResult
    with client.exec_stream(["cat"]) as p:                         # streaming
        p.write(b"data"); p.close_stdin()
        for stream, data in p: ...
    client.fs.write("/tmp/f", b"..."); client.fs.read("/tmp/f")
    client.shutdown()

A reader thread demultiplexes frames into per-session queues. Flow control follows the
protocol's credit windows: the agent sends a session at most WINDOW bytes of output the
client has not yet acknowledged, and the client acknowledges only what its consumer has
taken, so a slow consumer slows the guest process instead of filling host memory.
Likewise stdin and file writes wait for the agent's CREDIT before sending more.
The wire format lives in vmm.agent_protocol and guest/agent/PROTOCOL.md.
"""
from __future__ import annotations

import asyncio
import errno as errno_mod
import itertools
import os
import queue
import signal as signal_mod
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import BinaryIO, Dict, Iterator, List, Optional, Sequence, Tuple, Union

from . import protocol as P
from .protocol import G, T
from ..errors import GuestError

DEFAULT_VSOCK_PORT = 1024
KILL_GRACE_S = 5.0  # after a timeout's SIGKILL, how long to wait for EXITED


# --- errors ---------------------------------------------------------------------------------

class AgentError(GuestError):
    """The agent reported an error, or broke the protocol."""

    def __init__(self, message: str, *, errno: int = 0, kind: str = ""):
        super().__init__(message)
        self.errno = errno
        self.kind = kind


class SandboxNotRunning(AgentError):
    """There is no live connection to the agent (the VM stopped, or never came up)."""


class Timeout(AgentError):
    """A deadline passed. For exec, the process was killed; output so far is attached."""

    def __init__(self, message: str, *, stdout: bytes = b"", stderr: bytes = b""):
        super().__init__(message, errno=errno_mod.ETIMEDOUT, kind="timeout")
        self.stdout = stdout
        self.stderr = stderr


class ExecFailed(AgentError):
    """The command could not be started (not found, not executable, bad cwd/user, ...)."""

    def __init__(self, message: str, *, errno: int, kind: str, argv: Sequence[str] = ()):
        super().__init__(message, errno=errno, kind=kind)
        self.argv = list(argv)

    @property
    def exit_code(self) -> int:
        """The shell's convention: 127 not found, 126 found but not executable."""
        if self.kind == "not_found":
            return 127
        if self.kind in ("permission_denied", "exec_format"):
            return 126
        return 1


class FsError(AgentError):
    """A file request failed in the guest; errno and kind say why."""

    def to_oserror(self) -> OSError:
        return OSError(self.errno, str(self))


# --- results ----------------------------------------------------------------------------------

@dataclass
class ExecResult:
    code: Optional[int]          # exit status, or None when killed by a signal
    signal: Optional[int]        # the killing signal, or None
    stdout: bytes = b""
    stderr: bytes = b""
    pid: int = 0

    @property
    def exit_code(self) -> int:
        """code, or 128 + signal like a shell."""
        return self.code if self.code is not None else 128 + (self.signal or 0)


@dataclass
class FileStat:
    mode: int
    size: int
    mtime_ns: int
    uid: int
    gid: int
    nlink: int
    target: Optional[str] = None

    @property
    def is_dir(self) -> bool:
        return (self.mode & 0o170000) == 0o040000

    @property
    def is_file(self) -> bool:
        return (self.mode & 0o170000) == 0o100000

    @property
    def is_symlink(self) -> bool:
        return (self.mode & 0o170000) == 0o120000


@dataclass
class DirEntry:
    name: str
    mode: int
    size: int
    mtime_ns: int

    @property
    def is_dir(self) -> bool:
        return (self.mode & 0o170000) == 0o040000


# --- sessions -------------------------------------------------------------------------------------

_CLOSED = (-1, b"")  # queued to every session when the connection ends


class _Session:
    """One session's inbound queue and its outbound credit (bytes we may still send)."""

    def __init__(self, client: "AgentClient", sid: int):
        self.client = client
        self.id = sid
        self.events: "queue.SimpleQueue[Tuple[int, bytes]]" = queue.SimpleQueue()
        self.cond = threading.Condition()
        self.credit = P.WINDOW
        self.ended = False  # the agent closed it (DONE/ERROR/EXITED/FAILED) or conn died
        self.unacked = 0    # output taken by our consumer, not yet acknowledged
        self.inbound = 0    # output received and not yet acknowledged (<= WINDOW)

    def add_credit(self, n: int) -> None:
        with self.cond:
            self.credit += n
            self.cond.notify_all()

    def end(self) -> None:
        with self.cond:
            self.ended = True
            self.cond.notify_all()

    def take_credit(self, want: int, deadline: Optional[float]) -> int:
        """Block until some credit is available; returns how much of want we may send."""
        with self.cond:
            while self.credit <= 0 and not self.ended:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise Timeout(f"session {self.id}: the agent took no more data in time")
                self.cond.wait(left)
            if self.ended:
                return 0
            n = min(want, self.credit)
            self.credit -= n
            return n

    def get(self, deadline: Optional[float]) -> Tuple[int, bytes]:
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            return self.events.get(timeout=left)
        except queue.Empty:
            raise Timeout(f"session {self.id}: no answer from the agent in time") from None

    def consumed(self, n: int) -> None:
        """Acknowledge output our consumer took; in quarter windows to keep frames few."""
        self.unacked += n
        if self.unacked >= P.WINDOW // 4:
            n, self.unacked = self.unacked, 0
            with self.cond:
                self.inbound -= n
            self.client._send_quiet(self.id, T.CREDIT, P.encode([(G.BYTES, n)]))

    def received(self, n: int) -> bool:
        """Count output from the agent; False if it overran the window we granted."""
        with self.cond:
            self.inbound += n
            return self.inbound <= P.WINDOW


def _fields(payload: bytes) -> Dict[int, object]:
    """Decode a TLV reply; a malformed one from the guest is an AgentError, not a crash."""
    try:
        return P.decode(payload)
    except P.ProtocolError as e:
        raise AgentError(f"malformed reply from the agent: {e}", kind="bad_frame") from None


def _error_from(payload: bytes, cls=AgentError, **extra) -> AgentError:
    try:
        f = P.decode(payload)
    except P.ProtocolError as e:
        return AgentError(f"malformed error frame from the agent: {e}")
    return cls(P.text(f.get(G.MESSAGE), "agent error"), errno=P.signed(f.get(G.ERRNO, 0)),
               kind=P.text(f.get(G.KIND)), **extra)


# --- exec -----------------------------------------------------------------------------------------

class Process:
    """A running command: write stdin, iterate output, signal, resize, wait.

    Iterating yields ("stdout" | "stderr", bytes) as output arrives and stops when the
    process has ended; then `result` holds its ExecResult (without the output, which the
    iteration handed out). With a tty, all output arrives as "stdout".
    """

    def __init__(self, session: _Session, argv: Sequence[str], pid: int):
        self._s = session
        self.argv = list(argv)
        self.pid = pid
        self.result: Optional[ExecResult] = None
        self._stdin_closed = False

    # stdin
    def write(self, data: bytes, timeout: Optional[float] = None) -> None:
        if self._stdin_closed:
            raise ValueError("stdin of this process is already closed")
        deadline = None if timeout is None else time.monotonic() + timeout
        view = memoryview(bytes(data))
        while view:
            n = self._s.take_credit(min(len(view), P.CHUNK), deadline)
            if n == 0:
                return  # the process ended; nothing will read the rest
            self._s.client._send(self._s.id, T.STDIN, view[:n].tobytes())
            view = view[n:]

    def close_stdin(self) -> None:
        if not self._stdin_closed:
            self._stdin_closed = True
            if not self._s.ended:
                self._s.client._send_quiet(self._s.id, T.STDIN, b"")

    # control
    def signal(self, signo: int = signal_mod.SIGTERM, group: bool = True) -> None:
        if not self._s.ended:
            self._s.client._send_quiet(self._s.id, T.SIGNAL,
                                       P.encode([(G.SIGNAL, int(signo)), (G.GROUP, group)]))

    def kill(self) -> None:
        self.signal(signal_mod.SIGKILL)

    def resize(self, rows: int, cols: int) -> None:
        if not self._s.ended:
            self._s.client._send_quiet(self._s.id, T.RESIZE,
                                       P.encode([(G.ROWS, rows), (G.COLS, cols)]))

    # output
    def next_event(self, deadline: Optional[float] = None) -> Optional[Tuple[str, bytes]]:
        """The next ("stdout"|"stderr", data), or None once the process has ended."""
        while self.result is None:
            type_, payload = self._s.get(deadline)
            if type_ in (T.STDOUT, T.STDERR):
                if not payload:
                    continue  # that stream's EOF
                self._s.consumed(len(payload))
                return ("stdout" if type_ == T.STDOUT else "stderr", payload)
            self._finish(type_, payload)
        return None

    def _finish(self, type_: int, payload: bytes) -> None:
        client = self._s.client
        client._forget(self._s)
        if type_ == T.EXITED:
            f = _fields(payload)
            code = f.get(G.CODE)
            sig = f.get(G.SIGNAL)
            self.result = ExecResult(code=None if sig is not None else code, signal=sig,
                                     pid=self.pid)
            return
        if type_ == _CLOSED[0]:
            raise SandboxNotRunning(f"connection to the agent lost while running {self.argv[0]!r}")
        if type_ == T.ERROR:
            raise _error_from(payload)
        raise AgentError(f"unexpected message 0x{type_:x} in an exec session")

    def __iter__(self) -> Iterator[Tuple[str, bytes]]:
        while True:
            ev = self.next_event()
            if ev is None:
                return
            yield ev

    def wait(self, timeout: Optional[float] = None) -> ExecResult:
        """Collect the rest of the output and the exit status."""
        out, err = [], []
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            ev = self.next_event(deadline)
            if ev is None:
                break
            (out if ev[0] == "stdout" else err).append(ev[1])
        self.result.stdout = b"".join(out)
        self.result.stderr = b"".join(err)
        return self.result

    def __enter__(self) -> "Process":
        return self

    def __exit__(self, *exc) -> None:
        if self.result is None and not self._s.ended:
            self.kill()
            try:
                self.wait(KILL_GRACE_S)
            except AgentError:
                pass


# --- file operations ----------------------------------------------------------------------------

class Fs:
    """File operations in the guest: read, write, stat, list, mkdir, remove."""

    def __init__(self, client: "AgentClient"):
        self._c = client

    def _simple(self, type_: int, fields, timeout: Optional[float]) -> Tuple[int, bytes]:
        s = self._c._open(type_, P.encode(fields))
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            t, payload = s.get(deadline)
        finally:
            self._c._forget(s)
        return self._check(t, payload)

    def _check(self, t: int, payload: bytes) -> Tuple[int, bytes]:
        if t == T.ERROR:
            raise _error_from(payload, FsError)
        if t == _CLOSED[0]:
            raise SandboxNotRunning("connection to the agent lost during a file request")
        return t, payload

    def read_iter(self, path: str, offset: int = 0, length: Optional[int] = None,
                  timeout: Optional[float] = None) -> Iterator[bytes]:
        fields = [(G.PATH, path), (G.OFFSET, offset)]
        if length is not None:
            fields.append((G.LENGTH, length))
        s = self._c._open(T.FS_READ, P.encode(fields))
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            while True:
                t, payload = self._check(*s.get(deadline))
                if t == T.DONE:
                    return
                if t != T.DATA:
                    raise AgentError(f"unexpected message 0x{t:x} while reading {path}")
                s.consumed(len(payload))
                yield payload
        finally:
            self._c._forget(s)

    def read(self, path: str, offset: int = 0, length: Optional[int] = None,
             timeout: Optional[float] = None) -> bytes:
        return b"".join(self.read_iter(path, offset, length, timeout))

    def write(self, path: str, data: Union[bytes, BinaryIO], mode: int = 0o644,
              append: bool = False, timeout: Optional[float] = None) -> int:
        """Write bytes (or a binary file's contents) to path; returns the byte count."""
        s = self._c._open(T.FS_WRITE, P.encode([(G.PATH, path), (G.MODE, mode),
                                                (G.APPEND, append)]))
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            for chunk in _chunks(data):
                view = memoryview(chunk)
                while view:
                    n = s.take_credit(min(len(view), P.CHUNK), deadline)
                    if n == 0:
                        break  # the agent ended the session: its ERROR is queued
                    self._c._send(s.id, T.DATA, view[:n].tobytes())
                    view = view[n:]
                if s.ended:
                    break
            if not s.ended:
                self._c._send(s.id, T.DATA, b"")
            t, payload = self._check(*s.get(deadline))
            return _fields(payload).get(G.SIZE, 0)
        finally:
            self._c._forget(s)

    def stat(self, path: str, timeout: Optional[float] = None) -> FileStat:
        t, payload = self._simple(T.FS_STAT, [(G.PATH, path)], timeout)
        if t != T.STAT:
            raise AgentError(f"unexpected message 0x{t:x} in reply to stat {path}")
        f = _fields(payload)
        target = f.get(G.TARGET)
        return FileStat(mode=f.get(G.MODE, 0), size=f.get(G.SIZE, 0),
                        mtime_ns=f.get(G.MTIME_NS, 0), uid=f.get(G.UID, 0),
                        gid=f.get(G.GID, 0), nlink=f.get(G.NLINK, 0),
                        target=None if target is None else P.text(target))

    def list(self, path: str, timeout: Optional[float] = None) -> List[DirEntry]:
        s = self._c._open(T.FS_LIST, P.encode([(G.PATH, path)]))
        deadline = None if timeout is None else time.monotonic() + timeout
        entries: List[DirEntry] = []
        try:
            while True:
                t, payload = self._check(*s.get(deadline))
                if t == T.DONE:
                    return entries
                s.consumed(len(payload))
                try:
                    entries.extend(_entries(payload))
                except P.ProtocolError as e:
                    raise AgentError(f"malformed directory listing of {path}: {e}") from None
        finally:
            self._c._forget(s)

    def mkdir(self, path: str, mode: int = 0o755, parents: bool = False,
              timeout: Optional[float] = None) -> None:
        self._simple(T.FS_MKDIR, [(G.PATH, path), (G.MODE, mode), (G.PARENTS, parents)], timeout)

    def remove(self, path: str, recursive: bool = False, timeout: Optional[float] = None) -> None:
        self._simple(T.FS_REMOVE, [(G.PATH, path), (G.RECURSIVE, recursive)], timeout)

    def exists(self, path: str) -> bool:
        try:
            self.stat(path)
            return True
        except FsError as e:
            if e.errno == errno_mod.ENOENT:
                return False
            raise


def _chunks(data: Union[bytes, BinaryIO]) -> Iterator[bytes]:
    if isinstance(data, (bytes, bytearray, memoryview)):
        yield bytes(data)
        return
    while True:
        chunk = data.read(P.CHUNK)
        if not chunk:
            return
        yield chunk


def _entries(payload: bytes) -> Iterator[DirEntry]:
    """ENTRIES: groups of NAME, MODE, SIZE, MTIME_NS; a NAME starts each entry."""
    cur: Optional[dict] = None
    for tag, value in P.iter_fields(payload):
        if tag == G.NAME:
            if cur is not None:
                yield DirEntry(**cur)
            cur = dict(name=P.text(value), mode=0, size=0, mtime_ns=0)
        elif cur is not None and tag in (G.MODE, G.SIZE, G.MTIME_NS):
            cur[{G.MODE: "mode", G.SIZE: "size", G.MTIME_NS: "mtime_ns"}[tag]] = value
    if cur is not None:
        yield DirEntry(**cur)


# --- the client ---------------------------------------------------------------------------------

@dataclass
class ReadyInfo:
    """The guest's READY message; times are the guest's CLOCK_BOOTTIME in ns (kernel
    start is ~0 on that clock)."""
    version: int
    agent_start_ns: int
    ready_ns: int
    now_ns: int
    realtime_ns: int
    pid1: bool
    hostname: str
    max_payload: int
    window: int
    received_monotonic_ns: int = 0
    raw: Dict[int, object] = field(default_factory=dict, repr=False)


def vsock_handshake(sock: socket.socket, port: int, timeout: Optional[float] = 10.0) -> None:
    """Firecracker-style host side of virtio-vsock: `CONNECT <port>\\n`, expect `OK ...\\n`.

    Reads one byte at a time so no agent bytes after the reply line are consumed.
    """
    old = sock.gettimeout()
    sock.settimeout(timeout)
    try:
        sock.sendall(f"CONNECT {int(port)}\n".encode())
        line = b""
        while not line.endswith(b"\n"):
            b = sock.recv(1)
            if not b:
                raise SandboxNotRunning(f"vsock: connection closed before the reply to "
                                        f"CONNECT {port} (got {line!r})")
            line += b
            if len(line) > 64:
                raise AgentError(f"vsock: reply to CONNECT {port} too long: {line[:64]!r}")
    except socket.timeout:
        raise Timeout(f"vsock: no reply to CONNECT {port} within {timeout}s") from None
    finally:
        sock.settimeout(old)
    if not line.startswith(b"OK"):
        raise SandboxNotRunning(f"vsock: CONNECT {port} refused: {line.strip()!r}")


class AgentClient:
    """One connection to a guest agent. Thread-safe: many sessions may run at once."""

    def __init__(self, sock: socket.socket):
        sock.settimeout(None)
        self._sock = sock
        self._rfile = sock.makefile("rb", buffering=256 * 1024)
        self._wlock = threading.Lock()
        self._slock = threading.Lock()
        self._sessions: Dict[int, _Session] = {}
        self._ids = itertools.count(1)
        self._closed = False
        self._close_reason = "connection closed"
        self._ready = threading.Event()
        self.ready: Optional[ReadyInfo] = None
        self.fs = Fs(self)
        self._reader = threading.Thread(target=self._read_loop, name="vmm-agent-reader",
                                        daemon=True)
        self._reader.start()

    # --- construction ---
    @classmethod
    def connect_unix(cls, path: str, timeout: float = 10.0) -> "AgentClient":
        return cls.connect(path, port=None, timeout=timeout)

    @classmethod
    def connect(cls, path: str, port: Optional[int] = DEFAULT_VSOCK_PORT,
                timeout: float = 10.0) -> "AgentClient":
        """Connect to a Unix socket; with port, do the vsock CONNECT handshake first."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        sock.settimeout(timeout)
        try:
            sock.connect(os.fspath(path))
            if port is not None:
                vsock_handshake(sock, port, timeout)
        except (FileNotFoundError, ConnectionRefusedError) as e:
            sock.close()
            raise SandboxNotRunning(f"cannot connect to the agent at {path}: {e.strerror}") from None
        except BaseException:
            sock.close()
            raise
        return cls(sock)

    @classmethod
    def connect_when_ready(cls, path: str, port: Optional[int] = DEFAULT_VSOCK_PORT,
                           timeout: float = 30.0, alive=None) -> "AgentClient":
        """Connect, retrying while the guest boots (no socket yet, or the agent not yet
        listening: the VMM refuses the CONNECT), then wait for READY. alive(), if given,
        is asked between attempts so a VM that died ends the wait at once."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            try:
                client = cls.connect(path, port, timeout=max(0.1, min(left, 5.0)))
                client.wait_ready(max(0.1, deadline - time.monotonic()))
                return client
            except (SandboxNotRunning, Timeout, ConnectionError) as e:
                last = e
            if alive is not None and not alive():
                raise SandboxNotRunning(f"the VM ended before its agent was ready ({last})")
            if time.monotonic() >= deadline:
                raise Timeout(f"no agent ready at {path} (port {port}) within {timeout}s: {last}")
            time.sleep(0.01)

    # --- framing ---
    def _send(self, sid: int, type_: int, payload: bytes = b"") -> None:
        data = P.frame(sid, type_, payload)
        with self._wlock:
            if self._closed:
                raise SandboxNotRunning(f"agent connection is closed ({self._close_reason})")
            try:
                self._sock.sendall(data)
            except OSError as e:
                raise SandboxNotRunning(f"agent connection lost: {e}") from None

    def _send_quiet(self, sid: int, type_: int, payload: bytes = b"") -> None:
        """Send, ignoring a dead connection (credit, signals: the reader reports it)."""
        try:
            self._send(sid, type_, payload)
        except SandboxNotRunning:
            pass

    def _read_exact(self, n: int) -> bytes:
        data = self._rfile.read(n)
        if data is None or len(data) != n:
            raise EOFError
        return data

    def _read_loop(self) -> None:
        try:
            while True:
                length, sid, type_, _flags = P.HEADER.unpack(self._read_exact(P.HDR_LEN))
                if length > P.MAX_PAYLOAD:
                    raise P.ProtocolError(f"frame of {length} bytes over the limit")
                payload = self._read_exact(length) if length else b""
                self._dispatch(sid, type_, payload)
        except EOFError:
            self._close_reason = "the agent closed the connection"
        except (OSError, ValueError) as e:
            self._close_reason = f"read failed: {e}"
        except P.ProtocolError as e:
            self._close_reason = f"protocol error from the agent: {e}"
        finally:
            self._mark_closed()

    def _dispatch(self, sid: int, type_: int, payload: bytes) -> None:
        if sid == 0:
            if type_ == T.READY:
                self._on_ready(payload)
            return  # connection-level errors: the connection is about to end anyway
        with self._slock:
            s = self._sessions.get(sid)
        if s is None:
            return  # late frame for a session we gave up on
        if type_ == T.CREDIT:
            try:
                s.add_credit(P.decode(payload).get(G.BYTES, 0))
            except P.ProtocolError:
                pass
            return
        if type_ in (T.STDOUT, T.STDERR, T.DATA, T.ENTRIES) and not s.received(len(payload)):
            # A guest ignoring flow control could fill host memory: drop the session.
            self._forget(s)
            s.end()
            s.events.put((T.ERROR, P.encode([
                (G.ERRNO, errno_mod.EPROTO), (G.KIND, "bad_frame"),
                (G.MESSAGE, f"the agent sent session {sid} more than its window")])))
            self._send_quiet(sid, T.SIGNAL, P.encode([(G.SIGNAL, signal_mod.SIGKILL)]))
            return
        if type_ in (T.DONE, T.ERROR, T.EXITED, T.FAILED):
            s.end()
        s.events.put((type_, payload))

    def _on_ready(self, payload: bytes) -> None:
        f = P.decode(payload)
        self.ready = ReadyInfo(
            version=f.get(G.VERSION, 0), agent_start_ns=f.get(G.AGENT_START_NS, 0),
            ready_ns=f.get(G.READY_NS, 0), now_ns=f.get(G.NOW_NS, 0),
            realtime_ns=f.get(G.REALTIME_NS, 0), pid1=bool(f.get(G.PID1, 0)),
            hostname=P.text(f.get(G.HOSTNAME)), max_payload=f.get(G.MAX_PAYLOAD, P.MAX_PAYLOAD),
            window=f.get(G.WINDOW, P.WINDOW), received_monotonic_ns=time.monotonic_ns(), raw=f)
        self._ready.set()

    def _mark_closed(self) -> None:
        with self._wlock:
            self._closed = True
        with self._slock:
            sessions = list(self._sessions.values())
            self._sessions.clear()
        for s in sessions:
            s.end()
            s.events.put(_CLOSED)
        self._ready.set()

    # --- sessions ---
    def _open(self, type_: int, payload: bytes) -> _Session:
        with self._slock:
            sid = next(self._ids) & 0xFFFFFFFF
            while sid == 0 or sid in self._sessions:
                sid = next(self._ids) & 0xFFFFFFFF
            s = _Session(self, sid)
            self._sessions[sid] = s
        try:
            self._send(sid, type_, payload)
        except BaseException:
            self._forget(s)
            raise
        return s

    def _forget(self, s: _Session) -> None:
        with self._slock:
            self._sessions.pop(s.id, None)

    @property
    def closed(self) -> bool:
        return self._closed

    # --- API ---
    def wait_ready(self, timeout: Optional[float] = None) -> ReadyInfo:
        if not self._ready.wait(timeout):
            raise Timeout(f"the agent did not report ready within {timeout}s")
        if self.ready is None:
            raise SandboxNotRunning(f"the agent went away before ready ({self._close_reason})")
        return self.ready

    def exec_stream(self, argv: Sequence[str], *, env: Optional[Dict[str, str]] = None,
                    cwd: Optional[str] = None, user: Optional[str] = None, tty: bool = False,
                    rows: int = 24, cols: int = 80, rlimits: Optional[Dict[int, Tuple[int, int]]] = None,
                    timeout: Optional[float] = 30.0) -> Process:
        """Start argv; returns a Process once the agent reports it started.

        timeout bounds only the wait for STARTED here. Raises ExecFailed if it could
        not start (kind "not_found" -> exit code 127, "permission_denied" -> 126, ...).
        """
        if isinstance(argv, (str, bytes)) or not argv:
            raise ValueError(f"argv must be a non-empty list of strings, not {argv!r}")
        fields = [(G.ARGV, a) for a in argv]
        fields += [(G.ENV, f"{k}={v}") for k, v in (env or {}).items()]
        if cwd is not None:
            fields.append((G.CWD, cwd))
        if user is not None:
            fields.append((G.USER, str(user)))
        if tty:
            fields += [(G.TTY, 1), (G.ROWS, rows), (G.COLS, cols)]
        for res, (soft, hard) in (rlimits or {}).items():
            fields.append((G.RLIMIT, P.RLIMIT.pack(int(res), soft, hard)))
        payload = P.encode(fields)
        if len(payload) > P.MAX_PAYLOAD:
            raise ValueError(f"exec request of {len(payload)} bytes is over the {P.MAX_PAYLOAD} limit")
        s = self._open(T.EXEC, payload)
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            t, reply = s.get(deadline)
        except Timeout:
            self._forget(s)
            raise
        if t == T.STARTED:
            return Process(s, argv, _fields(reply).get(G.PID, 0))
        self._forget(s)
        if t == T.FAILED:
            raise _error_from(reply, ExecFailed, argv=argv)
        if t == T.ERROR:
            raise _error_from(reply)
        if t == _CLOSED[0]:
            raise SandboxNotRunning(f"agent connection lost starting {argv[0]!r}")
        raise AgentError(f"unexpected message 0x{t:x} in reply to EXEC")

    def exec(self, argv: Sequence[str], *, env: Optional[Dict[str, str]] = None,
             cwd: Optional[str] = None, user: Optional[str] = None,
             stdin: Union[None, bytes, BinaryIO] = None, timeout: Optional[float] = None,
             tty: bool = False, rows: int = 24, cols: int = 80,
             rlimits: Optional[Dict[int, Tuple[int, int]]] = None) -> ExecResult:
        """Run argv to completion and return its ExecResult.

        On timeout the process group is killed and Timeout is raised with the output so
        far. stdin may be bytes or a binary file; None means empty input.
        """
        start_timeout = 30.0 if timeout is None else timeout
        deadline = None if timeout is None else time.monotonic() + timeout
        proc = self.exec_stream(argv, env=env, cwd=cwd, user=user, tty=tty, rows=rows,
                                cols=cols, rlimits=rlimits, timeout=start_timeout)
        feeder = self._feed_stdin(proc, stdin)
        out: List[bytes] = []
        err: List[bytes] = []
        try:
            while True:
                ev = proc.next_event(deadline)
                if ev is None:
                    break
                (out if ev[0] == "stdout" else err).append(ev[1])
        except Timeout:
            proc.kill()
            self._drain_after_kill(proc, out, err)
            raise Timeout(f"{argv[0]!r} did not finish within {timeout}s; killed",
                          stdout=b"".join(out), stderr=b"".join(err)) from None
        finally:
            if feeder is not None:
                feeder.join(KILL_GRACE_S)
        res = proc.result
        res.stdout, res.stderr = b"".join(out), b"".join(err)
        return res

    @staticmethod
    def _drain_after_kill(proc: Process, out: List[bytes], err: List[bytes]) -> None:
        deadline = time.monotonic() + KILL_GRACE_S
        try:
            while True:
                ev = proc.next_event(deadline)
                if ev is None:
                    return
                (out if ev[0] == "stdout" else err).append(ev[1])
        except AgentError:
            pass

    @staticmethod
    def _feed_stdin(proc: Process, stdin) -> Optional[threading.Thread]:
        if stdin is None or (isinstance(stdin, (bytes, bytearray)) and not stdin):
            proc.close_stdin()
            return None

        def feed():
            try:
                for chunk in _chunks(stdin):
                    proc.write(chunk)
                    if proc._s.ended:
                        break
            except AgentError:
                pass
            finally:
                proc.close_stdin()
        t = threading.Thread(target=feed, name="vmm-agent-stdin", daemon=True)
        t.start()
        return t

    def configure(self, *, env: Optional[Dict[str, str]] = None, workdir: Optional[str] = None,
                  hostname: Optional[str] = None,
                  rlimits: Optional[Dict[int, Tuple[int, int]]] = None,
                  timeout: Optional[float] = 10.0) -> None:
        """Sandbox-wide defaults every later exec inherits (CONFIG)."""
        fields = [(G.ENV, f"{k}={v}") for k, v in (env or {}).items()]
        if workdir is not None:
            fields.append((G.WORKDIR, workdir))
        if hostname is not None:
            fields.append((G.HOSTNAME, hostname))
        for res, (soft, hard) in (rlimits or {}).items():
            fields.append((G.RLIMIT, P.RLIMIT.pack(int(res), soft, hard)))
        self._request(T.CONFIG, P.encode(fields), timeout)

    def ping(self, timeout: Optional[float] = 10.0) -> int:
        """A round trip; returns the guest's CLOCK_BOOTTIME in ns."""
        return _fields(self._request(T.PING, b"", timeout)).get(G.NOW_NS, 0)

    def _request(self, type_: int, payload: bytes, timeout: Optional[float]) -> bytes:
        s = self._open(type_, payload)
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            t, reply = s.get(deadline)
        finally:
            self._forget(s)
        if t == T.DONE:
            return reply
        if t == _CLOSED[0]:
            raise SandboxNotRunning("agent connection lost during a request")
        if t == T.ERROR:
            raise _error_from(reply)
        raise AgentError(f"unexpected message 0x{t:x} in reply to request 0x{type_:x}")

    def shutdown(self, timeout: float = 10.0) -> None:
        """Ask the agent to end everything, sync, unmount and power off (reboot)."""
        try:
            self._request(T.SHUTDOWN, b"", timeout)
        except SandboxNotRunning:
            pass  # it went down before the DONE reached us: that is fine
        self._reader.join(timeout)
        self.close()

    def close(self) -> None:
        with self._wlock:
            self._closed = True
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._sock.close()
        if threading.current_thread() is not self._reader:
            self._reader.join(5)
        self._mark_closed()

    def __enter__(self) -> "AgentClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# --- asyncio ------------------------------------------------------------------------------------

class AsyncAgentClient:
    """asyncio flavour: the blocking client's calls run in worker threads.

    Frames are demultiplexed by the client's one reader thread either way; the threads
    here only wait, so hundreds of concurrent execs across sandboxes cost threads but no
    extra sockets. exec_stream is an async iterator over the output.
    """

    def __init__(self, client: AgentClient):
        self.client = client

    @classmethod
    async def connect(cls, path: str, port: Optional[int] = DEFAULT_VSOCK_PORT,
                      timeout: float = 10.0) -> "AsyncAgentClient":
        return cls(await asyncio.to_thread(AgentClient.connect, path, port, timeout))

    async def wait_ready(self, timeout: Optional[float] = None) -> ReadyInfo:
        return await asyncio.to_thread(self.client.wait_ready, timeout)

    async def exec(self, argv: Sequence[str], **kw) -> ExecResult:
        return await asyncio.to_thread(lambda: self.client.exec(argv, **kw))

    async def exec_stream(self, argv: Sequence[str], **kw):
        proc = await asyncio.to_thread(lambda: self.client.exec_stream(argv, **kw))
        while True:
            ev = await asyncio.to_thread(proc.next_event)
            if ev is None:
                return
            yield ev

    async def read(self, path: str, **kw) -> bytes:
        return await asyncio.to_thread(lambda: self.client.fs.read(path, **kw))

    async def write(self, path: str, data, **kw) -> int:
        return await asyncio.to_thread(lambda: self.client.fs.write(path, data, **kw))

    async def stat(self, path: str) -> FileStat:
        return await asyncio.to_thread(self.client.fs.stat, path)

    async def list(self, path: str) -> List[DirEntry]:
        return await asyncio.to_thread(self.client.fs.list, path)

    async def mkdir(self, path: str, **kw) -> None:
        await asyncio.to_thread(lambda: self.client.fs.mkdir(path, **kw))

    async def remove(self, path: str, **kw) -> None:
        await asyncio.to_thread(lambda: self.client.fs.remove(path, **kw))

    async def shutdown(self, timeout: float = 10.0) -> None:
        await asyncio.to_thread(self.client.shutdown, timeout)

    async def close(self) -> None:
        await asyncio.to_thread(self.client.close)
