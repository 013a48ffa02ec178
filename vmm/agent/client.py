"""Host side of the guest agent protocol: one connection, many sessions.

    client = AgentClient.connect("/run/x/vsock.sock", port=1024)   # or connect_unix(path)
    client.wait_ready(10)
    r = client.exec(["sh", "-c", "echo hi"], timeout=5)           # ExecResult
    with client.exec_stream(["cat"]) as p:                         # streaming
        p.write(b"data"); p.close_stdin()
        for stream, data in p: ...
    client.fs.write("/tmp/f", b"..."); client.fs.read("/tmp/f")
    client.shutdown()

The pieces below it: connection.py reads and writes frames and demultiplexes them into
sessions (session.py, which also holds the credit windows); process.py is a running
command, fs.py the file operations. The wire format lives in protocol.py and
guest/agent/PROTOCOL.md.
"""
from __future__ import annotations

import math
import os
import socket
import threading
import time
from typing import TYPE_CHECKING, Dict, List, Optional, Sequence, Tuple, Union, BinaryIO

from . import protocol as P
from .connection import Connection
from .capabilities import Capabilities
from .privileges import ExecPrivileges
from .errors import AgentError, ExecFailed, SandboxNotRunning, Timeout, error_from, reply_fields
from .fs import Fs
from .handshake import vsock_handshake
from .process import DEFAULT_MAX_OUTPUT, KILL_GRACE_S, Process
from .protocol import G, T
from .results import ExecResult, ReadyInfo
from .session import CONNECTION_LOST, chunks, deadline_after

if TYPE_CHECKING:
    from .container_root import ContainerRoot

DEFAULT_VSOCK_PORT = 1024
MAX_PID = 4194304   # PID_MAX_LIMIT: the agent refuses a larger JOIN


def exec_request(argv, env, cwd, user, tty, rows, cols, rlimits, privs=None, root=None,
                 join_pid=None) -> bytes:
    """The EXEC request; over MAX_PAYLOAD is the caller's ValueError, not the agent's.
    privs: an ExecPrivileges (groups, umask, no_new_privileges, capabilities) or None.
    root: a container_root.ContainerRoot or None; join_pid: a guest pid or None."""
    if isinstance(argv, (str, bytes)) or not argv:
        raise ValueError(f"argv must be a non-empty list of strings, not {argv!r}")
    fields = [(G.ARGV, a) for a in argv]
    fields += [(G.ENV, f"{k}={v}") for k, v in (env or {}).items()]
    if cwd is not None:
        fields.append((G.CWD, cwd))
    if user is not None:
        fields.append((G.USER, str(user)))
    if tty:
        fields += [(G.TTY, 1), (G.ROWS, rows), (G.COLS, cols)]
    fields += _rlimit_fields(rlimits)
    if privs is not None:
        fields += privs.fields()
    fields += _root_fields(root, join_pid)
    payload = P.encode(fields)
    if len(payload) > P.MAX_PAYLOAD:
        raise ValueError(f"exec request of {len(payload)} bytes is over the {P.MAX_PAYLOAD} limit")
    return payload


def _root_fields(root, join_pid) -> List[Tuple[int, object]]:
    """ROOT, MOUNT*, ROOT_READONLY or JOIN; nothing for None, None (today's bytes)."""
    if root is not None and join_pid is not None:
        raise ValueError("root and join_pid exclude each other: a joined process has "
                         "its root from the process it joins")
    if join_pid is not None:
        if isinstance(join_pid, bool) or not isinstance(join_pid, int) or \
                not 1 < join_pid <= MAX_PID:
            raise ValueError(f"join_pid must be a guest pid in 2..{MAX_PID}, not {join_pid!r}")
        return [(G.JOIN, join_pid)]
    if root is None:
        return []
    # imported here: an exec without a root (every `msb exec`) never loads dataclasses
    from .container_root import ContainerRoot
    if not isinstance(root, ContainerRoot):
        raise ValueError(f"root must be a vmm.agent.ContainerRoot, not {root!r}")
    return root.fields()


