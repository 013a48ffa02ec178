"""`vmm-runtime`: the OCI runtime command line as runc has it, each container a microVM.

    vmm-runtime [--root DIR] [--log FILE] [--log-format text|json] [--debug] COMMAND ...
      create [--bundle DIR] [--console-socket SOCK] [--pid-file FILE] ID
      start ID | state ID | kill [--all] ID [SIGNAL] | delete [--force] ID
      list [--quiet] [--format table|json] | ps [--format table|json] ID | features
      pause ID | resume ID | update [--resources FILE|-] ... ID   (update: refused, see there)

Errors are printed and logged as runc does (log.py) and exit with status 1; messages
match runc's where a caller may match them ("container does not exist", "container not
running", ...). Global flags runc accepts that mean nothing for a VM (--systemd-cgroup,
--criu, --rootless) are accepted and ignored, so callers that pass them work unchanged.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from typing import List, Optional

from ..errors import VmmError
from .bundle import load_bundle
from .errors import RuntimeFailure
from .features import features
from .log import RuntimeLog
from .state import (CREATED, LIVE, PAUSED, RUNNING, STOPPED, ContainerNotFound, ContainerState,
                    StateStore, check_id, now_rfc3339)

CREATE_TIMEOUT_S = 300.0   # a first boot may build the guest kernel's caches
STOP_WAIT_S = 15.0


UPDATE_FLAGS = ("--blkio-weight", "--cpu-period", "--cpu-quota", "--cpu-share", "--cpu-rt-period",
                "--cpu-rt-runtime", "--cpuset-cpus", "--cpuset-mems", "--kernel-memory",
                "--kernel-memory-tcp", "--memory", "--memory-reservation", "--memory-swap",
                "--pids-limit", "--l3-cache-schema", "--mem-bw-schema")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vmm-runtime", description="OCI runtime: containers as microVMs")
    p.add_argument("--root", default=None, help="state directory (default /run/vmm-runtime)")
    p.add_argument("--log", default=None, help="log file (default stderr)")
    p.add_argument("--log-format", default="text", choices=("text", "json"))
    p.add_argument("--debug", action="store_true")
    p.add_argument("--systemd-cgroup", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--criu", default=None, help=argparse.SUPPRESS)
    p.add_argument("--rootless", default=None, help=argparse.SUPPRESS)
    p.add_argument("-v", "--version", action="store_true")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    c = sub.add_parser("create", help="create a container")
    c.add_argument("--bundle", "-b", default=".")
    c.add_argument("--console-socket", default=None)
    c.add_argument("--pid-file", default=None)
    c.add_argument("--no-pivot", action="store_true", help=argparse.SUPPRESS)
    c.add_argument("--no-new-keyring", action="store_true", help=argparse.SUPPRESS)
    c.add_argument("--preserve-fds", type=int, default=0, help=argparse.SUPPRESS)
    c.add_argument("id")
    for name, text in (("start", "start the created container's process"),
                       ("state", "print the container's state as JSON")):
        sub.add_parser(name, help=text).add_argument("id")
    k = sub.add_parser("kill", help="send a signal to the container's process")
    k.add_argument("--all", "-a", action="store_true")
    k.add_argument("id")
    k.add_argument("signal", nargs="?", default="SIGTERM")
    d = sub.add_parser("delete", help="delete a stopped container (--force: any)")
    d.add_argument("--force", "-f", action="store_true")
    d.add_argument("id")
    ls = sub.add_parser("list", help="list containers")
    ls.add_argument("--quiet", "-q", action="store_true")
    ls.add_argument("--format", "-f", default="table", choices=("table", "json"))
    ps = sub.add_parser("ps", help="processes of a container")
    ps.add_argument("--format", "-f", default="table", choices=("table", "json"))
    ps.add_argument("id")
    ps.add_argument("ps_args", nargs="*")
    e = sub.add_parser("exec", help="run another process in a created or running container")
    e.add_argument("--process", "-p", default=None, help="an OCI process object (JSON file)")
    e.add_argument("--detach", "-d", action="store_true")
    e.add_argument("--pid-file", default=None)
    e.add_argument("--console-socket", default=None)
    e.add_argument("--tty", "-t", action="store_true")
    e.add_argument("--env", "-e", action="append", default=[])
    e.add_argument("--cwd", default=None)
    e.add_argument("--user", "-u", default=None)
    e.add_argument("--additional-gids", "-g", action="append", default=[],
                   help="an extra supplementary group id for the process (repeatable)")
    e.add_argument("--no-new-privs", action="store_true", help="set no_new_privs for the process")
    e.add_argument("--cap", "-c", action="append", default=[],
                   help="add a capability (e.g. CAP_NET_ADMIN) to the process's sets (repeatable)")
    e.add_argument("--preserve-fds", type=int, default=0, help=argparse.SUPPRESS)
    e.add_argument("--process-label", default=None, help=argparse.SUPPRESS)
    e.add_argument("--apparmor", default=None, help=argparse.SUPPRESS)
    e.add_argument("--cgroup", default=None, help=argparse.SUPPRESS)
    e.add_argument("--ignore-paused", action="store_true", help=argparse.SUPPRESS)
    e.add_argument("id")
    e.add_argument("argv", nargs=argparse.REMAINDER, metavar="COMMAND")
    sub.add_parser("features", help="what this runtime supports, as JSON")
    for name, text in (("pause", "freeze the container's VM"), ("resume", "thaw a paused VM")):
        sub.add_parser(name, help=text).add_argument("id")
    u = sub.add_parser("update", help="change resources (not possible for a VM: an error)")
    u.add_argument("--resources", "-r", default=None, help="a JSON resources file, - for stdin")
    for flag in UPDATE_FLAGS:   # runc's, accepted so the refusal names the real reason
        u.add_argument(flag, default=None, help=argparse.SUPPRESS)
    u.add_argument("id")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = _parser().parse_args(argv)
    if args.version:
        from .. import __version__
        print(f"vmm-runtime version {__version__}\nspec: 1.0.2")
        return 0
    try:
        log = RuntimeLog(args.log, args.log_format, args.debug)
    except OSError as e:
        print(f"cannot open the log {args.log}: {e.strerror}", file=sys.stderr)
        return 1
    if not args.command:
        _parser().print_help(sys.stderr)
        return 1
    store = StateStore(args.root)
    try:
        return COMMANDS[args.command](store, args, log) or 0
    except (RuntimeFailure, VmmError, OSError) as e:
        log.fatal(_message(e))
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception as e:  # a bug of ours: one line for the caller, the trace with --debug
        if args.debug:
            import traceback
            log.debug(traceback.format_exc())
        log.fatal(f"internal error: {type(e).__name__}: {e}")
        return 1


def _message(e: BaseException) -> str:
    if isinstance(e, OSError) and e.strerror:
        return f"{e.strerror}: {e.filename}" if e.filename else e.strerror
    return str(e)


# --- create and start -------------------------------------------------------------------
def cmd_create(store: StateStore, args, log: RuntimeLog) -> int:
    from .holder import fork_holder, write_pid_file
    from .monitor import Monitor
    from .sandbox_boot import boot_sandbox
    from .stdio import ContainerStdio
    cid = check_id(args.id)
    bundle = load_bundle(args.bundle)
    if bundle.process is None:
        raise RuntimeFailure("config.json has no process to run")
    if not os.path.isdir(bundle.root):
        raise RuntimeFailure(f"rootfs ({bundle.root}) does not exist or is not a directory")
    if bundle.process.terminal and not args.console_socket:
        raise RuntimeFailure("cannot allocate tty if runc will detach without setting console socket")
    if not bundle.process.terminal and args.console_socket:
        raise RuntimeFailure("cannot use console socket if runc will not detach or allocate tty")
    from .pod import member_sandbox, pod_vm_of
    sid = member_sandbox(bundle.annotations_dict, cid)
    pod_vm = pod_vm_of(store, sid) if sid else None   # None: a VM of its own
    store.create(ContainerState(id=cid, bundle=bundle.path, rootfs=bundle.root,
                                created=now_rfc3339(), annotations=bundle.annotations_dict,
                                pod_sandbox=pod_vm.id if pod_vm else None,
                                pod_dir=pod_vm.pod_dir if pod_vm else None))
    if pod_vm is not None:
        from dataclasses import replace
        from .pod import MEMBER_NOTE
        bundle = replace(bundle, unhonoured=bundle.unhonoured + (MEMBER_NOTE,))
    _record_unhonoured(store, cid, bundle, log)
    try:
        stdio = ContainerStdio.with_console(args.console_socket) if bundle.process.terminal \
            else ContainerStdio.take_inherited()
    except BaseException:
        store.remove(cid)
        raise
    def start():
        booted_bundle = _enter_network(store, cid, bundle, log)
        if pod_vm is None:
            boot = lambda: boot_sandbox(booted_bundle, store.dir(cid), log)   # noqa: E731
        else:
            boot = lambda: _join_pod_vm(store, cid, booted_bundle, pod_vm)    # noqa: E731
        mon = Monitor(store, cid, booted_bundle, stdio, log, boot=boot)
        try:
            mon.create()
        except BaseException as e:
            store.update(cid, status=STOPPED, error=_message(e) or type(e).__name__)
            raise RuntimeFailure(_message(e) or type(e).__name__) from None
        return mon.run
    try:
        pid = fork_holder(stdio, log, start, CREATE_TIMEOUT_S,
                          "starting the VM" if pod_vm is None else "joining the pod VM")
    except RuntimeFailure:
        _remove(store, store.load(cid))
        raise
    if args.pid_file:
        write_pid_file(args.pid_file, pid)
    return 0


def _join_pod_vm(store: StateStore, cid: str, bundle, pod_vm):
    """A pod member's boot: its root and binds under the pod share, a connection to the
    pod VM's agent (pod.py). Its binds go again if it cannot join."""
    from .netns import enter, is_own_namespace
    from .pod import MemberVm, bind_member, container_root, unbind_member
    spec = bind_member(pod_vm.pod_dir, cid, bundle)
    try:
        store.update(cid, pod_root=spec)
        member = MemberVm(pod_vm, container_root(spec))
        if bundle.network == "join" and not is_own_namespace(bundle.netns):
            enter(bundle.netns)   # the pod's: /proc/<pid>/ns/net names it, as runc's would
        return member
    except BaseException:
        unbind_member(pod_vm.pod_dir, cid)
        raise


