"""One stream connection to the agent: frames out under a write lock, and one reader
thread that demultiplexes frames in to their sessions (session.py).

The connection knows the framing, which messages may answer which request (ANSWERS) and
which end a session; what a session's messages mean is for its opener (process.py,
fs.py, client.py). A frame that does not fit its session (a type the request cannot
get, a second STARTED, data past the window or the session's queue limit) ends that
session with a `bad_frame` AgentError for its opener, and a running process is killed:
a hostile agent cannot make the host queue more than session.QUEUE_LIMIT per session.
A session is forgotten once its final message arrives or its opener releases it (a
timeout does); later frames for it are read and dropped. The wire format lives in
protocol.py and guest/agent/PROTOCOL.md.
"""
from __future__ import annotations

import errno as errno_mod
import itertools
import math
import signal as signal_mod
import socket
import threading
from typing import Dict, Optional

from . import protocol as P
from .errors import SandboxNotRunning, Timeout
from .protocol import G, T
from .results import ReadyInfo
from . import session as session_mod
from .session import Session

READ_BUFFER = 256 * 1024
# Messages that end a session on the agent's side: nothing more follows them.
FINAL = frozenset({T.DONE, T.ERROR, T.EXITED, T.FAILED})
# Messages that count against the window we granted the agent.
WINDOWED = frozenset({T.STDOUT, T.STDERR, T.DATA, T.ENTRIES})
# What the agent may send on a session, by the request that opened it (CREDIT only where
# the host sends data). Anything else ends the session.
_SIMPLE = frozenset({T.DONE, T.ERROR})
ANSWERS = {
    T.EXEC: frozenset({T.STARTED, T.FAILED, T.STDOUT, T.STDERR, T.EXITED, T.ERROR, T.CREDIT}),
    T.FS_READ: frozenset({T.DATA, T.DONE, T.ERROR}),
    T.FS_WRITE: frozenset({T.DONE, T.ERROR, T.CREDIT}),
    T.FS_STAT: frozenset({T.STAT, T.ERROR}),
    T.FS_LIST: frozenset({T.ENTRIES, T.DONE, T.ERROR}),
}
# Exec: STARTED or FAILED comes first and only first; output and EXITED only after it.
_EXEC_FIRST = frozenset({T.STARTED, T.FAILED, T.ERROR, T.CREDIT})
_EXEC_LATER = frozenset({T.STDOUT, T.STDERR, T.EXITED, T.ERROR, T.CREDIT})


