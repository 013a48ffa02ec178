"""A command running in the guest, as its exec session sees it: stdin in (under the
agent's credit), output out (acknowledged as the consumer takes it), signals, resize and
the exit status."""
from __future__ import annotations

import signal as signal_mod
import time
from typing import Iterator, Optional, Sequence, Tuple

from . import protocol as P
from .errors import AgentError, SandboxNotRunning, error_from, reply_fields
from .protocol import G, T
from .results import ExecResult
from .session import CONNECTION_LOST, Session

KILL_GRACE_S = 5.0  # after a timeout's SIGKILL, how long to wait for EXITED


class Process:
    """A running command: write stdin, iterate output, signal, resize, wait.

    Iterating yields ("stdout" | "stderr", bytes) as output arrives and stops when the
    process has ended; then `result` holds its ExecResult (without the output, which the
    iteration handed out). With a tty, all output arrives as "stdout".
    """

    def __init__(self, session: Session, argv: Sequence[str], pid: int):
        self._s = session
        self.argv = list(argv)
        self.pid = pid
        self.result: Optional[ExecResult] = None
        self._stdin_closed = False

    @property
    def ended(self) -> bool:
        """The agent has ended this session (the process exited, or the connection or
        the flow control broke): its last message is queued, stdin has no reader."""
        return self._s.ended

    # stdin
    def write(self, data: bytes, timeout: Optional[float] = None) -> None:
        if self._stdin_closed:
            raise ValueError("stdin of this process is already closed")
        deadline = None if timeout is None else time.monotonic() + timeout
        self._s.send_data(T.STDIN, bytes(data), deadline)  # False: it ended, nothing reads the rest

    def close_stdin(self) -> None:
        if not self._stdin_closed:
            self._stdin_closed = True
            if not self._s.ended:
                self._s.notify(T.STDIN, b"")

    # control
    def signal(self, signo: int = signal_mod.SIGTERM, group: bool = True) -> None:
        if not self._s.ended:
            self._s.notify(T.SIGNAL, P.encode([(G.SIGNAL, int(signo)), (G.GROUP, group)]))

    def kill(self) -> None:
        self.signal(signal_mod.SIGKILL)

    def resize(self, rows: int, cols: int) -> None:
        if not self._s.ended:
            self._s.notify(T.RESIZE, P.encode([(G.ROWS, rows), (G.COLS, cols)]))

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
        self._s.release()
        if type_ == T.EXITED:
            f = reply_fields(payload)
            code = f.get(G.CODE)
            sig = f.get(G.SIGNAL)
            self.result = ExecResult(code=None if sig is not None else code, signal=sig,
                                     pid=self.pid)
            return
        if type_ == CONNECTION_LOST:
            raise SandboxNotRunning(f"connection to the agent lost while running {self.argv[0]!r}")
        if type_ == T.ERROR:
            raise error_from(payload)
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