def _remove(store: StateStore, st: ContainerState) -> None:
    """The container's state and what it holds on the host: a member's binds under its
    pod's share, a sandbox's share (every member's binds), unmounted first."""
    from .pod import release_pod_dir, unbind_member
    if st.pod_sandbox and st.pod_dir:
        unbind_member(st.pod_dir, st.id)
    elif st.pod_dir:
        release_pod_dir(st.pod_dir)
    store.remove(st.id)


def _enter_network(store: StateStore, cid: str, bundle, log: RuntimeLog):
    """In the monitor, first thing: a new network namespace if the bundle asks for one, with
    the monitor (the container's pid) in it while the create-time hooks run, as runc runs
    them; the VM then takes over whatever interface they put there, as it does a CNI
    namespace's. Returns the bundle the VM boots from."""
    from dataclasses import replace
    from .hooks import hook_state, run_hooks
    from .netns import leave, new_namespace
    back = None
    if bundle.network == "none":
        held, back = new_namespace()
        bundle = replace(bundle, netns=held, network="join")
    try:
        state = hook_state(cid, "creating", os.getpid(), bundle.path, bundle.annotations_dict)
        for stage in ("prestart", "createRuntime"):
            run_hooks(bundle.hooks, stage, state, log, must_succeed=True)
    finally:
        if back is not None:
            leave(back)
    return bundle


