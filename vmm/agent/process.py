"""A command running in the guest, as its exec session sees it: stdin in (under the
agent's credit), output out (acknowledged as the consumer takes it), signals, resize and
the exit status.

Waiting for output or the exit has no default deadline (how long a program runs or
stays quiet is its own business; pass a timeout to bound it); waiting for the agent to
take stdin has one (session.DEFAULT_WAIT_S without credit). What wait() and
AgentClient.exec() collect is capped by max_output (DEFAULT_MAX_OUTPUT, 64 MiB of
stdout and stderr together): past it the process group is killed and OutputTooLarge
carries the first max_output bytes. Iterate instead to take any amount."""
from __future__ import annotations

import signal as signal_mod
import time
from typing import Iterator, List, Optional, Sequence, Tuple

from . import protocol as P
from .errors import (AgentError, OutputTooLarge, SandboxNotRunning, error_from,
                     reply_fields)
from .protocol import G, T
from .results import ExecResult
from .session import CONNECTION_LOST, FOREVER, Session, deadline_after

KILL_GRACE_S = 5.0  # after a timeout's SIGKILL, how long to wait for EXITED
DEFAULT_MAX_OUTPUT = 64 << 20  # bytes of stdout+stderr that wait() and exec() collect


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
        """Send data to the process's stdin, under the agent's credit.

        timeout bounds the whole write (math.inf: no limit); None raises Timeout once
        the agent has granted no credit for session.DEFAULT_WAIT_S (the process is not
        reading its stdin). Data for a process that already ended is dropped.
        """
        if self._stdin_closed:
            raise ValueError("stdin of this process is already closed")
        self._s.send_data(T.STDIN, bytes(data), deadline_after(timeout))

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
        """The next ("stdout"|"stderr", data), or None once the process has ended.
        deadline is a time.monotonic() value; None waits as long as the program runs."""
        while self.result is None:
            type_, payload = self._s.get(FOREVER if deadline is None else deadline)
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

    def collect(self, deadline: Optional[float], out: List[bytes], err: List[bytes],
                max_output: Optional[int] = DEFAULT_MAX_OUTPUT) -> None:
        """Append the output to out and err until the process ends (Timeout at deadline).

        Past max_output bytes (None: no cap) the process group is killed, the session
        forgotten, and OutputTooLarge raised with the first max_output bytes.
        """
        taken = sum(map(len, out)) + sum(map(len, err))
        while True:
            ev = self.next_event(deadline)
            if ev is None:
                return
            stream, data = ev
            if max_output is not None and taken + len(data) > max_output:
                (out if stream == "stdout" else err).append(data[:max_output - taken])
                self.abandon()
                raise OutputTooLarge(
                    f"{self.argv[0]!r} wrote more than {max_output} bytes of output; killed",
                    limit=max_output, stdout=b"".join(out), stderr=b"".join(err))
            taken += len(data)
            (out if stream == "stdout" else err).append(data)

    def wait(self, timeout: Optional[float] = None,
             max_output: Optional[int] = DEFAULT_MAX_OUTPUT) -> ExecResult:
        """Collect the rest of the output (at most max_output bytes, see collect()) and
        the exit status. Timeout after timeout seconds (None: as long as it runs); the
        process keeps running then, and wait() may be called again."""
        out: List[bytes] = []
        err: List[bytes] = []
        self.collect(deadline_after(timeout), out, err, max_output)
        self.result.stdout = b"".join(out)
        self.result.stderr = b"".join(err)
        return self.result

    def abandon(self) -> None:
        """Kill the process group and forget the session: what the agent still sends
        for it is dropped unread (used after a timeout or an output overrun)."""
        if self.result is None:
            self.kill()
        self._s.release()

    def __enter__(self) -> "Process":
        return self

    def __exit__(self, *exc) -> None:
        if self.result is None and not self._s.ended:
            self.kill()
            deadline = time.monotonic() + KILL_GRACE_S
            try:
                while self.next_event(deadline) is not None:
                    pass  # discarded: nobody wants it after the with block
            except AgentError:
                pass
        self._s.release()
