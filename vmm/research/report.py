"""The text a person reads after `bench boot`: the machine, a table per configuration and
system (median, p90, p99, min, max per phase), ours against each baseline, the slowest
initcalls, and the kvm engine's exits by reason per phase (with KVM's own counters where
debugfs is readable)."""
from __future__ import annotations

from typing import Dict, List

from . import kvm_counters
from .phases import TOTAL, metric_order
from .samples import INITCALL_PREFIX, counted, groups, metric_values
from .stats import bootstrap_ratio, fmt_ms, median, summary

COMPARED = (TOTAL, "guest_kernel_to_init")


def machine_lines(result: dict) -> List[str]:
    m = result["machine"]
    lines = [f"machine: {m.get('cpu_model')} ({m.get('cpus')} cpus), /dev/kvm {m.get('kvm_backing')}, "
             f"host kernel {m.get('host_kernel')}",
             f"         {m.get('qemu') or 'no QEMU'}; vmm {m.get('vmm_version')} "
             f"at {m.get('git_revision') or 'unknown revision'}; load average at start "
             f"{m.get('load_average_at_start')}, at end {m.get('load_average_at_end')}"]
    if result.get("note"):
        lines.append(f"note:    {result['note']}")
    return lines


def phase_table(values: Dict[str, List[float]]) -> List[str]:
    lines = [f"  {'phase (ms)':<26} {'n':>3} {'median':>8} {'p90':>8} {'p99':>8} {'min':>8} {'max':>8}"]
    for metric in sorted((m for m in values if not m.startswith(INITCALL_PREFIX)), key=metric_order):
        s = summary(values[metric])
        lines.append(f"  {metric:<26} {s['n']:>3} " + " ".join(
            f"{fmt_ms(s[k]):>8}" for k in ("median", "p90", "p99", "min", "max")))
    return lines


def initcall_lines(values: Dict[str, List[float]], n: int) -> List[str]:
    calls = {m[len(INITCALL_PREFIX):]: v for m, v in values.items() if m.startswith(INITCALL_PREFIX)}
    if not calls:
        return []
    ranked = sorted(calls.items(), key=lambda kv: -median(kv[1]))[:n]
    lines = [f"  slowest initcalls (median ms over the runs that ranked them in their top {n})"]
    lines += [f"    {fn:<40} {fmt_ms(median(v)):>8}  (in {len(v)} runs)" for fn, v in ranked]
    return lines


KVM_COUNTERS_SHOWN = 8  # KVM has ~40 counters; the largest say where the exits went


def exit_lines(samples: List[dict]) -> List[str]:
    lines = _count_lines(samples, "exits", "exits {phase} (median per run): ")
    lines += _count_lines(samples, "kvm_counters", "KVM's own counters {phase} (median per run, "
                          f"largest {KVM_COUNTERS_SHOWN}): ", KVM_COUNTERS_SHOWN, kvm_counters.is_count)
    return lines


def _count_lines(samples: List[dict], field: str, head: str, top: int = 0,
                 shown_if=lambda name: True) -> List[str]:
    per_phase: Dict[str, Dict[str, List[int]]] = {}
    for s in samples:
        for phase, counts in (s.get(field) or {}).items():
            for reason, count in ((r, c) for r, c in counts.items() if shown_if(r)):
                per_phase.setdefault(phase, {}).setdefault(reason, []).append(count)
    lines = []
    for phase, reasons in per_phase.items():
        shown = sorted(((r, median(c)) for r, c in reasons.items() if any(c)), key=lambda kv: -kv[1])
        if shown:
            lines.append("  " + head.format(phase=phase) +
                         ", ".join(f"{r}={v:g}" for r, v in (shown[:top] if top else shown)))
    return lines


def ratio_lines(by_system: Dict[str, Dict[str, List[float]]], ours: str, seed: int) -> List[str]:
    lines = []
    for other, values in by_system.items():
        if other == ours:
            continue
        for metric in COMPARED:
            a, b = values.get(metric), by_system[ours].get(metric)
            if not a or not b:
                continue
            r, lo, hi = bootstrap_ratio(a, b, seed=seed)
            lines.append(f"  {ours} / {other} {metric}: {r:.3f}x (95% CI {lo:.3f}-{hi:.3f}; "
                         f"medians {fmt_ms(median(b))} vs {fmt_ms(median(a))} ms)")
    return lines


def render(result: dict) -> str:
    settings = result.get("settings", {})
    lines = machine_lines(result)
    for line in result.get("skipped", []):
        lines.append(f"baseline {line}")
    by_config: Dict[str, Dict[str, List[dict]]] = {}
    for (config, system), samples in groups(result["samples"]).items():
        by_config.setdefault(config, {})[system] = samples
    for config, systems in by_config.items():
        values = {}
        for system, samples in systems.items():
            used = counted(samples)
            failed = [s for s in samples if not s.get("warmup") and not s.get("ok")]
            lines.append("")
            lines.append(f"[{config}] {system}: {len(used)} runs counted"
                         + (f", {len(failed)} failed (first: {failed[0]['error']})" if failed else ""))
            values[system] = metric_values(used)
            if not used:
                continue
            lines += phase_table(values[system])
            lines += initcall_lines(values[system], settings.get("initcalls") or 0)
            lines += exit_lines(used)
        ours = next((s for s in systems if s.startswith("vmm-")), None)
        params = next(iter(systems.values()))[0].get("params", {})
        if ours and params.get("init") == "agent" and len(systems) > 1:
            lines.append("")
            lines.append(f"[{config}] no ratios: with init=agent ours runs to a first exec, while "
                         "the baselines boot the test init (a plain VMM cannot serve the agent)")
        elif ours and values.get(ours):
            ratios = ratio_lines(values, ours, settings.get("seed", 13))
            if ratios:
                lines.append("")
                lines.append(f"[{config}] ratios (bootstrap over medians, seed {settings.get('seed', 13)}):")
                lines += ratios
    return "\n".join(lines) + "\n"
