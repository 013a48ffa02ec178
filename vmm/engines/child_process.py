"""Child processes that end with their owner: QEMU and passt must not outlive the process
that started them, even when that process is killed with SIGKILL and runs no cleanup.

    proc = spawn([qemu, ...], stdin=subprocess.PIPE, ...)   # subprocess.Popen's arguments

The mechanism is Linux's parent-death signal: the child, between fork and exec, asks the
kernel (prctl PR_SET_PDEATHSIG) for SIGKILL when its parent dies. Two details decide
how it is used:

- The "parent" the kernel watches is the *thread* that forked, not the process: a child
  spawned from a short-lived thread (a request handler, an asyncio executor) would be
  killed when that thread returns. So every child is forked by one long-lived thread of
  our own (the spawner below), which ends only when the whole process does.
- The owner can die between fork and the prctl: the child then checks that its parent is
  still the process that forked it and exits at once if not.

Why not a pipe the child watches: QEMU and passt are programs we do not write, and a
wrapper process per child would cost a fork+exec on every boot. Why not a cgroup: it
needs a delegated cgroup tree, which an unprivileged user may not have.

The kernel clears the death signal when a child changes its credentials: passt, started
as root, switches itself to `nobody`. passt also exits when the other end of its socket
(held by our network device, in this process) closes, which a dead owner does; the test
in tests/test_msb_orphans.py checks both children go.
"""
from __future__ import annotations

import ctypes
import os
import queue
import signal
import subprocess
import threading
from typing import Optional

PR_SET_PDEATHSIG = 1
DEATH_SIGNAL = signal.SIGKILL

_libc = ctypes.CDLL(None, use_errno=True)   # loaded before any fork: nothing to load after


def _bind_to_parent(parent_pid: int) -> None:
    """preexec_fn: runs in the child after fork, before exec. Only async-signal-safe work:
    a prctl and a getppid."""
    _libc.prctl(PR_SET_PDEATHSIG, int(DEATH_SIGNAL), 0, 0, 0)
    if os.getppid() != parent_pid:
        os._exit(1)   # the owner died before the prctl took effect


class _Spawner:
    """One daemon thread that forks every child; it lives as long as the process."""

    def __init__(self):
        self._lock = threading.Lock()
        self._jobs: "queue.SimpleQueue" = queue.SimpleQueue()
        self._thread: Optional[threading.Thread] = None

    def _ensure_thread(self) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name="vmm-child-spawner",
                                                daemon=True)
                self._thread.start()

    def _loop(self) -> None:
        while True:
            fn, box, done = self._jobs.get()
            try:
                box["result"] = fn()
            except BaseException as e:   # handed back to the caller's thread
                box["error"] = e
            done.set()

    def run(self, fn):
        if threading.current_thread() is self._thread:
            return fn()
        self._ensure_thread()
        box: dict = {}
        done = threading.Event()
        self._jobs.put((fn, box, done))
        done.wait()
        if "error" in box:
            raise box["error"]
        return box["result"]


_spawner = _Spawner()


def spawn(argv, child_setup=None, **popen_kwargs) -> subprocess.Popen:
    """subprocess.Popen(argv, **popen_kwargs), with the child bound to this process: it
    gets SIGKILL when this process ends, however it ends.

    child_setup: runs in the child after fork, before the binding (the kernel clears the
    death signal on some credential changes: set last, it holds whatever the setup did);
    only system calls; to fail it writes its reason to fd 2 and calls os._exit()."""
    if "preexec_fn" in popen_kwargs:
        raise ValueError("spawn() sets preexec_fn itself")
    parent = os.getpid()

    def preexec():
        if child_setup is not None:
            child_setup()
        _bind_to_parent(parent)
    return _spawner.run(lambda: subprocess.Popen(argv, preexec_fn=preexec, **popen_kwargs))
