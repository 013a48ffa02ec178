"""VMM overhead on the kvm engine, against plain QEMU with KVM, on the same tiny guest.

The guest (guest/tests/port_exit.S) is a PVH ELF that both VMMs boot unchanged: it writes
123 to the boot-timer port 0x440, then 0 to isa-debug-exit at 0xf4 (QEMU exits, status 1),
then asks the i8042 for a reset (our VM ends). Its few CPL0 instructions cost nothing even
under the PVM software hypervisor, so what is measured is the VMM: set-up, first vCPU
entry, the guest's first port write, teardown.

    in-process   Machine(...) to first vCPU entry and to the boot-timer write, read from
                 the C core's timeline (CLOCK_MONOTONIC)
    fresh process  `python -m vmm boot --kernel G --engine kvm --json`: spawn to exit, and
                 spawn to boot_timer (the child's JSON timeline; the clock is system-wide)
    QEMU         the same guest under `qemu-system-x86_64 -M microvm -accel kvm`: spawn to
                 exit, and spawn to the write (an isa-debugcon on 0x440 forwards the byte)

Like is compared with like: the in-process times have no QEMU baseline (QEMU cannot run
in our process; they are set against their targets), and the fresh process alternates with
QEMU round by round, both timed from spawn. Warm-up rounds are never in a median.

Targets, reported, not asserted: in-process set-up to first vCPU entry under 1.5 ms (issue
13; issue 2 asked for 5 ms); a fresh process under half of QEMU's time to the same guest
write (issue 2).

    pytest benchmarks/bench_kvm_boot.py --benchmark-only
"""
import json
import pathlib
import shutil
import statistics
import subprocess
import sys
import time

import pytest

import vmm

ROOT = pathlib.Path(__file__).resolve().parents[1]
from spawn_timing import QEMU_DEBUG_EXIT_STATUS, qemu_microvm_argv, spawn_and_time  # noqa: E402
from support.kvm_guests import KVM_MARKS, guest_build  # noqa: E402  (shared with the kvm tests)

pytestmark = KVM_MARKS
needs_qemu = pytest.mark.skipif(not shutil.which("qemu-system-x86_64"),
                                reason="qemu-system-x86_64 is not installed")

MEMORY_MIB = 16
ROUNDS_IN_PROCESS = 30
ROUNDS_PROCESS = 15
WAIT_S = 20


@pytest.fixture(scope="module")
def guest(tmp_path_factory):
    return str(guest_build.build_guest("port_exit", tmp_path_factory.mktemp("guest")))


def _ms(seconds):
    return round(seconds * 1e3, 3)


def _median(samples):
    return statistics.median(samples)


def _record(benchmark, **intervals):
    """Per-round intervals (seconds) as medians in extra_info; returns the medians."""
    medians = {name: _median(v) for name, v in intervals.items()}
    for name, med in medians.items():
        benchmark.extra_info[f"{name}_median_ms"] = _ms(med)
        benchmark.extra_info[f"{name}_min_ms"] = _ms(min(intervals[name]))
    return medians


# --- in-process ----------------------------------------------------------------------------

def _boot_in_process(guest, samples):
    t0 = time.monotonic_ns()
    with vmm.Machine(guest, engine="kvm", memory_mib=MEMORY_MIB) as m:
        m.start()
        status = m.wait(WAIT_S)
        timeline = m.timeline
    assert status is not None and status.kind == "shutdown", status
    for phase in ("vm_created", "kernel_loaded", "first_vcpu_entry", "boot_timer", "exit"):
        samples.setdefault(phase, []).append((timeline[phase] - t0) / 1e9)


def test_kvm_in_process(benchmark, compare, guest):
    samples = {}
    benchmark.pedantic(_boot_in_process, args=(guest, samples), rounds=ROUNDS_IN_PROCESS,
                       iterations=1, warmup_rounds=1)
    # the warm-up round appended too: drop it
    samples = {k: v[1:] for k, v in samples.items()}
    med = _record(benchmark, **samples)
    compare(benchmark, "kvm: Machine() to first vCPU entry", "ours",
            "in-process (C timeline)", "target <= 1.5 ms", seconds=med["first_vcpu_entry"])
    compare(benchmark, "kvm: in-process to the port write", "ours",
            "Machine() (C timeline)", seconds=med["boot_timer"])


