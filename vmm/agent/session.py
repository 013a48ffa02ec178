"""One session of the agent protocol: a request and everything that answers it, with the
protocol's credit windows in both directions.

Inbound, the agent sends a session at most WINDOW bytes of output the client has not yet
acknowledged; the client acknowledges (CREDIT) only what its consumer has taken, so a
slow consumer slows the guest process instead of filling host memory. Outbound, stdin
and file data wait for the agent's CREDIT: send_data() is the one path for both.

The connection (connection.py) creates sessions, feeds them frames from its reader thread
(deliver, add_credit, end, lost, received) and carries what they send; a session knows
nothing else about it.
"""
from __future__ import annotations

import queue
import threading
import time
from typing import BinaryIO, Iterator, Optional, Protocol, Tuple, Union

from . import protocol as P
from .errors import Timeout
from .protocol import G, T

# The message type a session receives (with an empty payload) when the connection ends;
# never a real type on the wire, where types are unsigned.
CONNECTION_LOST = -1


def chunks(data: Union[bytes, BinaryIO]) -> Iterator[bytes]:
    """bytes as one piece, or a binary file's contents CHUNK bytes at a time."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        yield bytes(data)
        return
    while True:
        chunk = data.read(P.CHUNK)
        if not chunk:
            return
        yield chunk


class Carrier(Protocol):
    """What a session needs of its connection (connection.Connection is one): the session
    layer sits below the connection and does not import it."""

    def send(self, sid: int, type_: int, payload: bytes) -> None: ...

    def send_quiet(self, sid: int, type_: int, payload: bytes) -> None: ...

    def release(self, session: "Session") -> None: ...


class Session:
    """One session's inbound queue and its outbound credit (bytes we may still send)."""

    def __init__(self, conn: Carrier, sid: int):
        self._conn = conn
        self.id = sid
        self._events: "queue.SimpleQueue[Tuple[int, bytes]]" = queue.SimpleQueue()
        self._cond = threading.Condition()
        self._credit = P.WINDOW
        self._ended = False  # the agent closed it (DONE/ERROR/EXITED/FAILED) or conn died
        self._unacked = 0    # output taken by our consumer, not yet acknowledged
        self._inbound = 0    # output received and not yet acknowledged (<= WINDOW)

    @property
    def ended(self) -> bool:
        """The agent ended the session (DONE, ERROR, EXITED, FAILED), the client dropped
        it for overrunning its window, or the connection died: nothing more will come
        but what is already queued."""
        return self._ended

    # --- fed by the connection's reader thread ---
    def deliver(self, type_: int, payload: bytes) -> None:
        self._events.put((type_, payload))

    def add_credit(self, n: int) -> None:
        with self._cond:
            self._credit += n
            self._cond.notify_all()

    def end(self) -> None:
        with self._cond:
            self._ended = True
            self._cond.notify_all()

    def lost(self) -> None:
        """The connection ended: wake every waiter, sender and receiver alike."""
        self.end()
        self.deliver(CONNECTION_LOST, b"")

    def received(self, n: int) -> bool:
        """Count output from the agent; False if it overran the window we granted."""
        with self._cond:
            self._inbound += n
            return self._inbound <= P.WINDOW

    # --- used by whoever opened the session ---
    def get(self, deadline: Optional[float]) -> Tuple[int, bytes]:
        """The next (type, payload); type CONNECTION_LOST once the connection is gone."""
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            return self._events.get(timeout=left)
        except queue.Empty:
            raise Timeout(f"session {self.id}: no answer from the agent in time") from None

    def consumed(self, n: int) -> None:
        """Acknowledge output our consumer took; in quarter windows to keep frames few."""
        self._unacked += n
        if self._unacked >= P.WINDOW // 4:
            n, self._unacked = self._unacked, 0
            with self._cond:
                self._inbound -= n
            self.notify(T.CREDIT, P.encode([(G.BYTES, n)]))

    def send(self, type_: int, payload: bytes = b"") -> None:
        """One frame on this session; raises SandboxNotRunning if the connection is gone."""
        self._conn.send(self.id, type_, payload)

    def notify(self, type_: int, payload: bytes = b"") -> None:
        """One frame whose loss does not matter (credit, signals, EOF): a dead connection
        is reported to the receiver by CONNECTION_LOST, not here."""
        self._conn.send_quiet(self.id, type_, payload)

    def send_data(self, type_: int, data: bytes, deadline: Optional[float]) -> bool:
        """Send data as type_ frames of at most CHUNK bytes, each within the agent's credit.

        Blocks while the agent's window is full (Timeout after deadline). Returns False
        if the agent ended the session first: the rest has no reader, and the session's
        final message (an ERROR, or EXITED) is already queued for get().
        """
        view = memoryview(data)
        while view:
            n = self._take_credit(min(len(view), P.CHUNK), deadline)
            if n == 0:
                return False
            self.send(type_, view[:n].tobytes())
            view = view[n:]
        return not self._ended

    def _take_credit(self, want: int, deadline: Optional[float]) -> int:
        """Block until some credit is available; returns how much of want we may send
        (0: the session ended)."""
        with self._cond:
            while self._credit <= 0 and not self._ended:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise Timeout(f"session {self.id}: the agent took no more data in time")
                self._cond.wait(left)
            if self._ended:
                return 0
            n = min(want, self._credit)
            self._credit -= n
            return n

    def release(self) -> None:
        """We are done with it: later frames for this session are dropped."""
        self._conn.release(self)
