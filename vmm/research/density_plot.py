"""The density report as a picture: density.png and density.svg.

Left: sandboxes ready against seconds since the mode began, one step line per mode (the
slope is the start rate; the last step the time to all ready). Right: host memory per
idle sandbox, PSS, stacked: guest RAM the guest touched, QEMU beyond it, ours (what the
sandboxes added to this process) and helpers (passt), one bar per mode, with the qemu
engine's target drawn when the engine is qemu.

matplotlib is imported here only, and through its object API (Figure, no pyplot): no
global backend or figure state is touched in a program that embeds the lab.
"""
from __future__ import annotations

import os
from typing import Dict, List

from ..errors import ConfigError

INSTALL_HINT = "pip install matplotlib (or apt-get install python3-matplotlib)"


def require_matplotlib() -> None:
    """ConfigError now, before any sandbox starts, if the plot could not be drawn."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ConfigError(f"--out draws plots with matplotlib, which is not installed: "
                          f"{INSTALL_HINT}") from None


def stack(per_sandbox: Dict) -> List[tuple]:
    """(label, MiB) layers of one bar, bottom first; their sum is the total PSS."""
    q, ours, helpers, total = (per_sandbox[k] for k in ("qemu", "ours", "helpers", "total"))
    layers = [("guest RAM touched", total["guest_ram"] or 0.0),
              ("QEMU beyond guest RAM", (q["pss"] or 0.0) - (q["pss_guest_ram"] or 0.0)),
              ("ours (added)", (ours["pss"] or 0.0) - (ours["pss_guest_ram"] or 0.0)),
              ("helpers (passt)", helpers["pss"] or 0.0)]
    return [(label, round(v, 2)) for label, v in layers]


def plot_density(report: Dict, out_dir: str) -> List[str]:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4.5), layout="constrained")
    ready_ax, mem_ax = fig.subplots(1, 2)
    cfg = report["config"]
    for mode, r in report["modes"].items():
        times = [0.0] + r["ready_at_s"]
        label = (f"{mode}: {r['starts_per_s']:.2f} starts/s" if r["starts_per_s"] is not None
                 else f"{mode}: only {r['ready']}/{cfg['count']} ready")
        ready_ax.step(times, range(len(times)), where="post", label=label)
    ready_ax.set_xlabel("seconds since the first create()")
    ready_ax.set_ylabel("sandboxes ready")
    ready_ax.set_title(f"{cfg['count']} sandboxes, {report.get('engine')} engine, "
                       f"{report['host']['cores']} cores")
    ready_ax.legend(loc="lower right")
    ready_ax.grid(alpha=0.3)

    modes = [m for m, r in report["modes"].items() if r.get("memory")]
    colors = ["#8da0cb", "#fc8d62", "#66c2a5", "#e78ac3"]
    top = 0.0
    for i, mode in enumerate(modes):
        bottom = 0.0
        for j, (label, mib) in enumerate(stack(report["modes"][mode]["memory"]["per_sandbox_mib"])):
            mem_ax.bar(i, mib, width=0.5, bottom=bottom, color=colors[j],
                       label=label if i == 0 else None)
            bottom += mib
        mem_ax.text(i, bottom, f"{bottom:.1f} MiB", ha="center", va="bottom")
        top = max(top, bottom)
    target = report.get("target_pss_mib")
    if target:
        mem_ax.axhline(target, color="black", linestyle="--", linewidth=1,
                       label=f"target {target} MiB")
    mem_ax.set_ylim(0, max(top, target or 0) * 1.35)   # room for the labels and the legend
    mem_ax.set_xlim(-0.75, len(modes) - 0.25)
    mem_ax.set_xticks(range(len(modes)), modes)
    mem_ax.set_ylabel("MiB PSS per idle sandbox")
    mem_ax.set_title(f"host memory per idle sandbox ({cfg['memory_mib']} MiB guests)")
    mem_ax.legend(loc="upper right", fontsize="small", ncols=2)

    paths = []
    for ext in ("png", "svg"):
        path = os.path.join(out_dir, f"density.{ext}")
        fig.savefig(path, dpi=120)
        paths.append(path)
    return paths
