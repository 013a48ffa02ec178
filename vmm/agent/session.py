"""One session of the agent protocol: a request and everything that answers it, with the
protocol's credit windows in both directions.

Inbound, the agent sends a session at most WINDOW bytes of output the client has not yet
acknowledged; the client acknowledges (CREDIT) only what its consumer has taken, so a
slow consumer slows the guest process instead of filling host memory. Outbound, stdin
and file data wait for the agent's CREDIT: send_data() is the one path for both.

Memory: a session's inbound queue is bounded in bytes (QUEUE_LIMIT, every frame type
counted with its header): the windowed data the agent may send unacknowledged plus one
opening and one final message of the maximum size. A frame that would pass the bound is a
protocol error (overrun() is False; the connection ends the session). So a hostile agent
costs at most QUEUE_LIMIT per open session, and nothing for a released one.

Time: every wait has a deadline. A deadline of None means DEFAULT_WAIT_S from the start
of that wait (so a slow but live agent that keeps answering is never cut off, a silent
one is within a minute); FOREVER means none, for waits whose length is the guest
program's own business (its output, its exit).

The connection (connection.py) creates sessions, feeds them frames from its reader thread
(deliver, add_credit, end, lost, received) and carries what they send; a session knows
nothing else about it.
"""
from __future__ import annotations

import math
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

# A wait without a caller's deadline gives up after this long without progress.
DEFAULT_WAIT_S = 60.0
# A deadline that never passes (math.inf also works as a timeout in seconds).
FOREVER = math.inf
# Bytes one session may hold queued: a full window of data plus an opening (STARTED) and
# a final (EXITED, DONE, ...) message of the maximum size, each with its header.
QUEUE_LIMIT = P.WINDOW + 2 * (P.MAX_PAYLOAD + P.HDR_LEN)


def deadline_after(timeout: Optional[float]) -> Optional[float]:
    """A deadline timeout seconds from now; None stays None (the default wait), an
    infinite timeout is FOREVER."""
    if timeout is None:
        return None
    return FOREVER if math.isinf(timeout) else time.monotonic() + timeout


def _left(deadline: Optional[float]) -> Optional[float]:
    """Seconds to wait for deadline: None means DEFAULT_WAIT_S, FOREVER means no limit
    (None for the queue and condition calls)."""
    if deadline is None:
        return DEFAULT_WAIT_S
    if math.isinf(deadline):
        return None
    return max(0.0, deadline - time.monotonic())


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

    def __init__(self, conn: Carrier, sid: int, request: int = 0):
        self._conn = conn
        self.id = sid
        self.request = request  # the message type that opened it (T.EXEC, T.FS_READ, ...)
        self.frames = 0         # frames received so far (the connection checks their order)
        self._queued = 0        # bytes in _events (payloads and headers)
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
        with self._cond:
            self._queued += len(payload) + P.HDR_LEN
        self._events.put((type_, payload))

    def overrun(self, n: int) -> bool:
        """Would a frame of n payload bytes take the queue past QUEUE_LIMIT?"""
        with self._cond:
            return self._queued + n + P.HDR_LEN > QUEUE_LIMIT

    @property
    def queued_bytes(self) -> int:
        """Bytes received for this session and not yet taken by get()."""
        return self._queued

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
        """The next (type, payload); type CONNECTION_LOST once the connection is gone.
        deadline: time.monotonic() value, None (DEFAULT_WAIT_S from now) or FOREVER."""
        left = _left(deadline)
        try:
            type_, payload = self._events.get(timeout=left)
        except queue.Empty:
            raise Timeout(f"session {self.id}: no answer from the agent in "
                          f"{'time' if deadline is not None else f'{DEFAULT_WAIT_S:g}s'}"
                          ) from None
        with self._cond:
            self._queued -= len(payload) + P.HDR_LEN
        return type_, payload

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

        Blocks while the agent's window is full (Timeout after deadline; with None, after
        DEFAULT_WAIT_S without any credit from the agent). Returns False
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
            # None: DEFAULT_WAIT_S for this wait (it restarts whenever credit comes).
            until = time.monotonic() + DEFAULT_WAIT_S if deadline is None else deadline
            while self._credit <= 0 and not self._ended:
                left = _left(until)
                if left is not None and left <= 0:
                    raise Timeout(f"session {self.id}: the agent took no more data in "
                                  f"{'time' if deadline is not None else f'{DEFAULT_WAIT_S:g}s'}")
                self._cond.wait(left)
            if self._ended:
                return 0
            n = min(want, self._credit)
            self._credit -= n
            return n

    def release(self) -> None:
        """We are done with it: later frames for this session are dropped, and a sender
        still waiting for credit gives up."""
        self._conn.release(self)
        self.end()
