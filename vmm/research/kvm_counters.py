"""KVM's own counters for the one VM this process runs, from debugfs: every exit, those KVM
handled itself (interrupt windows, emulated instructions, page faults, in-kernel PIT and
APIC accesses) as well as the ones it passed up to us (the `exits` of a sample count only
those). The kvm engine's lab runs record them where /sys/kernel/debug/kvm is readable
(the nested tier's L1 mounts it); elsewhere they are simply absent.

KVM keeps a directory per VM, named <pid>-<vm fd>, with each counter summed over the
VM's vCPUs; it vanishes when the VM is destroyed, so a run reads it before stopping.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, Optional

KVM_DEBUGFS = Path("/sys/kernel/debug/kvm")


def read(pid: Optional[int] = None, root: Path = KVM_DEBUGFS) -> Dict[str, int]:
    """{counter: value} for the process's one VM; {} where debugfs is not readable or the
    process has no VM or more than one (which VM is ours would be a guess)."""
    prefix = f"{os.getpid() if pid is None else pid}-"
    try:
        dirs = [d for d in root.iterdir() if d.name.startswith(prefix)]
    except OSError:
        return {}
    if len(dirs) != 1:
        return {}
    out = {}
    try:
        entries = list(dirs[0].iterdir())
    except OSError:
        return {}
    for f in entries:
        try:
            if f.is_file():
                fields = f.read_text().split()
                if len(fields) == 1:  # histograms (halt_poll_*_hist) print a row of buckets
                    out[f.name] = int(fields[0])
        except (OSError, ValueError):
            continue  # not a counter (or not readable)
    return out


def is_count(name: str) -> bool:
    """Whether a counter counts events (exits, injections, faults), not nanoseconds
    (halt_wait_ns, halt_poll_*_ns): only counts are ranked together in a report."""
    return not name.endswith("_ns")


def split(points: Dict[str, Dict[str, int]]) -> Dict[str, Dict[str, int]]:
    """Counter differences between consecutive readings: {"to_ready": {...}, ...} from
    {"to_ready": reading, "ready_to_first_exec": reading} in order, each phase named for
    the stretch that ends at its reading. Counters that stay 0 throughout are left out;
    one missing from a reading counts 0."""
    names = sorted({k for r in points.values() for k in r if any(p.get(k) for p in points.values())})
    out, before = {}, {}
    for phase, reading in points.items():
        out[phase] = {k: reading.get(k, 0) - before.get(k, 0) for k in names}
        before = reading
    return out
