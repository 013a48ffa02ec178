"""One timed boot of our own VMM: in this process, the test init through Machine or the
agent through Sandbox (init=agent); or in a fresh `python -m vmm boot` process, timed from
its spawn like a baseline (process=fresh). Returns a sample (samples.py).

The kvm engine's exits are split exactly at the boot-timer mark: the C core copies its
exit counters at the guest's boot-timer write (csrc/boot_timer.c; Machine.inspect()'s
exit_stats_at_boot_timer), that write's own exit counted before the mark. The qemu engine
has no exits (TCG).
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Optional

from ..devices import Disk
from ..machine import Machine
from . import guest_files, kvm_counters
from .phases import INITCALL_CMDLINE, ReadyLineWatch, agent_steps, guest_phases, \
    host_phases, ready_boottime_ns
from .samples import keep_initcalls, new_sample, split_exits
from .spawned import run_process

HOST_MARKS = ("vm_created", "kernel_loaded", "first_vcpu_entry", "boot_timer")


def boot_test_init(cfg, engine: str, *, initrd: str, root_disk: Optional[str], cmdline: str,
                   initcalls: int, timeout: float) -> dict:
    """Boot the test init (initramfs, or on root_disk) and time it to the READY line."""
    extra = [cmdline] if cmdline else []
    if initcalls:
        extra.append(INITCALL_CMDLINE)
    disks = ()
    if root_disk is not None:
        extra.insert(0, guest_files.DISK_ROOT_CMDLINE)
        disks = (Disk(root_disk, read_only=True, serial="root"),)
        initrd = None
    watch = ReadyLineWatch(time.monotonic_ns)
    m = Machine(guest_files.kernel_for(cfg.kernel, cfg.kernel_config), initrd=initrd,
                cmdline=" ".join(extra),
                cpus=cfg.cpus, memory_mib=cfg.memory, engine=engine, console=watch.feed,
                hugepages=cfg.hugepages, disks=disks)
    sample = new_sample(f"vmm-{m.engine}")
    with m:
        m.start()
        timed_out = m.wait(timeout) is None
        in_kvm = kvm_counters.read()  # the guest has ended; its VM is not destroyed yet
        status = m.stop()  # the guest's own end, or the host stop at the timeout
        timeline, exits = m.timeline, m.exit_stats
        exits_at_init = m.inspect().exit_stats_at_boot_timer
    marks = {"request": m.created_ns, **{k: timeline[k] for k in HOST_MARKS if k in timeline}}
    if watch.seen_ns:
        marks["ready_line"] = watch.seen_ns
    console = m.console
    _fill(sample, marks, status, console.decode("utf-8", "replace"), initcalls,
          guest_phases(init_boottime_ns=ready_boottime_ns(console)))
    if exits:
        sample["exits"] = split_exits(exits, exits_at_init)
    if in_kvm:
        sample["kvm_counters"] = kvm_counters.split({"whole_run": in_kvm})
    if watch.seen_ns is None:
        sample["ok"] = False
        sample["error"] = sample["error"] or (
            f"no READY line from the test init within {timeout:g} s" if timed_out
            else f"no READY line from the test init ({sample['status']})")
    return sample


def boot_agent(cfg, engine: str, *, image: str, cmdline: str, initcalls: int,
               timeout: float) -> dict:
    """A Sandbox on the busybox image to its first exec (`true`), then stopped."""
    from ..sandbox import Sandbox

    extra = " ".join(x for x in (cmdline, INITCALL_CMDLINE if initcalls else "") if x)
    request = time.monotonic_ns()
    # Looked up inside the clock, as Sandbox.create() looks up the project's own kernel
    # (kernel=None), so that a fragment's kernel and the project's compare alike; the run
    # built it before its first round.
    kernel = guest_files.kernel_for(None, cfg.kernel_config) if cfg.kernel_config else cfg.kernel
    sb = Sandbox.create(image, engine=engine, cpus=cfg.cpus, memory_mib=cfg.memory,
                        kernel=kernel, network=None, boot_timeout=timeout,
                        extra_cmdline=extra)
    try:
        # Where create() returned: the agent's READY is in; splits the exits after the boot
        # timer into the agent's start and the first exec.
        exits_at_ready = sb.machine.exit_stats
        in_kvm_at_ready = kvm_counters.read()
        r = sb.exec(["true"], timeout=timeout)
        first_exec = time.monotonic_ns()
        in_kvm = kvm_counters.read()
        t = sb.timeline
        sample = new_sample(f"vmm-{sb.engine}")
        console = sb.console
        exits = sb.machine.exit_stats
        exits_at_init = sb.machine.inspect().exit_stats_at_boot_timer
    finally:
        status = sb.stop()
    marks = {"request": t.get("sandbox_create", request),
             **{k: t[k] for k in HOST_MARKS + ("agent_ready", "ready_received") if t.get(k)},
             "first_exec": first_exec}
    g = t.get("guest", {})
    guest = guest_phases(agent_start_ns=g.get("agent_start_ns"), agent_ready_ns=g.get("ready_ns"))
    guest.update(agent_steps(console))  # with vmm.debug=1 in the command line
    _fill(sample, marks, status, console, initcalls, guest)
    if r.exit_code != 0:
        sample["ok"], sample["error"] = False, f"`true` exited {r.exit_code} in the guest"
    if exits:  # up to the first exec (the sandbox still runs; its stop is not counted)
        sample["exits"] = split_exits(exits, exits_at_init, exits_at_ready)
    if in_kvm_at_ready and in_kvm:
        sample["kvm_counters"] = kvm_counters.split({"to_ready": in_kvm_at_ready,
                                                      "ready_to_first_exec": in_kvm})
    return sample


def _fill(sample: dict, marks: dict, status, console: str, initcalls: int, guest: dict) -> None:
    request = marks["request"]
    sample["marks_ms"] = {k: (v - request) / 1e6 for k, v in marks.items()}
    sample["phases_ms"] = host_phases(marks)
    sample["guest_ms"] = guest
    sample["status"] = f"{status.kind}" + (f": {status.message}" if status.message else "")
    if initcalls:
        keep_initcalls(sample, console, initcalls)


def boot_fresh_process(cfg, engine: str, *, initrd: Optional[str], cmdline: str, initcalls: int,
                       timeout: float, workdir: str) -> dict:
    """`python -m vmm boot` in a new process: its spawn is the request, its own timeline
    (written with --timeline-out on the shared CLOCK_MONOTONIC) gives the inner marks,
    and its console on stdout the READY line, read exactly as a baseline's."""
    timeline_file = os.path.join(workdir, "fresh-timeline.json")
    if os.path.exists(timeline_file):
        os.unlink(timeline_file)
    extra = " ".join(x for x in (cmdline, INITCALL_CMDLINE if initcalls else "") if x)
    argv = [sys.executable, "-m", "vmm", "boot",
            "--kernel", guest_files.kernel_for(cfg.kernel, cfg.kernel_config),
            *(["--initrd", initrd] if initrd else []), "--engine", engine, "--memory", str(cfg.memory),
            "--cpus", str(cfg.cpus), "--timeout", f"{timeout:g}", "--cmdline", extra,
            "--timeline-out", timeline_file]
    reported: dict = {}

    def inner_marks(_stdout_tail: bytes) -> dict:  # it reports through timeline_file
        try:
            with open(timeline_file) as f:
                reported.update(json.load(f))
        except (OSError, ValueError):
            return {}  # it died before writing: the sample says so (no READY, its status)
        t = reported.get("timeline_ns", {})
        return {k: t[k] for k in ("machine_created",) + HOST_MARKS if t.get(k)}

    # The child imports this same vmm, wherever it was imported from here.
    package_parent = str(Path(__file__).resolve().parents[2])
    env_path = os.pathsep.join(x for x in (package_parent, os.environ.get("PYTHONPATH")) if x)
    sample = run_process(f"vmm-{engine}-fresh", argv, initcalls=initcalls, timeout=timeout + 10,
                         more_marks=inner_marks, env=dict(os.environ, PYTHONPATH=env_path))
    if reported.get("engine"):
        sample["system"] = f"vmm-{reported['engine']}-fresh"
    if reported.get("exit_stats"):
        sample["exits"] = split_exits(reported["exit_stats"],
                                       reported.get("exit_stats_at_boot_timer") or {})
    return sample
