"""Density on the qemu engine: many sandboxes at once, and what TCG's translation cache
size does to boot time and to QEMU's memory.

    pytest benchmarks/bench_density.py --benchmark-only -s

- test_density: vmm.research.density with BENCH_DENSITY_COUNT sandboxes (default 10) of
  256 MiB, sequential and concurrent: starts per second (and per core), time to all ready,
  PSS per idle sandbox (QEMU + ours). Target: <= 60 MiB per idle sandbox.
- test_tb_size_boot_and_memory: Sandbox create-to-ready with QEMU's own translation cache
  (tb-size unset: up to 1 GiB) against the engine's default (engines.qemu.TB_SIZE_MIB),
  alternated round by round (warm-up round not counted): wall time, QEMU's CPU time to
  ready (less disturbed by other load on the host than wall time) and QEMU's anonymous
  RSS at ready. Target: the smaller cache costs no boot time (ratio <= 1.05).
"""
import os
import shutil
import statistics
import time

import pytest

from support.sandbox_image import have_busybox

import vmm
from vmm.engines.qemu import TB_SIZE_ENV, TB_SIZE_MIB
from vmm.research import density
from vmm.research.proc_memory import read_memory

pytestmark = [pytest.mark.skipif(not shutil.which("qemu-system-x86_64"), reason="no qemu-system-x86_64"),
              pytest.mark.skipif(not have_busybox(), reason="no /bin/busybox (busybox-static)")]

COUNT = int(os.environ.get("BENCH_DENSITY_COUNT", "10"))
MEMORY_MIB = 256
ROUNDS = 12


def test_density(benchmark, compare, image, guest_kernel, capsys):
    cfg = density.DensityConfig(count=COUNT, engine="qemu", memory_mib=MEMORY_MIB,
                                image=str(image))
    box = {}
    benchmark.pedantic(lambda: box.update(report=density.run_density(cfg)), rounds=1,
                       iterations=1)
    report = box["report"]
    assert density.failures(report) == []
    for mode, r in report["modes"].items():
        per = r["memory"]["per_sandbox_mib"]
        benchmark.extra_info[mode] = {
            "starts_per_s": r["starts_per_s"], "per_core": r["starts_per_s_per_core"],
            "time_to_all_ready_s": r["time_to_all_ready_s"], "pss_per_sandbox_mib": per["total"]["pss"]}
        compare(benchmark, f"density {mode}: all {COUNT} ready", "ours",
                f"{r['starts_per_s']:.2f} starts/s, {per['total']['pss']:.1f} MiB PSS each",
                f"target <= {density.QEMU_TARGET_MIB} MiB", seconds=r["time_to_all_ready_s"])
    with capsys.disabled():
        print("\n" + density.format_report(report))


def _qemu_cpu_s(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _boot(image, kernel_path, tb_size):
    os.environ[TB_SIZE_ENV] = str(tb_size)
    t0 = time.perf_counter()
    sb = vmm.Sandbox.create(image, engine="qemu", memory_mib=MEMORY_MIB, kernel=kernel_path,
                            network=None)
    try:
        wall = time.perf_counter() - t0
        pid = sb.machine.inspect().pid
        return wall, _qemu_cpu_s(pid), read_memory(pid).rss_anon / 1024
    finally:
        sb.stop()


def test_tb_size_boot_and_memory(benchmark, compare, image, guest_kernel, capsys):
    sizes = {"QEMU's own (tb-size unset)": 0, f"tb-size={TB_SIZE_MIB}": TB_SIZE_MIB}
    samples = {name: [] for name in sizes}
    saved = os.environ.get(TB_SIZE_ENV)

    def rounds():
        for r in range(ROUNDS + 1):
            order = list(sizes) if r % 2 == 0 else list(reversed(sizes))
            for name in order:
                sample = _boot(str(image), guest_kernel, sizes[name])
                if r:   # round 0 warms caches for both: never in a median
                    samples[name].append(sample)
    try:
        benchmark.pedantic(rounds, rounds=1, iterations=1)
    finally:
        if saved is None:
            os.environ.pop(TB_SIZE_ENV, None)
        else:
            os.environ[TB_SIZE_ENV] = saved
    med = {name: [statistics.median(s[i] for s in samples[name]) for i in range(3)]
           for name in sizes}
    (base, ours) = (med[name] for name in sizes)
    benchmark.extra_info.update({name: {"ready_ms": round(m[0] * 1e3), "qemu_cpu_ms": round(m[1] * 1e3),
                                        "qemu_anon_mib": round(m[2], 1)} for name, m in med.items()})
    compare(benchmark, "sandbox ready, TCG cache", "baseline", "tb-size unset", seconds=base[0])
    compare(benchmark, "sandbox ready, TCG cache", "ours", f"tb-size={TB_SIZE_MIB}",
            "target <= 1.05", seconds=ours[0])
    with capsys.disabled():
        print(f"\nTCG translation cache, {ROUNDS} alternated rounds, load {os.getloadavg()[0]:.1f}:")
        for name, (wall, cpu, anon) in med.items():
            print(f"  {name:28} ready {wall * 1e3:7.0f} ms   QEMU CPU {cpu * 1e3:6.0f} ms   "
                  f"QEMU anon RSS {anon:5.1f} MiB")