class Connection:
    """Thread-safe: sessions may be opened and used from many threads at once."""

    def __init__(self, sock: socket.socket):
        sock.settimeout(None)
        self._sock = sock
        self._rfile = sock.makefile("rb", buffering=READ_BUFFER)
        self._wlock = threading.Lock()
        self._slock = threading.Lock()
        self._sessions: Dict[int, Session] = {}
        self._ids = itertools.count(1)
        self._closed = False
        self.close_reason = "connection closed"
        self._ready_event = threading.Event()
        self.ready: Optional[ReadyInfo] = None
        self._reader = threading.Thread(target=self._read_loop, name="vmm-agent-reader",
                                        daemon=True)
        self._reader.start()

    @property
    def closed(self) -> bool:
        return self._closed

    def wait_ready(self, timeout: Optional[float] = None) -> ReadyInfo:
        """The agent's READY, which it sends first on every connection (None: wait
        DEFAULT_WAIT_S)."""
        if timeout is None:
            timeout = session_mod.DEFAULT_WAIT_S
        if not self._ready_event.wait(None if math.isinf(timeout) else timeout):
            raise Timeout(f"the agent did not report ready within {timeout}s")
        if self.ready is None:
            raise SandboxNotRunning(f"the agent went away before ready ({self.close_reason})")
        return self.ready

    # --- sessions ---
    def open(self, type_: int, payload: bytes) -> Session:
        """Start a session with its first message (EXEC, FS_READ, PING, ...)."""
        with self._slock:
            sid = next(self._ids) & 0xFFFFFFFF
            while sid == 0 or sid in self._sessions:
                sid = next(self._ids) & 0xFFFFFFFF
            s = Session(self, sid, type_)
            self._sessions[sid] = s
        try:
            self.send(sid, type_, payload)
        except BaseException:
            self.release(s)
            raise
        return s

    def release(self, s: Session) -> None:
        with self._slock:
            self._sessions.pop(s.id, None)

    # --- writing ---
    def send(self, sid: int, type_: int, payload: bytes = b"") -> None:
        data = P.frame(sid, type_, payload)
        with self._wlock:
            if self._closed:
                raise SandboxNotRunning(f"agent connection is closed ({self.close_reason})")
            try:
                self._sock.sendall(data)
            except OSError as e:
                raise SandboxNotRunning(f"agent connection lost: {e}") from None

    def send_quiet(self, sid: int, type_: int, payload: bytes = b"") -> None:
        """Send, ignoring a dead connection (credit, signals: the reader reports it)."""
        try:
            self.send(sid, type_, payload)
        except SandboxNotRunning:
            pass

    # --- reading ---
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
            self.close_reason = "the agent closed the connection"
        except (OSError, ValueError) as e:
            self.close_reason = f"read failed: {e}"
        except P.ProtocolError as e:
            self.close_reason = f"protocol error from the agent: {e}"
        finally:
            self._mark_closed()

    def _dispatch(self, sid: int, type_: int, payload: bytes) -> None:
        if sid == 0:
            if type_ == T.READY:
                self.ready = ReadyInfo.from_payload(payload)
                self._ready_event.set()
            return  # connection-level errors: the connection is about to end anyway
        with self._slock:
            s = self._sessions.get(sid)
        if s is None:
            return  # late frame for a session we gave up on (or that ended): dropped
        if not _fits(s, type_):
            self._break(s, f"the agent sent message 0x{type_:x} (unexpected after {s.frames} "
                           f"frames) on a 0x{s.request:x} session")
            return
        if type_ == T.CREDIT:
            try:
                s.add_credit(P.decode(payload).get(G.BYTES, 0))
            except P.ProtocolError:
                self._break(s, "the agent sent a malformed CREDIT")
            return
        s.frames += 1
        if type_ in WINDOWED and not s.received(len(payload)):
            # A guest ignoring flow control could fill host memory: drop the session.
            self._break(s, f"the agent sent session {sid} more than its window")
            return
        if s.overrun(len(payload)):
            self._break(s, f"the agent sent session {sid} more than its queue limit")
            return
        if type_ in FINAL or (s.request == T.FS_STAT and type_ == T.STAT):
            self.release(s)  # nothing more may come: later frames for it are dropped
            s.end()
        s.deliver(type_, payload)

    def _break(self, s: Session, message: str) -> None:
        """End a session whose frames break the protocol: forget it, tell its opener
        (an ERROR of kind bad_frame), and have the agent kill its process."""
        self.release(s)
        s.end()
        s.deliver(T.ERROR, P.encode([(G.ERRNO, errno_mod.EPROTO), (G.KIND, "bad_frame"),
                                     (G.MESSAGE, message)]))
        if s.request == T.EXEC:
            self.send_quiet(s.id, T.SIGNAL, P.encode([(G.SIGNAL, signal_mod.SIGKILL)]))

    def queued_bytes(self) -> int:
        """Bytes received and queued for the open sessions, not yet taken."""
        with self._slock:
            return sum(s.queued_bytes for s in self._sessions.values())

    def _mark_closed(self) -> None:
        with self._wlock:
            self._closed = True
        with self._slock:
            sessions = list(self._sessions.values())
            self._sessions.clear()
        for s in sessions:
            s.lost()
        self._ready_event.set()

    # --- the end ---
    def join(self, timeout: Optional[float] = None) -> None:
        """Wait for the agent to close its end (the reader sees EOF)."""
        self._reader.join(timeout)

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


def _fits(s: Session, type_: int) -> bool:
    """May the agent send type_ now on session s (given what it sent before)?"""
    if type_ not in ANSWERS.get(s.request, _SIMPLE):
        return False
    if s.request == T.EXEC:
        return type_ in (_EXEC_FIRST if s.frames == 0 else _EXEC_LATER)
    return True
