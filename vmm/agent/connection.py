"""One stream connection to the agent: frames out under a write lock, and one reader
thread that demultiplexes frames in to their sessions (session.py).

The connection knows the framing and which messages end a session; what a session's
messages mean is for its opener (process.py, fs.py, client.py). The wire format lives in
protocol.py and guest/agent/PROTOCOL.md.
"""
from __future__ import annotations

import errno as errno_mod
import itertools
import signal as signal_mod
import socket
import threading
from typing import Dict, Optional

from . import protocol as P
from .errors import SandboxNotRunning, Timeout
from .protocol import G, T
from .results import ReadyInfo
from .session import Session

READ_BUFFER = 256 * 1024
# Messages that end a session on the agent's side: nothing more follows them.
FINAL = frozenset({T.DONE, T.ERROR, T.EXITED, T.FAILED})
# Messages that count against the window we granted the agent.
WINDOWED = frozenset({T.STDOUT, T.STDERR, T.DATA, T.ENTRIES})


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
        """The agent's READY, which it sends first on every connection."""
        if not self._ready_event.wait(timeout):
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
            s = Session(self, sid)
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
            return  # late frame for a session we gave up on
        if type_ == T.CREDIT:
            try:
                s.add_credit(P.decode(payload).get(G.BYTES, 0))
            except P.ProtocolError:
                pass
            return
        if type_ in WINDOWED and not s.received(len(payload)):
            # A guest ignoring flow control could fill host memory: drop the session.
            self.release(s)
            s.end()
            s.deliver(T.ERROR, P.encode([
                (G.ERRNO, errno_mod.EPROTO), (G.KIND, "bad_frame"),
                (G.MESSAGE, f"the agent sent session {sid} more than its window")]))
            self.send_quiet(sid, T.SIGNAL, P.encode([(G.SIGNAL, signal_mod.SIGKILL)]))
            return
        if type_ in FINAL:
            s.end()
        s.deliver(type_, payload)

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
