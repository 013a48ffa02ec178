"""A Docker daemon of the test's own (Debian's docker.io 20.10), with vmm-runtime added as
the runtime "vmm", in network and mount namespaces of its own:

    with PrivateDockerd(directory, runtime_program) as d:
        subprocess.run(d.docker("run", "--runtime", "vmm", "--rm", IMAGE, "true"))
        d.in_netns(["python3", "-c", ...])     # from the host side of Docker's bridge

Everything it keeps is under directory (--data-root, --exec-root, its socket, its pid
file, the containerd it starts and manages itself). Its docker0 bridge and the
containers' veths live in its own network namespace (`unshare --net`), so the bridge
network is real but reaches nothing outside: no iptables rules are needed (a host-side
peer on docker0 reaches a container's address directly), and none are written. Its mounts
(the image layers, the namespaces it pins) live in its own mount namespace and go with it.

The programs are named by path: /usr/local/bin/docker on this machine is an unrelated
28.x client, and PATH is reduced to the system directories so dockerd finds Debian's
containerd, runc and docker-init, not something earlier on the caller's PATH.

close() stops the daemon and waits until its process tree is gone (dockerd, its
containerd, the shims, our monitors); leftovers() names any that are not.
"""
from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import List, Optional

DOCKER = "/usr/bin/docker"
DOCKERD = "/usr/sbin/dockerd"
SYSTEM_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
START_TIMEOUT_S = 60
STOP_TIMEOUT_S = 60
STORAGE_DRIVERS = ("overlay2", "vfs")   # vfs: where the backing filesystem has no overlay


def unavailable() -> Optional[str]:
    """Why this machine cannot run the private daemon, or None."""
    for path, package in ((DOCKER, "docker.io"), (DOCKERD, "docker.io"),
                          ("/usr/bin/containerd", "containerd"), ("/usr/bin/unshare", "util-linux"),
                          ("/usr/bin/nsenter", "util-linux")):
        if not os.path.exists(path):
            return f"no {path} (apt-get install {package})"
    if os.geteuid() != 0:
        return "dockerd needs root"
    return None


class DockerdError(Exception):
    pass


class PrivateDockerd:
    def __init__(self, directory: Path, runtime_program: Path, runtime_name: str = "vmm"):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.socket = self.dir / "docker.sock"
        self.log_path = self.dir / "dockerd.log"
        self.runtime_program, self.runtime_name = runtime_program, runtime_name
        # the caller's HOME: the runtime dockerd starts finds the guest caches (~/.cache/vmm)
        self.env = {"PATH": SYSTEM_PATH, **{k: os.environ[k] for k in ("HOME",) if k in os.environ}}
        self.proc: Optional[subprocess.Popen] = None
        self.storage_driver = None
        self._tree: List[int] = []
        last = ""
        for driver in STORAGE_DRIVERS:
            try:
                self._start(driver)
                self.storage_driver = driver
                break
            except DockerdError as e:
                last = str(e)
                self.close()
        else:
            raise DockerdError(f"dockerd did not start with any storage driver: {last}")

    def _start(self, driver: str) -> None:
        log = open(self.log_path, "ab")
        argv = ["unshare", "--net", "--mount", "--propagation", "private", DOCKERD,
                "--data-root", str(self.dir / f"data-{driver}"), "--exec-root", str(self.dir / "exec"),
                "--pidfile", str(self.dir / "dockerd.pid"), "-H", f"unix://{self.socket}",
                "--storage-driver", driver, "--iptables=false", "--ip-masq=false",
                "--ip-forward=false", "--exec-opt", "native.cgroupdriver=cgroupfs",
                "--add-runtime", f"{self.runtime_name}={self.runtime_program}"]
        try:
            # unshare execs dockerd: this pid is the daemon's
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                         env=self.env, start_new_session=True)
        finally:
            log.close()
        deadline = time.monotonic() + START_TIMEOUT_S
        while self.run("version", check=False).returncode != 0:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise DockerdError(f"dockerd ({driver}) did not come up:\n{self.log_tail()}")
            time.sleep(0.3)
        info = self.run("info", "--format", "{{.Driver}} {{json .Runtimes}}").stdout
        if not info.startswith(driver + " ") or f'"{self.runtime_name}"' not in info:
            raise DockerdError(f"dockerd runs with {info!r}, not {driver} and {self.runtime_name}")
        # loopback in the daemon's namespace, for servers a test starts beside it
        self.in_netns(["ip", "link", "set", "lo", "up"], check=True)

    # --- using it --------------------------------------------------------------------------
    def docker(self, *args: str) -> List[str]:
        return [DOCKER, "-H", f"unix://{self.socket}", *args]

    def run(self, *args: str, check: bool = True, timeout: float = 180, input=None):
        r = subprocess.run(self.docker(*args), capture_output=True, text=True, timeout=timeout,
                           env=self.env, input=input, stdin=None if input is not None else subprocess.DEVNULL)
        if check and r.returncode != 0:
            raise DockerdError(f"docker {' '.join(args)}: exit {r.returncode}: {r.stderr.strip()}")
        return r

    @property
    def netns(self) -> str:
        return f"/proc/{self.proc.pid}/ns/net"

    def in_netns(self, argv: List[str], check: bool = False, timeout: float = 60):
        """argv in the daemon's network namespace (the host side of its docker0 bridge)."""
        r = subprocess.run(["nsenter", f"--net={self.netns}", "--", *argv], capture_output=True,
                           text=True, timeout=timeout)
        if check and r.returncode != 0:
            raise DockerdError(f"{argv} in dockerd's namespace: {r.stderr.strip()}")
        return r

    def log_tail(self, n: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    # --- stopping it -----------------------------------------------------------------------
    def tree(self) -> List[int]:
        """Every live process the daemon left or started (zombies excluded): its session
        (dockerd, containerd, the shims), whatever names its directory on the command line
        (our monitors, which start sessions of their own: their --root is under it), and
        every descendant of those (the VMs and their helpers)."""
        if self.proc is None:
            return []
        sid, mark = self.proc.pid, str(self.dir).encode()
        seeds, children = set(), {}
        for d in os.listdir("/proc"):
            if not d.isdigit():
                continue
            try:
                stat = Path(f"/proc/{d}/stat").read_text()
                with open(f"/proc/{d}/cmdline", "rb") as f:
                    cmd = f.read()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()   # state, ppid, pgrp, session, ...
            if fields[0] == "Z":
                continue
            children.setdefault(int(fields[1]), []).append(int(d))
            if int(fields[3]) == sid or mark in cmd:
                seeds.add(int(d))
        found, todo = set(seeds), list(seeds)
        while todo:
            for child in children.get(todo.pop(), []):
                if child not in found:
                    found.add(child)
                    todo.append(child)
        found.discard(os.getpid())
        return sorted(found)

    def leftovers(self) -> List[str]:
        out = []
        for pid in self.tree():
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            out.append(f"{pid}: {cmd[:200]}")
        return out

    def close(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)   # dockerd stops its containerd itself
            try:
                self.proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while self.tree() and time.monotonic() < deadline:
            time.sleep(0.3)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
