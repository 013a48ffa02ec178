"""The supervisor: one detached process per running sandbox, which owns its VM.

    python -m vmm.sandbox.supervisor NAME [--ready-fd FD] [--run-command]

manager.start() spawns it in a session of its own with stdio on
sandboxes/NAME/supervisor.log, so it survives the `msb` call and the terminal that
started it. It:

- claims the sandbox in the database (one live supervisor per sandbox);
- formats the writable disk on first start (4 GiB, sparse) and boots the Sandbox (image
  disk read-only, writable disk, named volumes and host directories, network,
  env/workdir/hostname from the config);
- reports on --ready-fd: "ok" once the agent is ready, or "error: ..." (the caller shows
  it), then closes it;
- marks the row `running` with its runtime paths (agent and control sockets), serves the
  control socket (control.py), enforces --max-duration and --idle-timeout, copies the
  guest console into the sandbox log as `system` entries;
- on SIGTERM/SIGINT/SIGHUP or a control `stop`, stops the VM gracefully (forced after
  the timeout), marks the row `stopped` and exits. If it is killed, the row still says
  `running` with its pid; the next `msb` call sees the pid gone and shows `crashed`
  (state.py), while QEMU and passt die with it (vmm/engines/child_process.py).
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Optional

from ..home import Home
from .config import SandboxConfig
from .console import ConsoleCopier
from .control import BUSY
from .state import StateDB, remove_runtime, utc_now

WRITABLE_SIZE = "4G"
DEFAULT_STOP_TIMEOUT = 10.0


def make_runtime_dir(path: Path) -> Path:
    """The runtime dir, 0700, under a per-user parent that must be ours (another user could
    have made /tmp/msb-UID first)."""
    parent = path.parent
    parent.mkdir(mode=0o700, exist_ok=True)
    st = os.lstat(parent)
    if st.st_uid != os.getuid() or not os.path.isdir(parent) or os.path.islink(parent):
        raise RuntimeError(f"{parent} is not a directory owned by this user; remove it")
    os.chmod(parent, 0o700)
    remove_runtime(str(path))   # a dead run's sockets
    path.mkdir(mode=0o700)
    return path


class Supervisor:
    def __init__(self, name: str, ready_fd: Optional[int], run_command: bool,
                 runtime_dir: Optional[str] = None):
        self.name = name
        self.home = Home()
        self.runtime_dir = Path(runtime_dir) if runtime_dir else self.home.runtime(name)
        self.ready_fd = ready_fd
        self.run_command = run_command
        self.stop_requested = threading.Event()
        self.stop_timeout = DEFAULT_STOP_TIMEOUT
        self._active = 0
        self._last_activity = time.monotonic()
        self._activity_lock = threading.Lock()
        self.sandbox = None
        self.metrics = None
        self.memory_mib = 0

    # --- readiness pipe ------------------------------------------------------------------
    def _report(self, text: str) -> None:
        if self.ready_fd is None:
            return
        try:
            os.write(self.ready_fd, text.encode(errors="replace")[:4000] + b"\n")
            os.close(self.ready_fd)
        except OSError:
            pass   # the caller went away; the sandbox runs on regardless
        self.ready_fd = None

    # --- activity (control socket) ---------------------------------------------------------
    def exec_started(self) -> None:
        with self._activity_lock:
            self._active += 1
            self._last_activity = time.monotonic()

    def exec_ended(self) -> None:
        with self._activity_lock:
            self._active -= 1
            self._last_activity = time.monotonic()

    def idle_for(self) -> float:
        with self._activity_lock:
            return 0.0 if self._active else time.monotonic() - self._last_activity

    def handle(self, op: str, args: dict) -> dict:
        if op == "status":
            return {"status": "running", "pid": os.getpid(), "active_execs": self._active}
        if op == "metrics":
            if self.metrics is None:   # asked before _start_metrics() ran
                self._start_metrics(self.sandbox, None)
            return {"metrics": self.metrics.sample(self.name)}
        if op == "stop":
            self.stop_timeout = float(args.get("timeout", DEFAULT_STOP_TIMEOUT))
            self.stop_requested.set()
            return {}
        raise ValueError(f"unknown control request {op!r}")

    def _start_metrics(self, sb, cfg) -> None:
        from .metrics import Metrics
        with self._activity_lock:
            if self.metrics is None:
                limit = (cfg.memory_mib if cfg else self.memory_mib) << 20
                self.metrics = Metrics(sb, limit)

    # --- the run ---------------------------------------------------------------------------
    def run(self) -> int:
        db = StateDB(self.home)
        if not db.claim(self.name, os.getpid()):
            self._report(BUSY)   # another supervisor has it: the caller waits for that one
            return 1
        row = db.get(self.name, reconcile=False)
        before = row.status if row.status != "running" else "crashed"
        from .logs import LogWriter
        log = LogWriter(self.home.sandbox_logs(self.name))
        final = before
        runtime = None
        try:
            cfg = SandboxConfig.from_json(row.config)
            image_cfg = json.loads(row.image_config or "{}")
            runtime = make_runtime_dir(self.runtime_dir)
            log.write("system", f"starting sandbox {self.name} (image {row.image})\n".encode())
            sb, console = self._boot(row, cfg, image_cfg, log)
        except BaseException as e:
            msg = str(e) or type(e).__name__
            log.write("system", f"start failed: {msg}\n".encode())
            self._report(f"error: {msg}")
            db.finish(self.name, os.getpid(), before)
            remove_runtime(str(runtime) if runtime else None)
            log.close()
            return 1
        from .control import ControlServer
        control_path = str(runtime / "control.sock")
        server = ControlServer(control_path, self.handle, self.exec_started, self.exec_ended)
        db.update(self.name, status="running", started_at=utc_now(),
                  agent_socket=sb.socket_path, control_socket=control_path,
                  runtime_dir=str(runtime), vm_runtime_dir=sb.runtime_dir,
                  published=json.dumps(sb.network.published if sb.network else []))
        log.write("system", f"sandbox {self.name} started\n".encode())
        self._report("ok")
        self._start_metrics(sb, cfg)   # after "ok": psutil is not on the way to ready
        try:
            if self.run_command and cfg.command:
                self._start_main_command(sb, cfg, image_cfg, log)
            reason = self._wait(sb, cfg)
            log.write("system", f"stopping: {reason}\n".encode())
            status = sb.stop(self.stop_timeout)
            final = "crashed" if status.kind == "error" else "stopped"
            log.write("system", f"sandbox {self.name} stopped ({status.kind}: "
                                f"{status.message})\n".encode())
        finally:
            server.close()
            console.close()
            db.finish(self.name, os.getpid(), final)
            remove_runtime(str(runtime))
            log.close()
        return 0

    def _boot(self, row, cfg: SandboxConfig, image_cfg: dict, log):
        box = self.home.sandbox(self.name)
        box.mkdir(parents=True, exist_ok=True)
        writable = self.home.writable_disk(self.name)
        # Start-up overlaps: mkfs (first start) and finding the guest kernel (a dpkg-query)
        # are child processes, which run on another core while this thread imports the
        # VM side (~20 ms); in sequence they cost `msb run -d` ~50 ms more.
        formatted = _background(None if writable.exists() else
                                 lambda: _format_disk(writable, WRITABLE_SIZE))
        kernel = _background(_guest_kernel)
        from .sandbox import Sandbox
        formatted()
        kernel_path = kernel()
        console_log = box / "console.log"
        console_log.unlink(missing_ok=True)   # this boot's console only
        console_log.touch()
        console = ConsoleCopier(str(console_log), log)
        env = dict(e.split("=", 1) for e in image_cfg.get("env") or [] if "=" in e)
        env.update(cfg.env_dict)
        try:
            volumes = self._volumes(cfg)
            sb = Sandbox.create(row.image_disk, writable_disk=str(writable), cpus=cfg.cpus,
                                kernel=kernel_path,
                                memory_mib=cfg.memory_mib, env=env or None,
                                workdir=cfg.workdir or image_cfg.get("working_dir"),
                                hostname=cfg.guest_hostname(self.name), engine=cfg.engine,
                                console_log=str(console_log), network=cfg.network(),
                                volumes=volumes)
        except BaseException:
            console.close()
            raise
        self.sandbox = sb
        self.memory_mib = cfg.memory_mib
        try:
            for t in cfg.tmpfs:
                opts = f"size={t.size}" if t.size else "mode=1777"
                sb.exec(["mkdir", "-p", t.path], timeout=30)
                r = sb.exec(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", t.path], timeout=30)
                if r.exit_code != 0:
                    raise RuntimeError(f"--tmpfs {t.path}: mount failed: "
                                       f"{r.stderr.decode(errors='replace').strip()}")
        except BaseException:
            sb.stop(5)
            console.close()
            raise
        return sb, console

    def _volumes(self, cfg: SandboxConfig):
        """The mounts: named volumes' disks (VolumeNotFound if one was removed since `msb
        create`: recreating it empty would hide that its data is gone) and host
        directories (absolute since `msb create`; Sandbox.create checks they still
        exist)."""
        from .volume_store import VolumeStore
        from .volumes import HostDir
        store = VolumeStore(self.home)
        return [store.mount(v.source, v.dest, v.read_only) if v.kind == "named"
                else HostDir(v.source, v.dest, v.read_only) for v in cfg.volumes]

    def _start_main_command(self, sb, cfg: SandboxConfig, image_cfg: dict, log) -> None:
        """`msb run -d IMAGE -- CMD`: CMD runs for as long as the sandbox does, its output
        in the log; it counts as activity for --idle-timeout while it runs."""
        from .command import resolve_command
        argv = resolve_command(cfg, image_cfg, list(cfg.command), tty=False)
        exec_id = os.urandom(6).hex()   # 12 hex digits, as msb exec's (not uuid: it loads platform)

        def main():
            self.exec_started()
            try:
                proc = sb.exec_stream(argv, user=cfg.user or image_cfg.get("user"))
                proc.close_stdin()
                for stream, data in proc:
                    log.write(stream, data, exec_id)
                log.write("system", f"command {argv[0]!r} exited with "
                                    f"{proc.result.exit_code}\n".encode())
            except Exception as e:
                log.write("system", f"command {argv[0]!r} failed: {e}\n".encode())
            finally:
                self.exec_ended()
        threading.Thread(target=main, name="msb-main-command", daemon=True).start()

    def _wait(self, sb, cfg: SandboxConfig) -> str:
        started = time.monotonic()
        while True:
            if self.stop_requested.wait(0.2):
                return "stop requested"
            if sb.machine.wait(0) is not None:
                return "the VM ended"
            if cfg.max_duration and time.monotonic() - started >= cfg.max_duration:
                return f"--max-duration of {cfg.max_duration:g}s reached"
            if cfg.idle_timeout and self.idle_for() >= cfg.idle_timeout:
                return f"idle for --idle-timeout of {cfg.idle_timeout:g}s"


def _format_disk(path, size):
    from .writable_disk import format_writable_disk as fmt
    return fmt(path, size)


def _guest_kernel():
    from ..guest.kernel import guest_kernel
    return guest_kernel()


def _background(fn):
    """Run fn in a thread now; the returned wait() joins it and returns its result or
    raises its exception. fn None: nothing to do."""
    if fn is None:
        return lambda: None
    result = {}

    def target():
        try:
            result["value"] = fn()
        except BaseException as e:   # handed to the waiter
            result["error"] = e
    t = threading.Thread(target=target, name="msb-startup", daemon=True)
    t.start()

    def wait():
        t.join()
        if "error" in result:
            raise result["error"]
        return result.get("value")
    return wait


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m vmm.sandbox.supervisor")
    p.add_argument("name")
    p.add_argument("--ready-fd", type=int, default=None)
    p.add_argument("--run-command", action="store_true")
    p.add_argument("--runtime-dir", default=None,
                   help="where the run's sockets go (the caller sets TMPDIR to it as well)")
    a = p.parse_args(argv)
    sup = Supervisor(a.name, a.ready_fd, a.run_command, a.runtime_dir)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda *_: sup.stop_requested.set())
    print(f"{utc_now()} supervisor {os.getpid()} for {a.name}", flush=True)
    try:
        return sup.run()
    except Exception as e:   # its log is the only place this can go
        import traceback
        traceback.print_exc()
        sup._report(f"error: {e}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
