"""`bench compare A.json B.json`: per configuration, system and phase, median(B) / median(A)
with a seeded bootstrap confidence interval. Groups are matched by (config, system); when
each file holds a single configuration under different labels, by system alone."""
from __future__ import annotations

from typing import List

from .phases import metric_order
from .samples import counted, groups, metric_values
from .stats import bootstrap_ratio, fmt_ms, median


def compare(a: dict, b: dict, *, seed: int = 13, initcalls: bool = False) -> List[dict]:
    ga = {k: metric_values(counted(v)) for k, v in groups(a["samples"]).items()}
    gb = {k: metric_values(counted(v)) for k, v in groups(b["samples"]).items()}
    configs_a = {c for c, _ in ga}
    configs_b = {c for c, _ in gb}
    if not configs_a & configs_b and len(configs_a) == 1 and len(configs_b) == 1:
        ga = {("*", s): v for (_, s), v in ga.items()}
        gb = {("*", s): v for (_, s), v in gb.items()}
    rows = []
    for key in [k for k in ga if k in gb]:
        va, vb = ga[key], gb[key]
        for metric in sorted((m for m in va if m in vb), key=metric_order):
            if metric.startswith("initcall:") and not initcalls:
                continue
            try:
                r, lo, hi = bootstrap_ratio(va[metric], vb[metric], seed=seed)
            except ValueError:
                continue  # a zero median: no ratio to state
            rows.append({"config": key[0], "system": key[1], "metric": metric,
                         "median_a": median(va[metric]), "median_b": median(vb[metric]),
                         "n_a": len(va[metric]), "n_b": len(vb[metric]),
                         "ratio": r, "ci_low": lo, "ci_high": hi})
    return rows


IGNORED_SETTINGS = ("seed", "extra")
IGNORED_MACHINE = ("load_average_at_start", "load_average_at_end")


def differences(a: dict, b: dict) -> List[str]:
    """What differs between the two results besides the samples: the settings (what was
    meant to differ, or a confound) and the machine (what should not)."""
    out = []
    for section, ignored in (("settings", IGNORED_SETTINGS), ("machine", IGNORED_MACHINE)):
        sa, sb = a.get(section) or {}, b.get(section) or {}
        for key in sorted(set(sa) | set(sb)):
            if key not in ignored and sa.get(key) != sb.get(key):
                out.append(f"{section} {key}: {sa.get(key)!r} vs {sb.get(key)!r}")
    return out


def render(rows: List[dict], name_a: str, name_b: str, seed: int, diffs=()) -> str:
    if not rows:
        return "no phase appears in both results (same config and system)\n"
    lines = [f"A and B differ in {d}" for d in diffs]
    lines += [f"B / A per phase: A = {name_a}, B = {name_b}; 95% bootstrap CI, seed {seed}",
             f"  {'config':<14} {'system':<12} {'phase':<24} {'A ms':>8} {'B ms':>8} "
             f"{'B/A':>7} {'CI':>15}"]
    for r in rows:
        flag = "" if r["ci_low"] <= 1 <= r["ci_high"] else " *"
        lines.append(f"  {r['config']:<14} {r['system']:<12} {r['metric']:<24} "
                     f"{fmt_ms(r['median_a']):>8} {fmt_ms(r['median_b']):>8} {r['ratio']:>7.3f} "
                     f"{r['ci_low']:>7.3f}-{r['ci_high']:<7.3f}{flag}")
    lines.append("  * the interval excludes 1: a difference at this confidence")
    return "\n".join(lines) + "\n"