def _record_unhonoured(store: StateStore, cid: str, bundle, log: RuntimeLog) -> None:
    """What the VM does not apply goes to the container's notes file always, and to the log
    when it is a file (or with --debug): a caller like podman shows a runtime's stderr to
    the user on every run, and runc says nothing there for a container that starts."""
    if not bundle.unhonoured:
        return
    with open(os.path.join(store.dir(cid), "not-applied.txt"), "w") as f:
        f.write("".join(note + "\n" for note in bundle.unhonoured))
    if log.fd is not None or log.debug_on:
        for note in bundle.unhonoured:
            log.warning(f"container {cid}: {note}")


def cmd_start(store: StateStore, args, log: RuntimeLog) -> int:
    from .monitor import request
    st = store.load(args.id)
    status = st.current_status()
    if status == STOPPED:
        raise RuntimeFailure("cannot start a container that has stopped")
    if status == RUNNING:
        raise RuntimeFailure("cannot start an already running container")
    if status != CREATED:
        raise RuntimeFailure(f"cannot start a container in the {status} state")
    reply = request(store, st.id, {"op": "start"})
    if "error" in reply:
        raise RuntimeFailure(str(reply["error"]))
    _run_hooks_of(st, "poststart", RUNNING, st.pid, log)
    return 0