def _rlimit_fields(rlimits: Optional[Dict[int, Tuple[int, int]]]):
    return [(G.RLIMIT, P.RLIMIT.pack(int(res), soft, hard))
            for res, (soft, hard) in (rlimits or {}).items()]


class AgentClient:
    """One connection to a guest agent. Thread-safe: many sessions may run at once."""

    def __init__(self, sock: socket.socket):
        self._conn = Connection(sock)
        self.fs = Fs(self._conn)

    # --- construction ---
    @classmethod
    def connect_unix(cls, path: str, timeout: float = 10.0) -> "AgentClient":
        return cls.connect(path, port=None, timeout=timeout)

    @classmethod
    def connect(cls, path: str, port: Optional[int] = DEFAULT_VSOCK_PORT,
                timeout: float = 10.0) -> "AgentClient":
        """Connect to a Unix socket; with port, do the vsock CONNECT handshake first."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        sock.settimeout(timeout)
        try:
            sock.connect(os.fspath(path))
            if port is not None:
                vsock_handshake(sock, port, timeout)
        except (FileNotFoundError, ConnectionRefusedError) as e:
            sock.close()
            raise SandboxNotRunning(f"cannot connect to the agent at {path}: {e.strerror}") from None
        except BaseException:
            sock.close()
            raise
        return cls(sock)

    @classmethod
    def connect_when_ready(cls, path: str, port: Optional[int] = DEFAULT_VSOCK_PORT,
                           timeout: float = 30.0, alive=None) -> "AgentClient":
        """Connect, retrying while the guest boots (no socket yet, or the agent not yet
        listening: the VMM refuses the CONNECT), then wait for READY. alive(), if given,
        is asked between attempts so a VM that died ends the wait at once."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            try:
                client = cls.connect(path, port, timeout=max(0.1, min(left, 5.0)))
                client.wait_ready(max(0.1, deadline - time.monotonic()))
                return client
            except (SandboxNotRunning, Timeout, ConnectionError) as e:
                last = e
            if alive is not None and not alive():
                raise SandboxNotRunning(f"the VM ended before its agent was ready ({last})")
            if time.monotonic() >= deadline:
                raise Timeout(f"no agent ready at {path} (port {port}) within {timeout}s: {last}")
            time.sleep(0.01)

    # --- state ---
    @property
    def ready(self) -> Optional[ReadyInfo]:
        """The agent's READY, once it has arrived."""
        return self._conn.ready

    @property
    def closed(self) -> bool:
        return self._conn.closed

    def wait_ready(self, timeout: Optional[float] = None) -> ReadyInfo:
        """The agent's READY; Timeout after timeout seconds (None: DEFAULT_WAIT_S)."""
        return self._conn.wait_ready(timeout)

    def queued_bytes(self) -> int:
        """Bytes from the agent queued for open sessions and not yet taken (each session
        holds at most session.QUEUE_LIMIT; frames for forgotten sessions are dropped)."""
        return self._conn.queued_bytes()

    # --- commands ---
    def exec_stream(self, argv: Sequence[str], *, env: Optional[Dict[str, str]] = None,
                    cwd: Optional[str] = None, user: Optional[str] = None, tty: bool = False,
                    rows: int = 24, cols: int = 80, rlimits: Optional[Dict[int, Tuple[int, int]]] = None,
                    timeout: Optional[float] = 30.0, groups: Optional[Sequence[int]] = None,
                    umask: Optional[int] = None, no_new_privileges: bool = False,
                    capabilities: Optional[Capabilities] = None,
                    root: Optional["ContainerRoot"] = None,
                    join_pid: Optional[int] = None) -> Process:
        """Start argv; returns a Process once the agent reports it started.

        timeout bounds only the wait for STARTED here (None: session.DEFAULT_WAIT_S).
        The process's privileges (ExecPrivileges checks them; ValueError if bad):
        groups: exactly these supplementary gids (None: the user's from the guest's
        /etc/group; [] for none). umask: 0..0o777 (None: the agent's, 022).
        no_new_privileges: prctl(PR_SET_NO_NEW_PRIVS) before exec.
        capabilities: a Capabilities (its five sets; None: the user's defaults, all of
        them for root); the agent keeps them across the switch to a non-root user.
        root: a ContainerRoot: the process runs in its own mount namespace with that
        guest directory as `/` and its mounts inside (ExecFailed kind "bad_root" when the
        guest cannot set it up). join_pid: the process enters the mount namespace (so the
        root and mounts) of that guest process, e.g. a root= process's Process.pid.
        Not both (ValueError).
        Raises ExecFailed if it could
        not start (kind "not_found" -> exit code 127, "permission_denied" -> 126, ...).
        """
        privs = ExecPrivileges(groups=groups, umask=umask, no_new_privileges=no_new_privileges,
                               capabilities=capabilities)
        payload = exec_request(argv, env, cwd, user, tty, rows, cols, rlimits, privs, root,
                               join_pid)
        s = self._conn.open(T.EXEC, payload)
        deadline = deadline_after(timeout)
        try:
            t, reply = s.get(deadline)
        except Timeout:
            s.release()
            raise
        if t == T.STARTED:
            return Process(s, argv, reply_fields(reply).get(G.PID, 0))
        s.release()
        if t == T.FAILED:
            raise error_from(reply, ExecFailed, argv=argv)
        if t == T.ERROR:
            raise error_from(reply)
        if t == CONNECTION_LOST:
            raise SandboxNotRunning(f"agent connection lost starting {argv[0]!r}")
        raise AgentError(f"unexpected message 0x{t:x} in reply to EXEC")

    def exec(self, argv: Sequence[str], *, env: Optional[Dict[str, str]] = None,
             cwd: Optional[str] = None, user: Optional[str] = None,
             stdin: Union[None, bytes, BinaryIO] = None, timeout: Optional[float] = None,
             tty: bool = False, rows: int = 24, cols: int = 80,
             rlimits: Optional[Dict[int, Tuple[int, int]]] = None,
             max_output: Optional[int] = DEFAULT_MAX_OUTPUT, groups: Optional[Sequence[int]] = None,
             umask: Optional[int] = None, no_new_privileges: bool = False,
             capabilities: Optional[Capabilities] = None,
             root: Optional["ContainerRoot"] = None, join_pid: Optional[int] = None) -> ExecResult:
        """Run argv to completion and return its ExecResult.

        groups, umask, no_new_privileges, capabilities, root, join_pid: as for
        exec_stream().

        On timeout the process group is killed and Timeout is raised with the output so
        far (timeout None: no limit on the run; the start still has DEFAULT_WAIT_S).
        stdin may be bytes or a binary file; None means empty input. At most max_output
        bytes of stdout and stderr together are collected (default DEFAULT_MAX_OUTPUT,
        64 MiB; None: no cap): past it the process group is killed and OutputTooLarge is
        raised with the first max_output bytes attached. Use exec_stream for more.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        proc = self.exec_stream(argv, env=env, cwd=cwd, user=user, tty=tty, rows=rows,
                                cols=cols, rlimits=rlimits, timeout=timeout, groups=groups,
                                umask=umask, no_new_privileges=no_new_privileges,
                                capabilities=capabilities, root=root, join_pid=join_pid)
        feeder = _feed_stdin(proc, stdin, deadline)
        out: List[bytes] = []
        err: List[bytes] = []
        try:
            proc.collect(deadline, out, err, max_output)
        except Timeout:
            proc.kill()
            try:
                proc.collect(time.monotonic() + KILL_GRACE_S, out, err, max_output)
            except AgentError:
                pass
            raise Timeout(f"{argv[0]!r} did not finish within {timeout}s; killed",
                          stdout=b"".join(out), stderr=b"".join(err)) from None
        finally:
            proc.abandon()  # a no-op once it ended; else kill it and forget its session
            if feeder is not None:
                feeder.join(KILL_GRACE_S)
        res = proc.result
        res.stdout, res.stderr = b"".join(out), b"".join(err)
        return res

    # --- sandbox-wide requests ---
    def configure(self, *, env: Optional[Dict[str, str]] = None, workdir: Optional[str] = None,
                  hostname: Optional[str] = None,
                  rlimits: Optional[Dict[int, Tuple[int, int]]] = None,
                  read_only_root: bool = False, timeout: Optional[float] = 10.0) -> None:
        """Sandbox-wide defaults every later exec inherits (CONFIG).

        read_only_root: remount the guest's root read-only from now on (one way: False
        leaves it as it is); /dev, /proc, /sys, /tmp and volumes keep their own modes.
        The agent refuses it unless it is PID 1 (AgentError kind bad_request)."""
        fields = [(G.ENV, f"{k}={v}") for k, v in (env or {}).items()]
        if workdir is not None:
            fields.append((G.WORKDIR, workdir))
        if hostname is not None:
            fields.append((G.HOSTNAME, hostname))
        fields += _rlimit_fields(rlimits)
        if read_only_root:
            fields.append((G.READONLY_ROOT, 1))
        self._request(T.CONFIG, P.encode(fields), timeout)

    def ping(self, timeout: Optional[float] = 10.0) -> int:
        """A round trip; returns the guest's CLOCK_BOOTTIME in ns."""
        return reply_fields(self._request(T.PING, b"", timeout)).get(G.NOW_NS, 0)

    def _request(self, type_: int, payload: bytes, timeout: Optional[float]) -> bytes:
        """One message answered by DONE (whose payload is returned) or ERROR."""
        s = self._conn.open(type_, payload)
        try:
            t, reply = s.get(deadline_after(timeout))
        finally:
            s.release()
        if t == T.DONE:
            return reply
        if t == CONNECTION_LOST:
            raise SandboxNotRunning("agent connection lost during a request")
        if t == T.ERROR:
            raise error_from(reply)
        raise AgentError(f"unexpected message 0x{t:x} in reply to request 0x{type_:x}")

    # --- the end ---
    def request_shutdown(self, timeout: float = 10.0) -> None:
        """Ask the agent to end everything, sync, unmount and power off (reboot); returns
        once it has agreed, without waiting for the connection to close: an owner of
        the VM waits for the VM's end instead."""
        self._request(T.SHUTDOWN, b"", timeout)

    def shutdown(self, timeout: float = 10.0) -> None:
        """Ask the agent to end everything, sync, unmount and power off (reboot)."""
        try:
            self.request_shutdown(timeout)
        except SandboxNotRunning:
            pass  # it went down before the DONE reached us: that is fine
        self._conn.join(timeout)
        self.close()

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> "AgentClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _feed_stdin(proc: Process, stdin, deadline: Optional[float]) -> Optional[threading.Thread]:
    """Write stdin from a thread so output is read meanwhile (a pipe both ways would
    otherwise deadlock once both windows fill)."""
    if stdin is None or (isinstance(stdin, (bytes, bytearray)) and not stdin):
        proc.close_stdin()
        return None

    def feed():
        try:
            for chunk in chunks(stdin):
                # The process reads stdin at its own pace: only exec's timeout bounds it.
                proc.write(chunk, math.inf if deadline is None
                           else max(0.0, deadline - time.monotonic()))
                if proc.ended:
                    break
        except AgentError:
            pass
        finally:
            proc.close_stdin()
    t = threading.Thread(target=feed, name="vmm-agent-stdin", daemon=True)
    t.start()
    return t
