"""The supervisor's control socket: one JSON object per line each way, on a Unix socket in
the sandbox's runtime directory.

    {"op": "status"}               -> {"ok": true, "status": "running", "pid": ..., ...}
    {"op": "metrics"}              -> {"ok": true, "metrics": {...}}
    {"op": "stop", "timeout": 10}  -> {"ok": true}; the supervisor then stops the VM and
                                      exits (the caller waits for the pid to go)
    {"op": "exec"}                 -> {"ok": true}; an exec session is open for as long as
                                      this connection is: how the supervisor knows the
                                      sandbox is in use (--idle-timeout)

Errors are {"ok": false, "error": "..."}. Why a held connection marks activity rather
than pings: the kernel closes it whenever the `msb exec` process ends, however it ends
(Ctrl-C, SIGKILL, a lost terminal), so the count of open sessions cannot leak, and
nothing has to run on a timer in the client.
"""
from __future__ import annotations

import json
import os
import socket
import threading
from typing import Callable, Optional

from ..errors import VmmError

MAX_LINE = 1 << 16
# On the supervisor's ready pipe (not the socket): another supervisor holds the sandbox.
BUSY = "busy"


class ControlError(VmmError):
    """The supervisor did not answer, or refused."""


def _read_line(sock: socket.socket) -> Optional[bytes]:
    buf = bytearray()
    while not buf.endswith(b"\n"):
        chunk = sock.recv(4096)
        if not chunk:
            return bytes(buf) if buf else None
        buf += chunk
        if len(buf) > MAX_LINE:
            raise ControlError("control message too long")
    return bytes(buf)


class ControlClient:
    """One connection to a supervisor."""

    def __init__(self, path: str, timeout: float = 10.0):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        self.sock.settimeout(timeout)
        try:
            self.sock.connect(path)
        except OSError as e:
            self.sock.close()
            raise ControlError(f"cannot reach the sandbox's supervisor at {path}: "
                               f"{e.strerror or e}") from None

    def request(self, op: str, **args) -> dict:
        try:
            self.sock.sendall(json.dumps({"op": op, **args}).encode() + b"\n")
            line = _read_line(self.sock)
        except (OSError, socket.timeout) as e:
            raise ControlError(f"the supervisor did not answer {op!r}: {e}") from None
        if line is None:
            raise ControlError(f"the supervisor closed the connection during {op!r}")
        reply = json.loads(line)
        if not reply.get("ok"):
            raise ControlError(reply.get("error") or f"{op} failed")
        return reply

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> "ControlClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def request(path: str, op: str, wait: float = 10.0, **args) -> dict:
    """One request on a fresh connection; wait bounds the connect and the answer."""
    with ControlClient(path, wait) as c:
        return c.request(op, **args)


class ControlServer:
    """Serves handler(op, args, conn_closed) -> dict on a Unix socket, a thread per
    connection. For "exec", handler is told when the connection closes (on_exec_end)."""

    def __init__(self, path: str, handler: Callable[[str, dict], dict],
                 on_exec_start: Callable[[], None], on_exec_end: Callable[[], None]):
        self.path = path
        self._handler = handler
        self._exec_start, self._exec_end = on_exec_start, on_exec_end
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        if os.path.exists(path):
            os.unlink(path)   # a stale socket of a crashed run
        self._sock.bind(path)
        os.chmod(path, 0o600)
        self._sock.listen(64)
        self._thread = threading.Thread(target=self._accept, name="msb-control", daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return   # closed
            threading.Thread(target=self._serve, args=(conn,), name="msb-control-conn",
                             daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            try:
                while True:
                    line = _read_line(conn)
                    if line is None:
                        return
                    msg = json.loads(line)
                    op = msg.pop("op", "")
                    if op == "exec":
                        self._hold_exec(conn)
                        return
                    try:
                        reply = {"ok": True, **self._handler(op, msg)}
                    except Exception as e:   # one bad request must not end the server
                        reply = {"ok": False, "error": str(e) or type(e).__name__}
                    conn.sendall(json.dumps(reply).encode() + b"\n")
            except (OSError, ValueError, ControlError):
                return

    def _hold_exec(self, conn: socket.socket) -> None:
        self._exec_start()
        try:
            conn.sendall(b'{"ok": true}\n')
            while conn.recv(4096):
                pass   # nothing more is expected; EOF (or an error) ends the session
        except OSError:
            pass
        finally:
            self._exec_end()

    def close(self) -> None:
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._sock.close()
        try:
            os.unlink(self.path)
        except OSError:
            pass
