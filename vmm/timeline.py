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


# Every phase a boot timeline may hold, in the order a boot passes them (CLOCK_MONOTONIC ns):
#   process_start     this Python process started (above)
#   machine_created   Machine() was called
#   vm_created        kvm: the VM and its vCPUs exist; qemu: qemu-system-x86_64 was spawned
#   kernel_loaded     kvm: kernel, initrd and command line are in guest memory
#   first_vcpu_entry  kvm: the first KVM_RUN
#   first_console     qemu: the first byte on the serial console
#   boot_timer        the guest wrote the boot-timer port (init started)
#   exit              the VM ended
# A phase an engine cannot observe is absent, never zero.
PHASES = ("process_start", "machine_created", "vm_created", "kernel_loaded", "first_vcpu_entry",
          "first_console", "boot_timer", "exit")


def ordered(phases: dict) -> dict:
    """phases in PHASES order, unset (0/None) ones dropped, unknown ones last."""
    known = {p: phases[p] for p in PHASES if phases.get(p)}
    known.update((p, v) for p, v in phases.items() if p not in known and v)
    return known
