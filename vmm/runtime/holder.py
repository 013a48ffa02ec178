"""The process that outlives a runtime command: `create`'s monitor and `exec --detach`'s
exec monitor. runc leaves its container's init behind the same way; the caller (a shim,
a subreaper) waits for its pid and takes its exit status as the container's.

fork_holder() forks it. In the child: a session of its own (a PTY slave from
--console-socket becomes its terminal), the job-control signals ignored, its own 0/1/2
pointed at the log so nothing but the process's output reaches the container's stdio;
then start() runs and either raises (the reason goes back to the parent) or returns
run(), whose result becomes the child's exit status. The parent returns the child's pid
once start() succeeded, or reaps the child and raises RuntimeFailure with its reason.
"""
from __future__ import annotations

import os
import select
import signal
import sys
import time
from typing import Callable

from .errors import RuntimeFailure

REASON_MAX = 8192
JOB_SIGNALS = (signal.SIGHUP, signal.SIGINT, signal.SIGQUIT, signal.SIGTSTP, signal.SIGTTIN,
               signal.SIGTTOU)


def fork_holder(stdio, log, start: Callable[[], Callable[[], int]], timeout: float,
                what: str) -> int:
    from .stdio import detach_own_stdio
    r, w = os.pipe2(os.O_CLOEXEC)
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.close(r)
            os.setsid()
            stdio.adopt_terminal()
            for sig in JOB_SIGNALS:
                signal.signal(sig, signal.SIG_IGN)
            detach_own_stdio(log.fd)
            try:
                run = start()
            except BaseException as e:
                reason = str(e) or type(e).__name__
                os.write(w, b"error " + reason.encode(errors="replace")[:REASON_MAX])
                os._exit(1)
            os.write(w, b"ok")
            os.close(w)
            code = run()
        finally:
            os._exit(code)
    os.close(w)
    for fd in {stdio.stdin, stdio.stdout, stdio.stderr}:
        os.close(fd)
    reply = _read_all(r, timeout)
    if reply == b"ok":
        return pid
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    os.waitpid(pid, 0)
    if reply.startswith(b"error "):
        raise RuntimeFailure(reply[6:].decode(errors="replace"))
    if reply == b"timeout":
        raise RuntimeFailure(f"{what} did not finish within {timeout:g}s")
    raise RuntimeFailure(f"{what}: the process ended before it was done")


def _read_all(fd: int, timeout: float) -> bytes:
    deadline = time.monotonic() + timeout
    out = b""
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                return b"timeout"
            chunk = os.read(fd, REASON_MAX)
            if not chunk:
                return out
            out += chunk
    finally:
        os.close(fd)


def write_pid_file(path: str, pid: int) -> None:
    """As runc: the file appears whole (written beside it, then renamed)."""
    path = os.path.abspath(path)
    tmp = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(str(pid))
    os.replace(tmp, path)
