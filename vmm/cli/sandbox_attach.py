"""Running one command in a sandbox with this terminal attached: what `msb exec` and a
non-detached `msb run` do once they hold an agent connection (manager.ExecTarget).

- Without a TTY: stdin is copied to the process, its stdout and stderr come back
  separately, Ctrl-C (SIGINT) is forwarded to the guest process, and its exit status
  becomes ours (127 not found, 126 not executable, 128+N for a signal).
- With a TTY (stdin is a terminal, or -t): the guest process gets a PTY, the local
  terminal goes raw (Ctrl-C is then a byte the guest's terminal turns into SIGINT), and
  SIGWINCH resizes the guest's PTY.
- SIGTERM or SIGHUP to us: we return at once and the connection closes, which makes the
  agent kill the guest process group. SIGKILL closes it too: the kernel does that.

Output is also appended to the sandbox log (vmm/sandbox/logs.py) under one exec id.
"""
from __future__ import annotations

import math
import os
import signal
import sys
import threading
import time
from typing import Dict, List, Optional

from .boundary import print_error

EXIT_TIMEOUT = 124   # as timeout(1): the command ran out of time and was killed


class _Hangup(Exception):
    def __init__(self, signo: int):
        self.signo = signo


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            n = os.write(fd, view)
        except BrokenPipeError:
            return   # our reader went away; the command's exit still decides
        view = view[n:]


def _pump_stdin(proc, tty: bool) -> None:
    """stdin -> the guest process, until EOF (then its stdin is closed)."""
    try:
        while True:
            try:
                data = os.read(0, 65536)
            except OSError:
                data = b""
            if not data or proc.ended:
                break
            proc.write(data, timeout=math.inf)  # at the command's pace, however slow
    except Exception:
        pass   # the process ended or the connection went: the output loop reports it
    finally:
        if not tty:
            try:
                proc.close_stdin()
            except Exception:
                pass


def _terminal_size():
    for fd in (0, 1, 2):
        try:
            s = os.get_terminal_size(fd)
            return s.lines, s.columns
        except OSError:
            continue
    return 24, 80


def run_attached(target, argv: List[str], *, env: Optional[Dict[str, str]] = None,
                 cwd: Optional[str] = None, user: Optional[str] = None, tty: bool = False,
                 timeout: Optional[float] = None) -> int:
    """Run argv in the sandbox target connects to; returns the exit status for msb."""
    from ..agent import ExecFailed, Timeout
    from ..sandbox.logs import LogWriter
    log = LogWriter(target.log_dir)
    exec_id = os.urandom(6).hex()   # 12 hex digits, as the log's exec ids are
    local_tty = tty and os.isatty(0)
    rows, cols = _terminal_size() if tty else (24, 80)
    try:
        proc = target.client.exec_stream(argv, env=env, cwd=cwd, user=user, tty=tty,
                                         rows=rows, cols=cols)
    except ExecFailed as e:
        print_error(str(e))
        log.write("system", f"exec {argv[0]!r} failed: {e}\n".encode(), exec_id)
        log.close()
        return e.exit_code

    def on_signal(signo, _frame):
        if signo == signal.SIGINT and not local_tty:
            # The guest decides what Ctrl-C means. Sent from a thread: the handler may
            # have interrupted this thread inside the connection's own locks.
            threading.Thread(target=proc.signal, args=(signal.SIGINT,), daemon=True).start()
            return
        raise _Hangup(signo)

    saved = {}
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        saved[sig] = signal.signal(sig, on_signal)
    if tty:
        saved[signal.SIGWINCH] = signal.signal(signal.SIGWINCH, lambda *_: threading.Thread(
            target=proc.resize, args=_terminal_size(), daemon=True).start())
    restore_term = None
    if local_tty:
        import termios
        import tty as tty_mod
        old = termios.tcgetattr(0)
        tty_mod.setraw(0)
        restore_term = lambda: termios.tcsetattr(0, termios.TCSADRAIN, old)  # noqa: E731
    threading.Thread(target=_pump_stdin, args=(proc, tty), name="msb-stdin", daemon=True).start()
    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        while True:
            ev = proc.next_event(deadline)
            if ev is None:
                break
            stream, data = ev
            _write_all(1 if stream == "stdout" else 2, data)
            log.write(stream, data, exec_id)
        return proc.result.exit_code
    except Timeout:
        proc.kill()
        if restore_term:
            restore_term()
            restore_term = None
        print_error(f"{argv[0]!r} did not finish within {timeout:g}s; killed")
        return EXIT_TIMEOUT
    except _Hangup as h:
        return 128 + h.signo   # closing the connection (our caller) ends the guest process
    finally:
        if restore_term:
            restore_term()
        for sig, handler in saved.items():
            signal.signal(sig, handler)
        log.close()
        sys.stdout.flush()
