"""Named sandboxes, as the `msb` commands use them: every call is a short-lived client of
the database (state.py) and of the sandbox's supervisor (supervisor.py, control.py).

    create("web", cfg)                 # resolve the image, record the sandbox
    start("web")                       # spawn its supervisor, wait until it is ready
    target = connect("web")            # an AgentClient of our own for one exec
    stop("web", timeout=10)            # graceful; SIGTERM, then SIGKILL after the grace
    remove("web")

exec talks to the guest agent directly over the sandbox's vsock socket, not through the
supervisor: one hop less per byte, and the exec's lifetime is the connection's, so the
agent ends the guest process group when the `msb exec` process ends, however it ends
(docs/lifecycle.md). The supervisor learns of the exec through a control connection held
open for as long as it runs (--idle-timeout).
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable, List, Optional

from ..errors import VmmError
from ..home import Home
from .state import SandboxNotFound, SandboxRow, StateDB, remove_runtime
from .control import BUSY

if TYPE_CHECKING:
    import subprocess
    from .config import SandboxConfig

# subprocess, select, signal, shutil and config.py are imported where they are used: a
# short-lived `msb exec` imports this module for connect() alone, and every module it
# loads is paid for on each call (docs/lifecycle.md, "Start-up cost").

READY_TIMEOUT_S = 180.0    # boot (60 s under a loaded TCG host) plus formatting the disk
STOP_TIMEOUT_S = 10.0
KILL_WAIT_S = 5.0
_PACKAGE_PARENT = str(Path(__file__).resolve().parents[2])   # the dir holding vmm/


class StartFailed(VmmError):
    """The supervisor could not bring the sandbox up; the message says why."""


def _progress(quiet: bool) -> Callable[[str], None]:
    return (lambda _: None) if quiet else (lambda text: print(text, file=sys.stderr, flush=True))


def check_volumes(cfg: SandboxConfig) -> None:
    """Refuse what cannot be mounted, before anything is recorded or pulled: a host
    directory (`-v ./src:/app`) that is missing or not a directory (the supervisor checks
    again when it boots the sandbox: it may have gone since)."""
    from .volumes import check_host_dir
    for v in cfg.volumes:
        if v.kind == "host":
            check_host_dir(v.source, f"volume {v}")


def ensure_volumes(cfg: SandboxConfig, quiet: bool = False) -> List[str]:
    """Named volumes that do not exist yet are created empty on first use, as Docker does
    (a default-size sparse ext4 disk), so `msb run -v data:/data` works without a separate
    `msb volume create`. A read-only mount of a missing volume is refused instead: it
    could only ever show an empty directory, so it is almost surely a typo. Returns the
    names created."""
    from .volume_store import VolumeExists, VolumeStore
    store = VolumeStore()
    created = []
    for v in cfg.volumes:
        if v.kind != "named" or store.exists(v.source):
            continue
        if v.read_only:
            raise VmmError(f"volume {v.source!r} not found: a read-only mount of a new, empty "
                           f"volume is useless (create it with msb volume create {v.source}, "
                           "or mount it read-write first)")
        try:
            store.create(v.source)
        except VolumeExists:
            continue   # a concurrent run made it first: the same volume either way
        created.append(v.source)
        _progress(quiet)(f"Created volume {v.source}")
    return created


# --- reads ---------------------------------------------------------------------------------
def get(name: str) -> SandboxRow:
    with StateDB() as db:
        return db.get(name)


def find(name: str) -> Optional[SandboxRow]:
    with StateDB() as db:
        return db.find(name)


def list_sandboxes() -> List[SandboxRow]:
    with StateDB() as db:
        return db.list()


def config_of(row: SandboxRow) -> SandboxConfig:
    from .config import SandboxConfig
    return SandboxConfig.from_json(row.config)


def is_running(row: SandboxRow) -> bool:
    return row.status == "running" and row.supervisor_alive


# --- create / start ------------------------------------------------------------------------
def create(name: str, cfg: SandboxConfig, quiet: bool = False) -> SandboxRow:
    """Resolve the image (pulling per cfg.pull) and record the sandbox as `created`."""
    from .config import check_name
    from .image_source import resolve_image
    check_name(name)
    check_volumes(cfg)
    image = resolve_image(cfg.image, cfg.pull, quiet)
    ensure_volumes(cfg, quiet)
    home = Home()
    with StateDB(home) as db:
        db.insert(name, image.reference, cfg.to_json())
        home.sandbox(name).mkdir(parents=True, exist_ok=True)
        db.update(name, image_disk=image.disk, image_config=json.dumps(image.config))
        return db.get(name)


def _image_disk_present(row: SandboxRow) -> None:
    """The root disk may have been removed with `msb image rm`: rebuild it from the store,
    or say how to get the image back."""
    if row.image_disk and os.path.exists(row.image_disk):
        return
    from .image_source import resolve_image
    image = resolve_image(row.image, "never", quiet=True)
    with StateDB() as db:
        db.update(row.name, image_disk=image.disk, image_config=json.dumps(image.config))


def start(name: str, quiet: bool = False, run_command: bool = False,
          timeout: float = READY_TIMEOUT_S) -> SandboxRow:
    """Spawn the sandbox's supervisor and wait until it reports ready (no-op if running)."""
    row = get(name)
    if is_running(row):
        return row
    _image_disk_present(row)
    say = _progress(quiet)
    say(f"Starting {name}")
    t0 = time.monotonic()
    home = Home()
    box = home.sandbox(name)
    box.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    # The supervisor imports the same vmm as this process, wherever that came from.
    env["PYTHONPATH"] = os.pathsep.join(p for p in (_PACKAGE_PARENT, env.get("PYTHONPATH")) if p)
    env["MSB_HOME"] = str(home.root.resolve())   # the supervisor runs in /: no relative path
    # Every temporary socket directory of the run (the agent's, the vhost-user back ends')
    # goes inside the sandbox's runtime directory, so removing that one directory after a
    # crash removes them all.
    runtime = home.runtime(name)
    env["TMPDIR"] = str(runtime)
    env.pop("XDG_RUNTIME_DIR", None)
    import subprocess
    r, w = os.pipe()
    argv = [sys.executable, "-m", "vmm.sandbox.supervisor", name, "--ready-fd", str(w),
            "--runtime-dir", str(runtime)]
    if run_command:
        argv.append("--run-command")
    with open(box / "supervisor.log", "ab") as logf:
        try:
            proc = subprocess.Popen(argv, pass_fds=(w,), stdin=subprocess.DEVNULL, stdout=logf,
                                    stderr=logf, start_new_session=True, env=env, cwd="/")
        finally:
            os.close(w)
    try:
        answer = _read_ready(r, proc, timeout)
    finally:
        os.close(r)
    if answer == BUSY:   # a concurrent start won the claim: wait for its supervisor
        answer = _wait_running(name, timeout)
    if answer != "ok":
        raise StartFailed(f"sandbox {name} did not start: "
                          f"{answer.removeprefix('error: ') if answer else _log_tail(box)}")
    say(f"Started {name} ({time.monotonic() - t0:.1f}s)")
    return get(name)


