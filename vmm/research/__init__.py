"""vmm.research: the boot-latency lab as an API (`python -m vmm bench` is its command line).

    from vmm.research import BenchSettings, run_bench, render, write_json, write_csv
    result = run_bench(BenchSettings(runs=20, memory=[128, 256]))
    print(render(result))
    write_json(result, "boot.json"); write_csv(result, "boot.csv")
    rows = compare(read_json("a.json"), read_json("b.json"))

One concept per module: settings (what varies), phases (marks, phases, the guest's
console), samples (one run), ours / launcher / baselines (who boots), runs (the alternating loop),
stats (percentiles, bootstrap), results (JSON/CSV), report (tables), compare, plots
(matplotlib, imported lazily), machine_info (what the result was measured on), kvm_counters (KVM's own
exit counters from debugfs, where readable),
guest_files (kernel, initrd, root disk, agent image); density (`bench density`: many
sandboxes at once, starts per second, memory per idle sandbox) with proc_memory and
density_plot.
"""
from .compare import compare
from .report import render
from .results import read_json, samples_from_csv, to_csv, write_csv, write_json
from .runs import run_bench
from .settings import BenchSettings, BootConfig

__all__ = ["BenchSettings", "BootConfig", "run_bench", "render", "compare", "read_json",
           "write_json", "write_csv", "to_csv", "samples_from_csv"]
