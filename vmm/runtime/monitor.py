"""The monitor: the one host process a container is, from `create` to its exit.

`vmm-runtime create` forks it and returns once it reports the VM booted (or failed). The
monitor then owns everything the container holds: the sandbox (VM, virtiofsd, back ends,
which die with it: they are its children with a parent-death signal), the container's
stdio (the fds the caller gave `create`, or a PTY whose master went to --console-socket),
and a control socket in the container's state directory over which `start`, `kill` and
`ps` reach it. Its pid is the container's pid in `state`, and it exits with the
process's exit status (128+N for a signal), so a shim that waits for that pid, as
containerd's runc shim does, sees the container's exit.

The monitor writes nothing to the container's stdio but the process's own output: its
diagnostics go to the runtime's log (--log) and the guest console to a file in the state
directory.
"""
from __future__ import annotations

import json
import os
import socket
import threading
from typing import Optional

from .bundle import Bundle
from .log import RuntimeLog
from ..sandbox.state import process_start_time
from .state import CREATED, PAUSED, RUNNING, STOPPED, StateStore
from .stdio import ContainerStdio
from .unix_path import short_unix_path

CONTROL_MAX_LINE = 4096
CONTROL_TIMEOUT_S = 10.0
START_FAILED = 255       # the container's status when its process could not be started


class Monitor:
    def __init__(self, store: StateStore, cid: str, bundle: Bundle, stdio: ContainerStdio,
                 log: RuntimeLog, boot: "callable"):
        self.store, self.cid, self.bundle, self.stdio, self.log = store, cid, bundle, stdio, log
        self._boot = boot                 # () -> Sandbox; the caller decides how to make it
        self.sandbox = None
        self.proc = None
        self._start = threading.Event()
        self._end_signal: Optional[int] = None  # killed before start
        self._end_code: Optional[int] = None    # the process could not be started
        self._paused = False
        self._lock = threading.Lock()

    # --- phases ----------------------------------------------------------------------------
    def create(self) -> None:
        """Boots the VM and opens the control socket; raises what went wrong."""
        self.sandbox = self._boot()
        self._listen()
        self.store.update(self.cid, status=CREATED, pid=os.getpid(),
                          pid_start=process_start_time(os.getpid()),
                          agent_socket=self.sandbox.socket_path,
                          pod_dir=getattr(self.sandbox, "pod_dir", None))

    def run(self) -> int:
        """After create(): waits for start (or a kill), runs the process, returns the status."""
        self._start.wait()
        if self._end_code is not None:
            return self._finish(self._end_code)
        if self._end_signal is not None:
            return self._finish(128 + self._end_signal)
        try:
            code = self.stdio.relay(self.proc)
        except Exception as e:  # the connection to the guest broke: the container ended
            self.log.error(f"container {self.cid}: {e}")
            code = 255
        return self._finish(code)

    def _finish(self, code: int) -> int:
        self.store.update(self.cid, status=STOPPED, exit_code=code)
        try:
            if self.sandbox is not None:
                self.sandbox.stop()
        finally:
            try:
                os.unlink(self.store.socket_path(self.cid))
            except OSError:
                pass
        return code

    # --- control socket --------------------------------------------------------------------
    def _listen(self) -> None:
        path = self.store.socket_path(self.cid)
        srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        with short_unix_path(path) as p:
            srv.bind(p)
        os.chmod(path, 0o600)
        srv.listen(8)
        threading.Thread(target=self._serve, args=(srv,), name="vmm-runtime-control",
                         daemon=True).start()

    def _serve(self, srv: socket.socket) -> None:
        while True:
            conn, _ = srv.accept()
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(CONTROL_TIMEOUT_S)
            try:
                line = conn.makefile("rb").readline(CONTROL_MAX_LINE)
                req = json.loads(line)
                reply = self._handle(req)
            except (OSError, ValueError, TypeError, KeyError) as e:
                reply = {"error": f"bad control request: {e}"}
            except Exception as e:  # anything the guest side raised: report, keep serving
                reply = {"error": str(e)}
            try:
                conn.sendall(json.dumps(reply).encode() + b"\n")
            except OSError:
                pass

    def _handle(self, req: dict) -> dict:
        op = req.get("op")
        with self._lock:
            if op == "start":
                return self._do_start()
            if op == "kill":
                return self._do_kill(int(req["signal"]))
            if op == "ps":
                return {"pids": [os.getpid()]}
            if op in ("pause", "resume"):
                return self._do_pause(op == "pause")
        return {"error": f"unknown control request {op!r}"}

    def _do_start(self) -> dict:
        if self.proc is not None:
            return {"error": "cannot start an already running container"}
        if self._end_signal is not None:
            return {"error": "cannot start a container that has stopped"}
        p = self.bundle.process
        try:
            self.proc = self.stdio.spawn(self.sandbox, p)   # raises ExecFailed with the reason
        except BaseException:
            # As runc's init, which exits when its exec fails: the container is stopped and
            # its VM goes, rather than waiting for a start that can never succeed.
            self._end_code = START_FAILED
            self._start.set()
            raise
        # guest_pid: where `exec` into a pod's container joins its mount namespace
        self.store.update(self.cid, status=RUNNING, guest_pid=getattr(self.proc, "pid", None))
        self._start.set()
        return {"ok": True}

    def _do_pause(self, pause: bool) -> dict:
        """Freezes or thaws the whole VM (runc freezes the container's cgroup)."""
        if self.proc is None or self.proc.ended:
            return {"error": "container not running"}
        if pause == self._paused:
            return {"error": "container not running or created: paused" if pause
                    else "container not paused"}
        (self.sandbox.pause if pause else self.sandbox.resume)()
        self._paused = pause
        self.store.update(self.cid, status=PAUSED if pause else RUNNING)
        return {"ok": True}

    def _do_kill(self, signo: int) -> dict:
        if self.proc is not None:
            if self.proc.ended:
                return {"error": "container not running"}
            if self._paused:   # the guest's agent delivers signals: it must run to do so
                self._do_pause(False)
            self.proc.signal(signo)
            return {"ok": True}
        # Not started: as runc kills the waiting init, the container ends with the signal.
        self._end_signal = signo
        self._start.set()
        return {"ok": True}


def request(store: StateStore, cid: str, req: dict, timeout: float = CONTROL_TIMEOUT_S) -> dict:
    """Sends one control request to a container's monitor and returns its reply."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC) as s:
        s.settimeout(timeout)
        with short_unix_path(store.socket_path(cid)) as p:
            s.connect(p)
        s.sendall(json.dumps(req).encode() + b"\n")
        line = s.makefile("rb").readline(CONTROL_MAX_LINE)
    if not line:
        raise ConnectionError("the container's monitor closed the connection")
    reply = json.loads(line)
    if not isinstance(reply, dict):
        raise ValueError("the container's monitor sent a reply that is not an object")
    return reply