# --- a fresh `python -m vmm boot` process ------------------------------------------------------

def vmm_argv(guest):
    # sys.executable, not `python`: a version-manager shim (pyenv) would add its own start-up.
    return [sys.executable, "-m", "vmm", "boot", "--kernel", guest, "--engine", "kvm",
            "--memory", str(MEMORY_MIB), "--json"]


def _boot_fresh_process(guest, samples):
    """One `python -m vmm boot`; returns spawn to the guest's port write, keeps the rest."""
    t0 = time.monotonic_ns()
    p = subprocess.run(vmm_argv(guest), capture_output=True, timeout=WAIT_S)
    t_exit = time.monotonic_ns()
    assert p.returncode == 0, p.stderr.decode(errors="replace")
    report = json.loads(p.stdout)
    assert report["status"]["kind"] == "shutdown", report["status"]
    tl = report["timeline_ns"]
    samples.setdefault("spawn_to_boot_timer", []).append((tl["boot_timer"] - t0) / 1e9)
    samples.setdefault("spawn_to_first_vcpu_entry", []).append((tl["first_vcpu_entry"] - t0) / 1e9)
    samples.setdefault("spawn_to_machine", []).append((tl["machine_created"] - t0) / 1e9)
    # Cold: the first Machine() of a process also imports the engine and loads the C core.
    samples.setdefault("cold_machine_to_first_vcpu_entry", []).append(
        (tl["first_vcpu_entry"] - tl["machine_created"]) / 1e9)
    samples.setdefault("spawn_to_exit", []).append((t_exit - t0) / 1e9)
    return (tl["boot_timer"] - t0) / 1e9


# --- plain QEMU ------------------------------------------------------------------------------

def _boot_qemu(guest, samples):
    """One QEMU run of the same guest (-accel kvm); returns spawn to the guest's port write."""
    t0, t_write, t_exit, rc, out, err = spawn_and_time(qemu_microvm_argv(guest, "kvm", MEMORY_MIB),
                                                       WAIT_S, watch_byte=True)
    assert rc == QEMU_DEBUG_EXIT_STATUS, f"qemu exited {rc}: {err}"
    assert t_write is not None, f"no boot-timer byte from QEMU: {out!r} {err}"
    samples.setdefault("spawn_to_boot_timer", []).append((t_write - t0) / 1e9)
    samples.setdefault("spawn_to_exit", []).append((t_exit - t0) / 1e9)
    return (t_write - t0) / 1e9


@needs_qemu
def test_kvm_fresh_process_vs_qemu(benchmark, alternate, record_median, guest):
    """`python -m vmm boot` and QEMU in turn, round by round, both timed from spawn."""
    ours, theirs = {}, {}
    warmup = 1
    alternate(benchmark, "kvm: spawn to the guest's port write",
              ours=("python -m vmm boot (spawn)", lambda: _boot_fresh_process(guest, ours)),
              baseline=("qemu-system-x86_64 microvm -accel kvm",
                        lambda: _boot_qemu(guest, theirs)),
              rounds=ROUNDS_PROCESS, warmup=warmup, target="target ratio < 0.5")
    ours = {k: v[warmup:] for k, v in ours.items()}
    theirs = {k: v[warmup:] for k, v in theirs.items()}
    for side, samples in (("ours", ours), ("qemu", theirs)):
        for name, v in samples.items():
            benchmark.extra_info[f"{side}_{name}_median_ms"] = _ms(_median(v))
    # Same rounds, another interval: recorded for the ratio table, not alternated apart.
    record_median("kvm: spawn to process exit", "ours", "python -m vmm boot",
                  _median(ours["spawn_to_exit"]))
    record_median("kvm: spawn to process exit", "baseline", "qemu-system-x86_64 microvm",
                  _median(theirs["spawn_to_exit"]))
