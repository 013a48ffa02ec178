"""Boot phases: which instants (marks) a run records, how they become phase durations,
and what the guest's console says about its own clock (the READY line, initcalls).

A run records marks on the host's CLOCK_MONOTONIC (ns) in MARKS order. Every run has a
`request` mark: when the caller asked for a VM (Machine() or Sandbox.create() for ours,
the spawn of the baseline's process). Python's own start-up is not in any phase of an
in-process run; a baseline process's start-up is (it is part of what that VMM costs).

A phase is named for the mark it ends at and lasts from the previous mark present in
that run, so an engine that cannot observe a mark (the qemu engine has no first vCPU
entry) simply has one longer phase before the next. `total` runs from `request` to the
last "ready" mark the run reached (first exec, else agent ready, else the READY line).

Guest-side phases come from the guest's own clock (CLOCK_BOOTTIME, which starts with the
guest kernel's timekeeping, a few ms into the kernel's start):
    guest_kernel_to_init   the test init's READY boottime_ns, or the agent's start time
    guest_init_to_ready    agent start to the agent's READY (agent runs only)
    agent:<step>           with `--cmdline vmm.debug=1` (agent runs): each step of the
                           agent's start-up (early_mounts, image_dev, image, data,
                           overlay, switch_root, later_mounts, volumes, lo, net_dev,
                           net_conf, net_arp, net, ready, dialed: guest/agent/pid1.c),
                           from the previous step, read from its `agent: steps` line.
                           (With TCG's guest keeping time by jiffies, before the qemu
                           engine gave it its TSC frequency, these moved in 4 ms steps.)
"""
from __future__ import annotations

import re
from typing import Dict, Iterable, List, Optional, Tuple

# Host marks, in the order a boot passes them.
#   request           Machine()/Sandbox.create() called; the baseline's process spawned
#   machine_created   a fresh `python -m vmm boot` process (--process fresh) called Machine():
#                     the interpreter's start-up and imports end here; the compiled
#                     launcher (--process launcher) entered main(): exec and loading end here
#   vm_created        kvm: VM and vCPUs exist; qemu engine: QEMU spawned
#   kernel_loaded     kvm: kernel, initrd and command line in guest memory
#   first_vcpu_entry  kvm: the first KVM_RUN
#   boot_timer        the guest's init wrote the boot-timer port (0x440)
#   ready_line        the test init's READY line reached the host (serial console)
#   agent_ready       the agent's READY, converted from the guest's clock (agent runs)
#   ready_received    the host read the agent's READY (agent runs)
#   first_exec        `true` run through the agent returned (agent runs)
MARKS = ("request", "machine_created", "vm_created", "kernel_loaded", "first_vcpu_entry", "boot_timer",
         "ready_line", "agent_ready", "ready_received", "first_exec")
READY_MARKS = ("first_exec", "ready_received", "ready_line")
GUEST_PHASES = ("guest_kernel_to_init", "guest_init_to_ready")
TOTAL = "total"

_READY_LINE = re.compile(rb"READY boottime_ns=(\d+)")
_AGENT_STEPS = re.compile(r"agent: steps((?: \w+=\d+)+)")
AGENT_STEP_PREFIX = "agent:"
# initcall_debug: "initcall <fn>+0x0/0x20 returned 0 after 123 usecs" (6.1)
_INITCALL = re.compile(r"initcall ([\w.]+)(?:\+0x[0-9a-f]+/0x[0-9a-f]+)?(?: \[[\w]+\])? "
                       r"returned (-?\d+) after (\d+) usecs")
# The kernel command line a run adds for --initcalls: initcall_debug prints at KERN_DEBUG,
# which only reaches the console when the log level lets it through.
INITCALL_CMDLINE = "initcall_debug ignore_loglevel"


def host_phases(marks_ns: Dict[str, int]) -> Dict[str, float]:
    """Phase durations in ms from a run's marks (ns): one per mark after `request`, from
    the previous mark present, plus `total`. Marks out of order give a negative phase,
    reported as measured rather than hidden."""
    present = [(m, marks_ns[m]) for m in MARKS if marks_ns.get(m)]
    if not present or present[0][0] != "request":
        return {}
    phases = {}
    for (_, t_prev), (name, t) in zip(present, present[1:]):
        phases[name] = (t - t_prev) / 1e6
    end = next((marks_ns[m] for m in READY_MARKS if marks_ns.get(m)), None)
    if end is not None:
        phases[TOTAL] = (end - marks_ns["request"]) / 1e6
    return phases


def ready_boottime_ns(console: bytes) -> Optional[int]:
    """The test init's CLOCK_BOOTTIME at init start, from its READY line; None if absent."""
    m = _READY_LINE.search(console)
    return int(m.group(1)) if m else None


def guest_phases(*, init_boottime_ns: Optional[int] = None, agent_start_ns: Optional[int] = None,
                 agent_ready_ns: Optional[int] = None) -> Dict[str, float]:
    """Guest-side phases in ms from the guest clock's values (ns); absent ones are left out."""
    out = {}
    start = agent_start_ns or init_boottime_ns
    if start:
        out["guest_kernel_to_init"] = start / 1e6
    if agent_start_ns and agent_ready_ns:
        out["guest_init_to_ready"] = (agent_ready_ns - agent_start_ns) / 1e6
    return out


def agent_steps(console: str) -> Dict[str, float]:
    """The agent's start-up steps (vmm.debug=1) as durations in ms, each from the step
    before it (the first from the agent's start), named AGENT_STEP_PREFIX + step."""
    m = _AGENT_STEPS.search(console)
    if not m:
        return {}
    out, prev = {}, 0
    for item in m.group(1).split():
        name, _, us = item.partition("=")
        out[AGENT_STEP_PREFIX + name] = (int(us) - prev) / 1000
        prev = int(us)
    return out


def parse_initcalls(console: str) -> List[Tuple[str, float]]:
    """Every initcall the kernel's initcall_debug reported: (function, ms), in boot order."""
    return [(m.group(1), int(m.group(3)) / 1000) for m in _INITCALL.finditer(console)]


def slowest_initcalls(calls: Iterable[Tuple[str, float]], n: int) -> List[Tuple[str, float]]:
    return sorted(calls, key=lambda c: -c[1])[:n]


class ReadyLineWatch:
    """Fed the console as it arrives, notes when the READY line's first bytes came.

    Chunks may split the marker anywhere, so the last few bytes of the previous chunk are
    kept and searched with the next."""
    MARKER = b"READY boottime_ns="

    def __init__(self, clock):
        self._clock = clock
        self._carry = b""
        self.seen_ns: Optional[int] = None

    def feed(self, data: bytes) -> None:
        if self.seen_ns is not None:
            return
        now = self._clock()
        if self.MARKER in self._carry + data:
            self.seen_ns = now
        self._carry = (self._carry + data)[-(len(self.MARKER) - 1):]


def metric_order(metric: str) -> tuple:
    """Sort key for tables and plots: host phases in boot order, total, guest phases, the rest."""
    if metric in MARKS:
        return (0, MARKS.index(metric), metric)
    if metric == TOTAL:
        return (1, 0, metric)
    if metric in GUEST_PHASES:
        return (2, GUEST_PHASES.index(metric), metric)
    if metric.startswith(AGENT_STEP_PREFIX):
        return (2, len(GUEST_PHASES))  # ties: a stable sort keeps the agent's own order
    return (3, 0, metric)
