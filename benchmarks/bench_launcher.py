"""Fresh-process boots: the compiled launcher vmm-boot against plain QEMU and against
`python -m vmm boot`, on the same tiny guest, alternated round by round.

The guest (guest/tests/port_exit.S) is the PVH ELF of bench_kvm_boot.py: it writes 123 to
the boot-timer port 0x440, then 0 to isa-debug-exit (QEMU exits, status 1), then resets
through the i8042 (our VM ends). Every contender is a fresh process spawned the same way
(subprocess.Popen with pipes); each round runs each contender once, the order rotating
from round to round so no side always runs first (after the other's cache misses or in
its wake). The warm-up round is run and dropped.

    vmm-boot        vmm/bin/vmm-boot --kernel G --mem 16 --timeline   (kvm engine, no Python)
    python          python -m vmm boot --kernel G --engine kvm --memory 16 --json
    qemu-tcg        qemu-system-x86_64 -M microvm -accel tcg   (the foundation issue's baseline)
    qemu-kvm        qemu-system-x86_64 -M microvm -accel kvm

Intervals, per round:
    spawn_to_port_write  parent's clock before Popen -> the guest's boot-timer write. Ours:
                  the child's own timeline (CLOCK_MONOTONIC is system-wide). QEMU: when the
                  parent reads the byte its isa-debugcon forwards on stdout, which adds a
                  pipe wake-up to QEMU's number (tens of us idle, more under load): the
                  comparison leans, slightly, in our favour.
    spawn_to_exit   parent's clock before Popen -> the child reaped (same method for all).

Target (issue 2, carried by issue 13 item 6): spawn to the port write under half of
QEMU's. Reported as ratios, not asserted. Numbers from a loaded 2-core machine are noisy;
the minima in extra_info show the unloaded floor.

    pytest benchmarks/bench_launcher.py --benchmark-only
"""
import json
import os
import pathlib
import shutil
import statistics
import sys

import pytest

import vmm
from spawn_timing import QEMU_DEBUG_EXIT_STATUS, qemu_microvm_argv, spawn_and_time
from support.kvm_guests import KVM_MARKS, guest_build

pytestmark = [*KVM_MARKS, pytest.mark.skipif(not shutil.which("qemu-system-x86_64"),
                                             reason="qemu-system-x86_64 is not installed")]

LAUNCHER = pathlib.Path(vmm.__file__).resolve().parent / "bin" / "vmm-boot"
MEMORY_MIB = 16
ROUNDS = 15
WAIT_S = 30


@pytest.fixture(scope="module")
def guest(tmp_path_factory):
    return str(guest_build.build_guest("port_exit", tmp_path_factory.mktemp("guest")))


def _launcher_phases(stdout):
    """{phase: CLOCK_MONOTONIC ns} from the table `vmm-boot --timeline` prints."""
    phases = {}
    for line in stdout.splitlines():
        fields = line.split()
        if len(fields) == 4 and fields[3].isdigit():
            phases[fields[0]] = int(fields[3])
    return phases


def boot_launcher(guest):
    t0, _, t_exit, rc, out, err = spawn_and_time(
        [str(LAUNCHER), "--kernel", guest, "--mem", str(MEMORY_MIB), "--timeline"], WAIT_S)
    assert rc == 0 and err.startswith("exit: shutdown"), f"vmm-boot exited {rc}: {err}"
    phases = _launcher_phases(out)
    assert "boot_timer" in phases, f"no boot_timer in vmm-boot's timeline: {out!r}"
    # where the time to the write goes: exec to main(), then the core's own phases
    breakdown = {f"to_{p}": phases[p] - t0
                 for p in ("machine_created", "vm_created", "kernel_loaded", "first_vcpu_entry")}
    return {"write": phases["boot_timer"] - t0, "exit": t_exit - t0, **breakdown}


