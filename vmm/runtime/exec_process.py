"""`vmm-runtime exec`: one more process in a container's VM, over a connection of its own
to the guest agent (the agent serves any number), as runc exec starts one more process in
the container's namespaces.

Attached, this command relays the process's stdio and exits with its status. With
--detach (what containerd's shim uses) it forks a small exec monitor that holds the
connection and the stdio, writes that monitor's pid to --pid-file once the process has
started, and returns; the monitor exits with the process's status, so the shim, a
subreaper, collects it as it would the process runc started.
"""
from __future__ import annotations

import os
import re

from .bundle import ProcessSpec, load_process
from .errors import RuntimeFailure
from .state import ContainerState

START_TIMEOUT_S = 60.0
USER = re.compile(r"([0-9]{1,10})(?::([0-9]{1,10}))?")


def exec_spec(args) -> ProcessSpec:
    from ..errors import ConfigError
    if args.process:
        try:
            return load_process(args.process)
        except ConfigError as e:
            raise RuntimeFailure(str(e)) from None
    if not args.argv:
        raise RuntimeFailure("process args cannot be empty")
    env = []
    for item in args.env:
        k, sep, v = item.partition("=")
        if not sep or not k:
            raise RuntimeFailure(f"--env {item!r} is not KEY=VALUE")
        env.append((k, v))
    uid = gid = 0
    if args.user:
        m = USER.fullmatch(args.user)
        if not m:
            raise RuntimeFailure(f"--user {args.user!r} is not UID[:GID]")
        uid, gid = int(m.group(1)), int(m.group(2) or 0)
    cwd = args.cwd or "/"
    if not cwd.startswith("/"):
        raise RuntimeFailure(f"--cwd {cwd!r} is not an absolute path")
    return ProcessSpec(args=tuple(args.argv), env=tuple(env), cwd=cwd, uid=uid, gid=gid,
                       terminal=args.tty)


def run_exec(st: ContainerState, args, log) -> int:
    from .holder import fork_holder, write_pid_file
    from .stdio import ContainerStdio
    p = exec_spec(args)
    if p.terminal and args.detach and not args.console_socket:
        raise RuntimeFailure("cannot allocate tty if runc will detach without setting console socket")
    if not p.terminal and args.console_socket:
        raise RuntimeFailure("cannot use console socket if runc will not detach or allocate tty")
    if args.console_socket:
        stdio = ContainerStdio.with_console(args.console_socket)
    else:
        stdio = ContainerStdio.take_inherited()
        stdio.terminal = p.terminal and os.isatty(stdio.stdin)
    if not args.detach:
        client, proc = _start(st, stdio, p)
        with client:
            restore = _raw(stdio.stdin) if stdio.terminal and not args.console_socket else None
            try:
                return stdio.relay(proc)
            finally:
                if restore:
                    restore()
    def start():
        client, proc = _start(st, stdio, p)

        def run() -> int:
            with client:
                return stdio.relay(proc)
        return run
    pid = fork_holder(stdio, log, start, START_TIMEOUT_S, "starting the process")
    if args.pid_file:
        write_pid_file(args.pid_file, pid)
    return 0


def _start(st: ContainerState, stdio, p: ProcessSpec):
    """A connection of our own to the agent, and the process started on it."""
    from ..agent import AgentClient, AgentError, DEFAULT_VSOCK_PORT, ExecFailed
    try:
        client = AgentClient.connect(st.agent_socket, DEFAULT_VSOCK_PORT)
        client.wait_ready(10)
    except (OSError, AgentError) as e:
        raise RuntimeFailure(f"cannot reach the container's VM: {e}") from None
    try:
        return client, stdio.spawn(client, p)
    except ExecFailed as e:
        client.close()
        raise RuntimeFailure(f'unable to start container process: exec: "{p.args[0]}": {e}') from None
    except BaseException:
        client.close()
        raise


def _raw(fd: int):
    import termios
    import tty
    old = termios.tcgetattr(fd)
    tty.setraw(fd)
    return lambda: termios.tcsetattr(fd, termios.TCSADRAIN, old)