def _wait_running(name: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        row = get(name)
        if is_running(row):
            return "ok"
        if row.pid is None:
            return "error: a concurrent start of it failed (see `msb logs --source system`)"
        time.sleep(0.05)
    return f"error: not ready within {timeout:g}s"


def _read_ready(fd: int, proc: subprocess.Popen, timeout: float) -> str:
    import select
    deadline = time.monotonic() + timeout
    buf = b""
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], min(1.0, max(0.0, deadline - time.monotonic())))
        if ready:
            chunk = os.read(fd, 4096)
            if not chunk:
                break
            buf += chunk
            if buf.endswith(b"\n"):
                break
    else:
        proc.terminate()
        return f"error: not ready within {timeout:g}s"
    return buf.decode(errors="replace").strip()


def _log_tail(box: Path) -> str:
    try:
        lines = (box / "supervisor.log").read_text(errors="replace").strip().splitlines()
    except OSError:
        lines = []
    return lines[-1] if lines else "its supervisor exited without a word"


# --- stop / remove -------------------------------------------------------------------------
def _wait_gone(row: SandboxRow, timeout: float) -> bool:
    from .state import is_alive
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not is_alive(row.pid, row.pid_start, row.boot_id):
            return True
        time.sleep(0.02)
    return not is_alive(row.pid, row.pid_start, row.boot_id)


def _signal(row: SandboxRow, sig: int) -> None:
    from .state import is_alive
    if is_alive(row.pid, row.pid_start, row.boot_id):
        try:
            os.kill(row.pid, sig)
        except ProcessLookupError:
            pass


