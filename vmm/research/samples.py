"""One run of one system: a sample, a plain dict so that it goes to JSON as it is.

    system      "vmm-qemu", "vmm-kvm" (ours, by the engine that ran) or a baseline's name
    config      the configuration's label (settings.py)
    round       0-based round number; warmup: True for the rounds no statistic uses
    ok, error   whether it reached its ready mark; why not
    status      how the VM ended, as the engine said
    marks_ms    host marks (phases.MARKS), ms since the run's `request` mark
    phases_ms   host phases (phases.host_phases), ms, plus `total`
    guest_ms    guest-side phases from the guest's own clock, ms
    initcalls   [[function, ms], ...]: the run's slowest initcalls (with --initcalls)
    exits       kvm engine: {"to_boot_timer": {reason: n}, "after_boot_timer": {...}} (the
                C core's exact split: the boot-timer write itself is before), or
                {"whole_run": {...}} when the guest never wrote the boot timer; agent
                runs split after_boot_timer once more where Sandbox.create() returned
                (read from the host then, so a few exits of the idle agent may land on
                either side): "boot_timer_to_ready", "ready_to_first_exec"
    kvm_counters  kvm engine, where debugfs is readable (kvm_counters.py): KVM's own
                counters, every exit including those it handled itself, {"whole_run":
                {counter: n}} (test init, read once the guest ended) or {"to_ready": ...,
                "ready_to_first_exec": ...} (agent runs)
"""
from __future__ import annotations

from typing import Dict, Iterable, List, Optional

from .phases import parse_initcalls, slowest_initcalls

INITCALL_PREFIX = "initcall:"


def new_sample(system: str) -> dict:
    return {"system": system, "config": "default", "round": 0, "warmup": False, "ok": True,
            "error": None, "status": None, "marks_ms": {}, "phases_ms": {}, "guest_ms": {}}


def failed_sample(system: str, error: str) -> dict:
    s = new_sample(system)
    s.update(ok=False, error=error)
    return s


def split_exits(total: Dict[str, int], at_init: Dict[str, int],
                at_ready: Optional[Dict[str, int]] = None) -> Dict[str, Dict[str, int]]:
    """A sample's "exits" from the whole run's counts, those at the boot-timer write
    (empty: the guest never wrote it) and, for agent runs, those when the agent's READY had
    been received. A reason missing from any counts 0, so every phase lists every reason
    of the run and medians over runs see the zeros."""
    if not at_init:
        return {"whole_run": dict(total)}
    reasons = list(total) + [r for r in list(at_init) + list(at_ready or {}) if r not in total]
    reasons = list(dict.fromkeys(reasons))

    def between(later, earlier):
        return {r: later.get(r, 0) - earlier.get(r, 0) for r in reasons}
    out = {"to_boot_timer": {r: at_init.get(r, 0) for r in reasons}}
    if at_ready:
        out["boot_timer_to_ready"] = between(at_ready, at_init)
        out["ready_to_first_exec"] = between(total, at_ready)
    else:
        out["after_boot_timer"] = between(total, at_init)
    return out


def keep_initcalls(sample: dict, console: str, n: int) -> None:
    calls = parse_initcalls(console)
    sample["initcalls"] = [[fn, ms] for fn, ms in slowest_initcalls(calls, n)]
    sample["initcalls_seen"] = len(calls)


def metrics(sample: dict) -> Dict[str, float]:
    """Every duration of a sample under one name: host phases, guest phases, and each kept
    initcall as "initcall:<function>"."""
    out = dict(sample.get("phases_ms", {}))
    out.update(sample.get("guest_ms", {}))
    for fn, ms in sample.get("initcalls", []):
        out[INITCALL_PREFIX + fn] = ms
    return out


def counted(samples: Iterable[dict]) -> List[dict]:
    """The samples statistics use: not warm-up, and reached their ready mark."""
    return [s for s in samples if not s.get("warmup") and s.get("ok")]


def groups(samples: Iterable[dict]) -> Dict[tuple, List[dict]]:
    """Samples by (config, system), in first-seen order."""
    out: Dict[tuple, List[dict]] = {}
    for s in samples:
        out.setdefault((s["config"], s["system"]), []).append(s)
    return out


def metric_values(samples: Iterable[dict]) -> Dict[str, List[float]]:
    """metric -> values over the samples that have it, metrics in first-seen order."""
    out: Dict[str, List[float]] = {}
    for s in samples:
        for k, v in metrics(s).items():
            out.setdefault(k, []).append(v)
    return out
