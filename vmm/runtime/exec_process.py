"""`vmm-runtime exec`: one more process in a container's VM, over a connection of its own
to the guest agent (the agent serves any number), as runc exec starts one more process in
the container's namespaces.

Attached, this command relays the process's stdio and exits with its status. With
--detach (what containerd's shim uses) it forks a small exec monitor that holds the
connection and the stdio, writes that monitor's pid to --pid-file once the process has
started, and returns; the monitor exits with the process's status, so the shim, a
subreaper, collects it as it would the process runc started.

Without --process the new process's privileges are the container's process's, as runc
exec's are (capabilities, noNewPrivileges, umask and additionalGids from the bundle),
with --cap adding a capability (bounding, effective, permitted, ambient), --no-new-privs
and --additional-gids on top.
"""
from __future__ import annotations

import os
import re
from dataclasses import replace

from .bundle import BundleError, ProcessSpec, load_bundle, load_process
from .errors import RuntimeFailure
from .state import ContainerState

START_TIMEOUT_S = 60.0
USER = re.compile(r"([0-9]{1,10})(?::([0-9]{1,10}))?")


def exec_spec(args, bundle_dir=None, notes=None) -> ProcessSpec:
    """The process `exec` runs: --process's, or one from the flags on top of the
    privileges of the container's process (bundle_dir's config.json, if given). What is
    not applied goes to notes, if given."""
    from ..errors import ConfigError
    if args.process:
        try:
            return load_process(args.process, notes)
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
    p = ProcessSpec(args=tuple(args.argv), env=tuple(env), cwd=cwd, uid=uid, gid=gid,
                    terminal=args.tty)
    return _privileges(p, args, bundle_dir)


def _privileges(p: ProcessSpec, args, bundle_dir) -> ProcessSpec:
    base = None
    if bundle_dir is not None:
        try:
            base = load_bundle(bundle_dir).process
        except BundleError as e:   # never run with weaker privileges than asked for
            raise RuntimeFailure(f"cannot read the container's process privileges: {e}") from None
    caps = base.capabilities if base else None
    gids = list(base.additional_gids if base else ())
    for g in getattr(args, "additional_gids", None) or []:
        if not re.fullmatch(r"[0-9]{1,10}", g) or int(g) > 2**32 - 2:
            raise RuntimeFailure(f"--additional-gids {g!r} is not a gid")
        gids.append(int(g))
    added = tuple(getattr(args, "cap", None) or ())
    if added:
        from ..agent.capabilities import NAMES, NUMBERS, Capabilities
        for c in added:
            if c not in NUMBERS:
                raise RuntimeFailure(f"--cap: unknown capability {c[:64]!r}")
        # no process.capabilities: what root has by default, every one but inheritable
        caps = caps or Capabilities(bounding=NAMES, effective=NAMES, permitted=NAMES)
        caps = Capabilities(bounding=caps.bounding + added, effective=caps.effective + added,
                            permitted=caps.permitted + added, inheritable=caps.inheritable,
                            ambient=caps.ambient + added)
    nnp = bool(getattr(args, "no_new_privs", False)) or bool(base and base.no_new_privileges)
    return replace(p, additional_gids=tuple(gids), capabilities=caps, no_new_privileges=nnp,
                   umask=base.umask if base else None)


def run_exec(st: ContainerState, args, log) -> int:
    from .holder import fork_holder, write_pid_file
    from .stdio import ContainerStdio
    notes = []
    p = exec_spec(args, st.bundle, notes)
    for line in notes:
        log.warning(f"exec: {line}")
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
    target = client
    if st.pod_sandbox:   # a pod's container: its own root in the pod VM (pod.py)
        from .pod import JoinedClient, container_root
        try:
            target = JoinedClient(client, st.guest_pid,
                                  None if st.guest_pid else container_root(st.pod_root or {}))
        except (KeyError, ValueError) as e:
            client.close()
            raise RuntimeFailure(f"the container's root in its pod VM is unreadable: {e}") from None
    try:
        return client, stdio.spawn(target, p)
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
