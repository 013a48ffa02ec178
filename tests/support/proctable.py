"""The host's process table as tests look at it, read straight from /proc: which processes
run a given command line, which run below a pid, and waiting until some are gone.

A zombie counts as gone everywhere here: it has ended and holds nothing; it only waits to
be reaped (by init, for an orphan whose parent died). The kernel's own children lists
(/proc/<pid>/task/<tid>/children) need CONFIG_PROC_CHILDREN, so the parent pid in each
process's stat line is what links them.

(vmm/research/proc_memory.py keeps a walker of its own: a package must not import tests.)
"""
from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional


@dataclass(frozen=True)
class Proc:
    pid: int
    comm: str      # the command name (at most 15 characters, as the kernel keeps it)
    ppid: int
    state: str     # the stat line's state letter: R, S, D, Z, ...


def _stat(pid: int) -> Optional[Proc]:
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except OSError:
        return None      # gone while we looked
    # The name, in parentheses, may itself hold spaces and parentheses: the fields after
    # the last ')' are fixed.
    head, _, rest = text.rpartition(")")
    fields = rest.split()
    return Proc(pid, head.split("(", 1)[1], int(fields[1]), fields[0])


def processes() -> Dict[int, Proc]:
    """Every process still running (zombies left out), by pid."""
    out = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            p = _stat(int(name))
            if p is not None and p.state != "Z":
                out[p.pid] = p
    return out


def alive(pid: int) -> bool:
    """pid runs (it exists and is not a zombie)."""
    p = _stat(pid)
    return p is not None and p.state != "Z"


def children(pid: int, recursive: bool = False) -> List[int]:
    """The running processes whose parent is pid (with recursive, at any depth below it)."""
    table = processes()
    found, todo = [], [pid]
    while todo:
        parent = todo.pop()
        kids = [p.pid for p in table.values() if p.ppid == parent]
        found += kids
        if recursive:
            todo += kids
    return sorted(found)


def named(pids: Iterable[int], *prefixes: str) -> List[int]:
    """Those of pids whose command name starts with one of prefixes."""
    out = []
    for pid in pids:
        p = _stat(pid)
        if p is not None and p.comm.startswith(prefixes):
            out.append(pid)
    return out


def with_command_line(*words: str) -> List[int]:
    """The running processes whose command line has every one of words as one of its
    arguments."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as f:
                argv = f.read().decode(errors="replace").split("\0")
        except OSError:
            continue
        if all(w in argv for w in words) and alive(int(name)):
            found.append(int(name))
    return sorted(found)


def wait_gone(pids: Iterable[int], timeout: float = 10.0) -> List[int]:
    """Wait until none of pids runs, up to timeout seconds; returns those still running
    (an empty list: all gone). timeout 0 looks once."""
    pids = list(pids)
    deadline = time.monotonic() + timeout
    while True:
        left = [p for p in pids if alive(p)]
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(0.02)


def vm_engine(pid: int) -> Optional[str]:
    """Which engine runs the VM that process pid owns: "kvm" when pid holds a KVM VM fd
    itself (the kvm engine runs the VM in its own process, on the C core's threads),
    "qemu" when a qemu-system process runs below it, None when neither (no VM, or gone)."""
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return None
    for fd in fds:
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") == "anon_inode:kvm-vm":
                return "kvm"
        except OSError:
            continue
    return "qemu" if named(children(pid, recursive=True), "qemu-system") else None


def end(proc, grace: float = 5.0) -> None:
    """Ends a subprocess.Popen a test started: SIGTERM, then SIGKILL if it is still there
    after grace seconds; reaped either way."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