def stop(name: str, timeout: float = STOP_TIMEOUT_S, force: bool = False,
         quiet: bool = True) -> bool:
    """Stop a running sandbox; False if it was not running. Graceful: the supervisor asks
    the agent to sync and power off; if the supervisor does not answer or outlives the
    grace, SIGTERM and then SIGKILL (QEMU and passt die with it)."""
    row = get(name)
    if row.pid is None or not row.supervisor_alive:
        if row.status == "crashed":
            with StateDB() as db:
                db.finish(name, row.pid or 0, "stopped")
        return False
    import signal
    say = _progress(quiet)
    say(f"Stopping {name}")
    if not force:
        from .control import ControlError, request
        asked = False
        if row.control_socket:
            try:
                request(row.control_socket, "stop", wait=5.0, timeout=timeout)
                asked = True
            except ControlError:
                pass   # wedged: the signals below decide
        # Still booting (no control socket yet) or not answering: SIGTERM, which the
        # supervisor also takes as "stop gracefully".
        if not asked or not _wait_gone(row, timeout + KILL_WAIT_S):
            _signal(row, signal.SIGTERM)
            if not _wait_gone(row, timeout + KILL_WAIT_S):
                force = True
    if force:
        _signal(row, signal.SIGKILL)
        _wait_gone(row, KILL_WAIT_S)
    with StateDB() as db:
        db.finish(name, row.pid, "stopped")   # a no-op when the supervisor did it itself
    remove_runtime(row.runtime_dir, row.vm_runtime_dir)
    say(f"Stopped {name}")
    return True


def remove(name: str, force: bool = False) -> None:
    row = get(name)
    if is_running(row) or (row.pid is not None and row.supervisor_alive):
        if not force:
            raise VmmError(f"sandbox {name} is running; stop it first or use -f")
        stop(name, force=False)
    import shutil
    home = Home()
    with StateDB(home) as db:
        db.delete(name)
    shutil.rmtree(home.sandbox(name), ignore_errors=True)
    remove_runtime(str(home.runtime(name)))


# --- exec ----------------------------------------------------------------------------------
class ExecSettings:
    """What running a command needs of a sandbox's stored config (command.py): read from
    its JSON without building a SandboxConfig, whose module (checks, regexes, frozen
    dataclasses) costs every short-lived `msb exec` a few milliseconds."""

    def __init__(self, config_json: str):
        d = json.loads(config_json)
        self.entrypoint = tuple(d["entrypoint"]) if d.get("entrypoint") else None
        self.shell = d.get("shell") or "/bin/sh"   # always stored; config.DEFAULT_SHELL
        self.user = d.get("user")


class ExecTarget:
    """What one `msb exec` holds: its own agent connection and the control connection that
    marks the sandbox in use. close() ends both (and with them the guest process)."""

    def __init__(self, row: SandboxRow, config: ExecSettings, image_config: dict, client,
                 activity):
        self.row, self.config, self.image_config = row, config, image_config
        self.client, self.activity = client, activity

    @property
    def log_dir(self) -> Path:
        return Home().sandbox_logs(self.row.name)

    def close(self) -> None:
        self.client.close()
        if self.activity is not None:
            self.activity.close()


def connect(name: str, auto_start: bool = True, quiet: bool = False) -> ExecTarget:
    from ..agent import AgentClient, DEFAULT_VSOCK_PORT
    from .control import ControlClient, ControlError
    row = get(name)
    if not is_running(row):
        if not auto_start:
            raise VmmError(f"sandbox {name} is not running")
        row = start(name, quiet=quiet)
    activity = None
    try:
        activity = ControlClient(row.control_socket)
        activity.request("exec")
    except ControlError:
        if activity is not None:
            activity.close()
        activity = None   # an old supervisor or a stopping one: exec still works
    try:
        client = AgentClient.connect(row.agent_socket, DEFAULT_VSOCK_PORT)
        client.wait_ready(10)
    except BaseException:
        if activity is not None:
            activity.close()
        raise
    return ExecTarget(row, ExecSettings(row.config), json.loads(row.image_config or "{}"), client,
                      activity)


__all__ = ["create", "start", "stop", "remove", "get", "find", "list_sandboxes", "connect",
           "ExecTarget", "ExecSettings", "StartFailed", "SandboxNotFound", "config_of",
           "is_running"]
