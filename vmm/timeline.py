"""When this process started, on CLOCK_MONOTONIC, so a boot timeline can show how long the
interpreter and the imports took before Machine() was even called.

The kernel keeps each task's start in /proc/self/stat (field 22, `starttime`) as clock ticks
since boot on CLOCK_BOOTTIME. The timeline is on CLOCK_MONOTONIC, which differs from
CLOCK_BOOTTIME only by the time spent suspended, so reading both clocks "now" converts one
to the other. Resolution is one clock tick (1/SC_CLK_TCK, 10 ms on Linux): the kernel
truncates, so the value is at most one tick earlier than the true start.

This replaces psutil, whose import alone cost 10-40 ms of every `python -m vmm` start;
psutil (if installed) is only the fallback when /proc cannot be read.
"""
from __future__ import annotations

import os
import time

_STARTTIME_FIELD = 22  # 1-based, as in proc(5)
_cached = None


def _starttime_ticks(stat: bytes) -> int:
    # Field 2 (comm) is in parentheses and may itself hold spaces or ')': count fields from
    # the last ')' on, where field 3 begins.
    rest = stat[stat.rindex(b")") + 2:].split()
    return int(rest[_STARTTIME_FIELD - 3])


def _from_proc() -> int:
    with open("/proc/self/stat", "rb") as f:
        ticks = _starttime_ticks(f.read())
    hz = os.sysconf("SC_CLK_TCK")
    age_ns = time.clock_gettime_ns(time.CLOCK_BOOTTIME) - ticks * 1_000_000_000 // hz
    return time.monotonic_ns() - age_ns


def _from_psutil() -> int:
    import psutil  # slow to import; only when /proc failed

    wall_age = time.time() - psutil.Process().create_time()
    return time.monotonic_ns() - int(wall_age * 1e9)


def process_start_ns():
    """This process's start on CLOCK_MONOTONIC (ns), or None if no source works."""
    global _cached
    if _cached is None:
        for source in (_from_proc, _from_psutil):
            try:
                _cached = source()
                break
            except Exception:  # no /proc, no CLOCK_BOOTTIME, no psutil: try the next one
                continue
    return _cached
