"""Benchmarks compare the project against a named baseline measured in the same run, and
report ratios (ours / baseline), never absolute pass/fail times.

A comparison runs both sides in one test, alternating round by round (`alternate`, see
paired.py); a single-sided measurement records its role with `compare(benchmark, group,
role)`. At the end of the session every group with both an "ours" and a "baseline" median
prints its ratio, and `--benchmark-json` output carries the same numbers in extra_info.
"""
import shutil
import statistics
import tempfile
from pathlib import Path

import pytest

from paired import run_paired

_MEDIANS = {}  # group -> {role: (median_s, label)}
_PAIRED = {}   # group -> median of the per-round ratios, where the sides alternated


def record(group: str, role: str, label: str, median_s: float, target: str = ""):
    _MEDIANS.setdefault(group, {})[role] = (median_s, label, target)


@pytest.fixture
def compare(request):
    """compare(benchmark, group, role, label, target="ratio <= 1.1") after benchmark.pedantic().

    seconds: the median to compare when it is not the benchmark's own (e.g. an interval read
    from a boot timeline inside each round rather than the wall time around the round)."""
    def _compare(benchmark, group, role, label, target="", seconds=None):
        median = benchmark.stats.stats.median if seconds is None else seconds
        benchmark.extra_info.update(group=group, role=role, label=label, target=target)
        record(group, role, label, median, target)
    return _compare


@pytest.fixture
def record_median():
    """record(group, role, label, median_s, target=""): a median measured some other way
    (e.g. a second interval of alternate()'s rounds) into the session's ratio table."""
    return record


@pytest.fixture
def alternate(request):
    """alternate(benchmark, group, ours=(label, fn), baseline=(label, fn), rounds, warmup=1,
    target="") -> paired.Paired: both sides in turn each round, warm-up never sampled, both
    medians recorded for the session's ratio table and the samples in extra_info."""
    def _alternate(benchmark, group, ours, baseline, rounds, warmup=1, target=""):
        (olabel, ofn), (blabel, bfn) = ours, baseline
        result = run_paired(ofn, bfn, rounds, warmup, round_runner=lambda fn, n: benchmark.pedantic(
            fn, rounds=n, iterations=1))
        benchmark.extra_info.update(result.extra_info(), group=group, target=target,
                                    label=olabel, baseline_label=blabel)
        record(group, "ours", olabel, result.ours_median, target)
        record(group, "baseline", blabel, result.baseline_median)
        _PAIRED[group] = result.paired_ratio
        print(f"\n{group}: {result.summary()}")
        return result
    return _alternate


def median_of(samples):
    return statistics.median(samples)


def pytest_terminal_summary(terminalreporter):
    if not _MEDIANS:
        return
    tr = terminalreporter
    tr.section("ratios against baselines (same run; ours / baseline, lower is better)")
    for group, roles in sorted(_MEDIANS.items()):
        if "ours" in roles and "baseline" in roles:
            ours, ol, target = roles["ours"]
            base, bl, _ = roles["baseline"]
            paired = f"  (alternated; paired {_PAIRED[group]:.3f})" if group in _PAIRED else ""
            tr.write_line(f"{group:<34} {ours * 1e3:10.2f} ms {ol:<28} vs {base * 1e3:10.2f} ms "
                          f"{bl:<32} ratio {ours / base:6.3f}  {target}{paired}")
        else:
            for role, (med, label, target) in roles.items():
                tr.write_line(f"{group:<34} {med * 1e3:10.2f} ms {label} ({role}) {target}")


@pytest.fixture(scope="session")
def image():
    """The busybox EROFS image the sandbox benchmarks boot (tests/support/sandbox_image.py),
    built once per session."""
    from support.sandbox_image import build_busybox_image
    d = Path(tempfile.mkdtemp(prefix="vmm-bench-image-"))
    try:
        yield build_busybox_image(d)
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="session")
def guest_kernel():
    """The project's guest kernel (built and cached on first use)."""
    from vmm.guest import kernel
    return str(kernel.guest_kernel())
