"""A container's stdio as runc hands it over, joined to the process in the guest.

Without a terminal the container's stdin, stdout and stderr are the fds the caller gave
`create` (pipes or FIFOs from a shim, a terminal from a person): the monitor keeps private
copies of them and points its own 0/1/2 elsewhere, so nothing but the process's output
reaches them. With `process.terminal` the caller passes --console-socket: we make a PTY,
send its master over that Unix socket (SCM_RIGHTS, as runc does) and relay between its
slave and the guest process's own PTY; the slave is raw, so the guest's line discipline is
the only one, and a resize of the master (SIGWINCH, the slave being our controlling
terminal) resizes the guest's PTY.
"""
from __future__ import annotations

import array
import fcntl
import os
import pty
import signal
import socket
import struct
import termios
import threading
import tty as tty_mod
from typing import Optional, Tuple

from ..errors import ConfigError

PRIVATE_FD_BASE = 100   # where the monitor keeps its copies of the container's stdio
CHUNK = 64 << 10


class ContainerStdio:
    def __init__(self, stdin: int, stdout: int, stderr: int, terminal: bool):
        self.stdin, self.stdout, self.stderr = stdin, stdout, stderr
        self.terminal = terminal

    @classmethod
    def take_inherited(cls) -> "ContainerStdio":
        """Private copies of our 0/1/2 (the container's stdio)."""
        fds = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, PRIVATE_FD_BASE) for fd in (0, 1, 2)]
        return cls(*fds, terminal=False)

    @classmethod
    def with_console(cls, console_socket: str) -> "ContainerStdio":
        """A PTY whose master goes to the caller's console socket; we keep the slave."""
        master, slave = pty.openpty()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC) as s:
                s.settimeout(10)
                s.connect(console_socket)
                s.sendmsg([b"/dev/ptmx"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                            array.array("i", [master]).tobytes())])
        except OSError as e:
            os.close(master)
            os.close(slave)
            raise ConfigError(f"cannot send the console to {console_socket}: {e.strerror or e}") from None
        os.close(master)
        tty_mod.setraw(slave)
        os.set_inheritable(slave, False)
        return cls(slave, slave, slave, terminal=True)

    def adopt_terminal(self) -> None:
        """In the monitor, after setsid(): the slave becomes our controlling terminal, so a
        resize of the master reaches us as SIGWINCH."""
        if self.terminal:
            try:
                fcntl.ioctl(self.stdin, termios.TIOCSCTTY, 0)
            except OSError:
                pass

    def size(self) -> Tuple[int, int]:
        if not self.terminal:
            return 24, 80
        try:
            rows, cols, _, _ = struct.unpack("HHHH", fcntl.ioctl(self.stdin, termios.TIOCGWINSZ, b"\0" * 8))
            return (rows or 24), (cols or 80)
        except OSError:
            return 24, 80

    def spawn(self, sandbox, p):
        """Starts the bundle's process in the guest; ExecFailed if it cannot run."""
        rows, cols = self.size()
        if p.console_size and self.terminal:
            rows, cols = p.console_size
        return sandbox.exec_stream(list(p.args), env=p.env_dict, cwd=p.cwd, user=p.user,
                                   tty=self.terminal, rows=rows, cols=cols,
                                   rlimits={r: (soft, hard) for r, soft, hard in p.rlimits} or None,
                                   # runc's: exactly additionalGids (none given: none), so
                                   # the same bundle gets the same Groups line
                                   groups=p.additional_gids, umask=p.umask,
                                   no_new_privileges=p.no_new_privileges,
                                   capabilities=p.capabilities)

    def relay(self, proc) -> int:
        """Copies stdin to the process and its output back until it ends; its exit status."""
        if self.terminal:
            signal.signal(signal.SIGWINCH, lambda *_: threading.Thread(
                target=self._resize, args=(proc,), daemon=True).start())
        threading.Thread(target=self._pump_stdin, args=(proc,), name="vmm-runtime-stdin",
                         daemon=True).start()
        for stream, data in proc:
            _write_all(self.stderr if stream == "stderr" else self.stdout, data)
        return proc.result.exit_code

    def _resize(self, proc) -> None:
        try:
            proc.resize(*self.size())
        except Exception:
            pass  # the process may have ended meanwhile

    def _pump_stdin(self, proc) -> None:
        try:
            while True:
                try:
                    data = os.read(self.stdin, CHUNK)
                except OSError:
                    data = b""   # EIO: the terminal's other side went away
                if not data:
                    if not self.terminal:
                        proc.close_stdin()
                    return
                proc.write(data)
        except Exception:
            return  # the process ended: nobody reads its stdin


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            n = os.write(fd, view)
        except (BrokenPipeError, OSError):
            return  # the reader went away; the process keeps running as runc's would
        view = view[n:]


def detach_own_stdio(log_fd: Optional[int]) -> None:
    """Points our 0/1/2 at /dev/null (stdin) and the runtime log (out, err), so nothing the
    monitor or its children print reaches the container's stdio."""
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(log_fd if log_fd is not None else null, 1)
    os.dup2(log_fd if log_fd is not None else null, 2)
    os.close(null)
