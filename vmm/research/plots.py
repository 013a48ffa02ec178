"""Pictures of a result, PNG and SVG, with matplotlib (imported only here, only when a
picture is asked for: everything else works without it).

    waterfall_<config>   each system's host phases as consecutive bars at their medians,
                         a p90 whisker on each; guest phases beside them
    distribution         every counted run of every system, per config: total to ready
    compare              B / A per phase with its confidence interval (bench compare)
"""
from __future__ import annotations

import os
import re
from typing import List

from ..errors import VmmError
from .phases import GUEST_PHASES, TOTAL, metric_order
from .samples import counted, groups, metric_values
from .stats import median, percentile

FORMATS = ("png", "svg")


class PlotError(VmmError):
    """Pictures were asked for and cannot be drawn (matplotlib missing)."""


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise PlotError("pictures need matplotlib (pip install matplotlib, or scripts/setup.sh); "
                        "the JSON and CSV were written") from None
    matplotlib.use("Agg")  # files only: no display here, and none needed
    import matplotlib.pyplot as plt
    return plt


def _save(fig, out_dir: str, stem: str) -> List[str]:
    paths = []
    for ext in FORMATS:
        path = os.path.join(out_dir, f"{stem}.{ext}")
        fig.savefig(path, dpi=120, bbox_inches="tight")
        paths.append(path)
    return paths


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", text).strip("_") or "default"


def waterfalls(result: dict, out_dir: str) -> List[str]:
    plt = _pyplot()
    by_config = {}
    for (config, system), samples in groups(result["samples"]).items():
        values = metric_values(counted(samples))
        if values:
            by_config.setdefault(config, {})[system] = values
    paths = []
    for config, systems in by_config.items():
        fig, ax = plt.subplots(figsize=(9, 1.2 + 0.9 * len(systems)))
        colours = {}
        cmap = plt.get_cmap("tab10")
        labels = []
        for row, (system, values) in enumerate(systems.items()):
            start = 0.0
            host = [m for m in sorted(values, key=metric_order)
                    if metric_order(m)[0] == 0]
            for phase in host:
                med = median(values[phase])
                p90 = percentile(values[phase], 90)
                colour = colours.setdefault(phase, cmap(len(colours) % 10))
                ax.barh(row, med, left=start, color=colour, edgecolor="white",
                        label=phase if phase not in labels else None)
                labels.append(phase)
                ax.errorbar(start + med, row, xerr=[[0], [max(0.0, p90 - med)]], color="black",
                            capsize=3, linewidth=1)
                start += med
            if TOTAL in values:
                ax.plot([median(values[TOTAL])], [row], marker="|", markersize=18, color="black")
        ax.set_yticks(range(len(systems)))
        ax.set_yticklabels(list(systems))
        ax.invert_yaxis()
        ax.set_xlabel("ms since the request (bars: phase medians, whiskers: p90, tick: median total)")
        ax.set_title(f"boot phases [{config}], n={result['settings'].get('runs')} runs each")
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.25 - 0.05 * len(systems)),
                  ncol=4, fontsize="small")
        paths += _save(fig, out_dir, f"waterfall_{_slug(config)}")
        plt.close(fig)
    return paths


def distribution(result: dict, out_dir: str) -> List[str]:
    plt = _pyplot()
    cols, names = [], []
    for (config, system), samples in groups(result["samples"]).items():
        used = counted(samples)
        totals = [s["phases_ms"][TOTAL] for s in used if TOTAL in s.get("phases_ms", {})]
        guest = [s["guest_ms"][GUEST_PHASES[0]] for s in used if GUEST_PHASES[0] in s.get("guest_ms", {})]
        if totals:
            cols.append((totals, guest))
            names.append(f"{system}\n{config}" if config != "default" else system)
    if not cols:
        return []
    fig, axes = plt.subplots(1, 2, figsize=(max(6, 1.6 * len(cols) * 2), 4.5))
    for ax, idx, title in ((axes[0], 0, "host: request to ready (ms)"),
                           (axes[1], 1, "guest clock: kernel to init (ms)")):
        data = [c[idx] for c in cols]
        keep = [i for i, d in enumerate(data) if d]
        if keep:
            ax.boxplot([data[i] for i in keep], showfliers=False)
            for pos, i in enumerate(keep, start=1):
                xs = [pos + (j % 7 - 3) * 0.03 for j in range(len(data[i]))]
                ax.scatter(xs, data[i], s=10, alpha=0.6, color="tab:blue", zorder=3)
            ax.set_xticks(range(1, len(keep) + 1))
            ax.set_xticklabels([names[i] for i in keep], fontsize="small")
        ax.set_title(title)
        ax.set_ylim(bottom=0)
    fig.suptitle("per-run distribution (every counted run a dot)")
    paths = _save(fig, out_dir, "distribution")
    plt.close(fig)
    return paths


def compare_plot(rows: List[dict], out_dir: str, name_a: str, name_b: str) -> List[str]:
    plt = _pyplot()
    if not rows:
        return []
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 0.4 * len(rows) + 1.8), sharey=True)
    labels = [f"{r['system']} {r['metric']}" + (f" [{r['config']}]" if r["config"] not in ("*", "default") else "")
              for r in rows]
    ys = list(range(len(rows)))
    h = 0.38
    left.barh([y - h / 2 for y in ys], [r["median_a"] for r in rows], height=h, label=f"A: {name_a}")
    left.barh([y + h / 2 for y in ys], [r["median_b"] for r in rows], height=h, label=f"B: {name_b}")
    left.set_yticks(ys)
    left.set_yticklabels(labels, fontsize="small")
    left.invert_yaxis()
    left.set_xlabel("median ms")
    left.legend(fontsize="small")
    right.errorbar([r["ratio"] for r in rows], ys,
                   xerr=[[r["ratio"] - r["ci_low"] for r in rows],
                         [r["ci_high"] - r["ratio"] for r in rows]],
                   fmt="o", capsize=3)
    right.axvline(1.0, color="grey", linestyle="--")
    right.set_xlabel("B / A (95% bootstrap CI)")
    fig.suptitle("side by side")
    paths = _save(fig, out_dir, "compare")
    plt.close(fig)
    return paths


def all_plots(result: dict, out_dir: str) -> List[str]:
    return waterfalls(result, out_dir) + distribution(result, out_dir)