def boot_python(guest):
    argv = [sys.executable, "-m", "vmm", "boot", "--kernel", guest, "--engine", "kvm",
            "--memory", str(MEMORY_MIB), "--json"]
    t0, _, t_exit, rc, out, err = spawn_and_time(argv, WAIT_S)
    assert rc == 0, f"python -m vmm boot exited {rc}: {err}"
    tl = json.loads(out)["timeline_ns"]
    return {"write": tl["boot_timer"] - t0, "exit": t_exit - t0,
            "to_machine_created": tl["machine_created"] - t0}


def boot_qemu(guest, accel):
    t0, t_write, t_exit, rc, out, err = spawn_and_time(qemu_microvm_argv(guest, accel, MEMORY_MIB), WAIT_S,
                                                   watch_byte=True)
    assert rc == QEMU_DEBUG_EXIT_STATUS, f"qemu ({accel}) exited {rc}: {err}"
    assert t_write is not None, f"no boot-timer byte from QEMU ({accel}): {out!r} {err}"
    return {"write": t_write - t0, "exit": t_exit - t0}


CONTENDERS = {
    "vmm-boot": boot_launcher,
    "python": boot_python,
    "qemu-tcg": lambda g: boot_qemu(g, "tcg"),
    "qemu-kvm": lambda g: boot_qemu(g, "kvm"),
}


def _one_round(guest, samples, counter):
    names = list(CONTENDERS)
    k = counter[0] % len(names)
    counter[0] += 1
    for name in names[k:] + names[:k]:  # rotate who goes first
        for what, ns in CONTENDERS[name](guest).items():
            samples.setdefault(name, {}).setdefault(what, []).append(ns / 1e9)


def _summary(values):
    v = sorted(values)
    return {"median_ms": round(statistics.median(v) * 1e3, 3), "min_ms": round(v[0] * 1e3, 3),
            "p90_ms": round(v[min(len(v) - 1, int(0.9 * len(v)))] * 1e3, 3), "n": len(v)}


def test_fresh_process_boot(benchmark, compare, guest):
    assert os.access(LAUNCHER, os.X_OK), f"{LAUNCHER} is missing: python3 setup.py build_ext --inplace"
    samples, counter = {}, [0]
    benchmark.pedantic(_one_round, args=(guest, samples, counter), rounds=ROUNDS, iterations=1,
                       warmup_rounds=1)
    # the warm-up round appended too: drop it
    samples = {n: {k: v[1:] for k, v in s.items()} for n, s in samples.items()}
    med = {}
    for name, s in samples.items():
        for what, values in s.items():
            benchmark.extra_info[f"{name}_spawn_{what}" if what.startswith("to_")
                                 else f"{name}_spawn_to_{what}"] = _summary(values)
            med[name, what] = statistics.median(values)
    benchmark.extra_info["under_load"] = os.getloadavg()
    for base in ("qemu-tcg", "qemu-kvm"):
        group = f"fresh process: spawn to port write vs {base}"
        compare(benchmark, group, "ours", "vmm-boot", "target ratio < 0.5",
                seconds=med["vmm-boot", "write"])
        compare(benchmark, group, "baseline", f"qemu-system-x86_64 microvm ({base[5:]})",
                seconds=med[base, "write"])
        group = f"fresh process: spawn to exit vs {base}"
        compare(benchmark, group, "ours", "vmm-boot", seconds=med["vmm-boot", "exit"])
        compare(benchmark, group, "baseline", f"qemu-system-x86_64 microvm ({base[5:]})",
                seconds=med[base, "exit"])
    group = "fresh process: vmm-boot vs python -m vmm"
    compare(benchmark, group, "ours", "vmm-boot (spawn to port write)", seconds=med["vmm-boot", "write"])
    compare(benchmark, group, "baseline", "python -m vmm boot (same)", seconds=med["python", "write"])
    group = "fresh process: python -m vmm vs qemu-tcg"
    compare(benchmark, group, "ours", "python -m vmm boot (spawn to port write)",
            seconds=med["python", "write"])
    compare(benchmark, group, "baseline", "qemu-system-x86_64 microvm (tcg)",
            seconds=med["qemu-tcg", "write"])
