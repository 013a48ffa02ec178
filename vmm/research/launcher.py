"""Ours as the compiled launcher (`bench boot --process launcher`): a fresh
`vmm/bin/vmm-boot --timeline` per run, timed from its spawn like a baseline, so neither
CPython's start-up nor the Machine layer is in it: the C core as a process of its own.

The launcher boots on the kvm engine only, with no virtio devices and no agent: it takes
init=test, root=initramfs, no hugepages (settings.py refuses the rest before anything
boots). After the guest ends it prints its timeline on stdout (see csrc/launcher/vmm_boot.c):

    phase                 ms since start   delta ms   monotonic ns
    process_start                 0.000          -   123456789000
    machine_created               0.912      0.912   123456789912
    ...
    exit reason           count
    io                       12
    exits to boot_timer   count
    io                        3

The marks come from the CLOCK_MONOTONIC column (the host's clock, shared with the
parent); process_start is left out (/proc's start time is truncated to a clock tick, the
spawn is the better request) and so is exit (no phase ends there).
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional, Tuple

from ..errors import ConfigError
from . import guest_files
from .phases import INITCALL_CMDLINE
from .samples import split_exits
from .spawned import run_process

# Built by setup.py next to the extension (package data).
LAUNCHER = Path(__file__).resolve().parents[1] / "bin" / "vmm-boot"
# What a launcher run can report: the marks it shares with phases.MARKS.
LAUNCHER_MARKS = ("machine_created", "vm_created", "kernel_loaded", "first_vcpu_entry",
                  "boot_timer")
_PHASE_HEADER = "phase"
_EXITS_HEADER = "exit reason"
_EXITS_AT_INIT_HEADER = "exits to boot_timer"


def launcher_path() -> str:
    """The built launcher; ConfigError saying how to build it when it is not there."""
    if not LAUNCHER.is_file():
        raise ConfigError(f"process=launcher needs the compiled launcher, which is missing: "
                          f"{LAUNCHER} (setup.py builds it with the C core: "
                          f"python3 setup.py build_ext --inplace)")
    return str(LAUNCHER)


def parse_timeline(stdout: str) -> Tuple[Dict[str, int], Dict[str, int], Dict[str, int]]:
    """(marks: {phase: CLOCK_MONOTONIC ns}, exits: {reason: n}, exits to the boot timer)
    from the tables `vmm-boot --timeline` prints after the console. A guest's console
    comes first and could print look-alike lines, so each table is the last of its kind;
    rows that do not parse end a table. Empty dicts for what is not there."""
    lines = stdout.splitlines()
    marks: Dict[str, int] = {}
    for name, fields in _table(lines, _PHASE_HEADER, 4):
        if name in LAUNCHER_MARKS and fields[3].isdigit():
            marks[name] = int(fields[3])
    exits = {name: int(f[1]) for name, f in _table(lines, _EXITS_HEADER, 2) if f[1].isdigit()}
    at_init = {name: int(f[1]) for name, f in _table(lines, _EXITS_AT_INIT_HEADER, 2)
               if f[1].isdigit()}
    return marks, exits, at_init


def _table(lines, header: str, nfields: int):
    """(first field, fields) of each row under the last line that starts with header."""
    starts = [i for i, line in enumerate(lines) if line.startswith(header + " ")]
    if not starts:
        return
    for line in lines[starts[-1] + 1:]:
        fields = line.split()
        if len(fields) != nfields:
            return
        yield fields[0], fields


def launcher_argv(cfg, *, initrd: Optional[str], cmdline: str, initcalls: int,
                  timeout: float) -> list:
    extra = " ".join(x for x in (cmdline, INITCALL_CMDLINE if initcalls else "") if x)
    return [launcher_path(), "--kernel", guest_files.kernel_for(cfg.kernel, cfg.kernel_config),
            *(["--initrd", initrd] if initrd else []), "--mem", str(cfg.memory),
            "--cpus", str(cfg.cpus), "--timeout", f"{timeout:g}", "--cmdline", extra,
            "--timeline"]


def boot_launcher(cfg, *, initrd: Optional[str], cmdline: str, initcalls: int,
                  timeout: float) -> dict:
    """One run of `vmm-boot --timeline`: a sample whose marks are the launcher's own,
    its exits split at the boot timer as the C core counted them."""
    argv = launcher_argv(cfg, initrd=initrd, cmdline=cmdline, initcalls=initcalls,
                         timeout=timeout)
    reported: dict = {}

    def inner_marks(stdout_tail: bytes) -> dict:
        marks, exits, at_init = parse_timeline(stdout_tail.decode("utf-8", "replace"))
        reported.update(exits=exits, at_init=at_init)
        return marks

    sample = run_process("vmm-kvm-launcher", argv, initcalls=initcalls, timeout=timeout + 10,
                         more_marks=inner_marks)
    if reported.get("exits"):
        # The launcher prints nonzero counts only: every reason, as the in-process runs have.
        from ..engines.kvm import exit_reasons
        every = {r: 0 for r in exit_reasons()}
        sample["exits"] = split_exits({**every, **reported["exits"]}, reported["at_init"])
    return sample