def _run_hooks_of(st: ContainerState, stage: str, status: str, pid: int, log: RuntimeLog) -> None:
    """A stage whose failure is only logged (poststart, poststop), as the spec says; the
    hooks come from the bundle, which may be gone by then (nothing to run)."""
    from .hooks import hook_state, run_hooks
    try:
        hooks = load_bundle(st.bundle).hooks
    except VmmError:
        return
    if hooks:
        run_hooks(hooks, stage, hook_state(st.id, status, pid, st.bundle, st.annotations),
                  log, must_succeed=False)


# --- the rest ---------------------------------------------------------------------------
def cmd_state(store: StateStore, args, log: RuntimeLog) -> int:
    sys.stdout.write(json.dumps(store.load(args.id).oci(), indent=2))
    sys.stdout.flush()
    return 0


def cmd_kill(store: StateStore, args, log: RuntimeLog) -> int:
    from .monitor import request
    st = store.load(args.id)           # runc names a missing container before a bad signal
    signo = parse_signal(args.signal)
    if st.current_status() not in LIVE:
        if args.all:
            # As runc: --all on a stopped container has nothing left to signal and succeeds.
            # containerd's shim sends it after the container's process exits when the
            # container shares a pid namespace (a pod's), and logs our refusal as an error.
            return 0
        raise RuntimeFailure("container not running")
    try:
        reply = request(store, st.id, {"op": "kill", "signal": signo})
    except (OSError, ValueError) as e:
        if signo != signal.SIGKILL:
            raise RuntimeFailure(f"the container's monitor does not answer: {_message(e)}")
        _kill_monitor(st)   # SIGKILL must work even when the monitor is stuck
        return 0
    if "error" in reply:
        raise RuntimeFailure(str(reply["error"]))
    return 0


def cmd_delete(store: StateStore, args, log: RuntimeLog) -> int:
    from .monitor import request
    try:
        with store.lock(args.id):
            st = store.load(args.id)
    except ContainerNotFound:
        if args.force:
            # As runc: nothing to delete is done. containerd's shim deletes --force once
            # more when it cleans up after a container already deleted.
            return 0
        raise
    status = st.current_status()
    if status in (RUNNING, PAUSED) and not args.force:
        raise RuntimeFailure(f"cannot delete container {st.id} that is not stopped: {status}")
    if status in LIVE:
        try:
            request(store, st.id, {"op": "kill", "signal": int(signal.SIGKILL)})
        except (OSError, ValueError):
            pass
        deadline = time.monotonic() + STOP_WAIT_S
        while st.alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        if st.alive():
            _kill_monitor(st)
    _remove(store, st)
    _run_hooks_of(st, "poststop", STOPPED, 0, log)
    return 0


def _kill_monitor(st: ContainerState) -> None:
    if st.alive():
        try:
            os.kill(st.pid, signal.SIGKILL)   # its VM and helpers die with it (parent-death signal)
        except ProcessLookupError:
            pass


