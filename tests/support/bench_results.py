"""A synthetic `bench boot` result for tests of statistics, files, compare and plots: two
systems, warm-up round first, phases with known medians (ours 1.1x the baseline)."""
import random

from vmm.research import results, samples
from vmm.research.settings import BenchSettings


def fake_result(scale=1.0, seed=1, runs=12, systems=("vmm-qemu", "qemu-tcg"), config="default"):
    rng = random.Random(seed)
    r = results.new_result({"cpu_model": "test", "kvm_backing": "pvm"},
                           BenchSettings(runs=runs).to_dict(), skipped=["firecracker: not found"])
    for rnd in range(runs + 1):
        for system in systems:
            s = samples.new_sample(system)
            total = scale * (1000 + rng.gauss(0, 20)) * (1.1 if system == "vmm-qemu" else 1)
            if system == "vmm-qemu":
                s["phases_ms"] = {"vm_created": 6.0 + rng.random(), "boot_timer": total - 30,
                                  "ready_line": 24.0, "total": total}
            else:
                s["phases_ms"] = {"ready_line": total, "total": total}
            s["guest_ms"] = {"guest_kernel_to_init": 0.7 * total}
            s["initcalls"] = [["inet_init", 16.0], ["kswapd_init", 4.0 + rnd]]
            s.update(config=config, round=rnd, warmup=rnd == 0)
            r["samples"].append(s)
    return r