def cmd_list(store: StateStore, args, log: RuntimeLog) -> int:
    states = []
    for cid in store.ids():
        try:
            states.append(store.load(cid).oci())
        except VmmError:
            continue
    if args.quiet:
        for s in states:
            print(s["id"])
    elif args.format == "json":
        print(json.dumps(states))
    else:
        rows = [("ID", "PID", "STATUS", "BUNDLE", "CREATED", "OWNER")] + \
               [(s["id"], str(s["pid"]), s["status"], s["bundle"], s["created"], s["owner"] or "root")
                for s in states]
        widths = [max(len(r[i]) for r in rows) + 2 for i in range(6)]
        for r in rows:
            print("".join(v.ljust(w) for v, w in zip(r, widths)).rstrip())
    return 0


def cmd_ps(store: StateStore, args, log: RuntimeLog) -> int:
    st = store.load(args.id)
    pids = [st.pid] if st.current_status() in LIVE else []
    if args.format == "json":
        print(json.dumps(pids))
        return 0
    if not pids:
        print("UID        PID  PPID  C STIME TTY          TIME CMD")
        return 0
    return subprocess.run(["ps", "-f", "-p", ",".join(map(str, pids))] + list(args.ps_args)).returncode


def cmd_features(store: StateStore, args, log: RuntimeLog) -> int:
    print(json.dumps(features(), indent=4))
    return 0


def parse_signal(text: str) -> int:
    t = text.strip().upper()
    if t.isdigit():
        n = int(t)
        if 0 < n < signal.NSIG:
            return n
        raise RuntimeFailure(f"unknown signal {text!r}")
    name = t if t.startswith("SIG") else "SIG" + t
    try:
        return int(signal.Signals[name])
    except KeyError:
        raise RuntimeFailure(f"unknown signal {json.dumps(text)}") from None


EXEC_FAILED = 255   # runc's status when exec cannot start the process


def cmd_exec(store: StateStore, args, log: RuntimeLog) -> int:
    from .exec_process import run_exec
    st = store.load(args.id)
    if st.current_status() == PAUSED:   # its agent is frozen with it
        log.fatal("exec failed: cannot exec in a paused container")
        return EXEC_FAILED
    if st.current_status() not in (CREATED, RUNNING) or not st.agent_socket:
        log.fatal("exec failed: cannot exec in a stopped container")
        return EXEC_FAILED
    try:
        return run_exec(st, args, log)
    except RuntimeFailure as e:
        log.fatal(f"exec failed: {e}")
        return EXEC_FAILED


def cmd_pause(store: StateStore, args, log: RuntimeLog) -> int:
    """pause and resume: the monitor freezes or thaws the whole VM."""
    from .monitor import request
    from .pod import refuse_pause
    st = store.load(args.id)
    status = st.current_status()
    if status not in LIVE:
        raise RuntimeFailure("container not running" if args.command == "pause" else "container not paused")
    if st.pod_sandbox:
        raise RuntimeFailure(f"cannot {args.command} container {st.id}: {refuse_pause(st.pod_sandbox)}")
    reply = request(store, st.id, {"op": args.command})
    if "error" in reply:
        raise RuntimeFailure(str(reply["error"]))
    return 0


def cmd_update(store: StateStore, args, log: RuntimeLog) -> int:
    """A VM's CPUs and memory are fixed when it boots, so an update is refused, naming the
    container (a missing one first, as runc), never accepted and silently not applied."""
    st = store.load(args.id)
    if args.resources == "-":
        sys.stdin.buffer.read(1 << 20)   # the caller writes it before it reads our answer
    raise RuntimeFailure(f"cannot update container {st.id}: a VM's CPUs and memory are fixed "
                         "when it boots (vmm-runtime); recreate it with the new limits")


COMMANDS = {"create": cmd_create, "exec": cmd_exec, "start": cmd_start, "state": cmd_state, "kill": cmd_kill,
            "delete": cmd_delete, "list": cmd_list, "ps": cmd_ps, "features": cmd_features,
            "pause": cmd_pause, "resume": cmd_pause, "update": cmd_update}
