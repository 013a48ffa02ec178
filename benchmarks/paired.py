"""Ours and a baseline measured in turn, round by round, so that whatever else the machine
is doing (other test runs, writeback, a frequency change) falls on both sides alike.

Each round runs both sides once; which side goes first alternates from round to round, so
neither always runs on a warmer (or a colder) machine. Warm-up rounds run both sides the
same way but are never sampled. Each side's callable returns the seconds of the metric it
names (an interval read inside the round, not the wall time around it), so a side may do
set-up and teardown that the metric leaves out.

The result keeps every sample, both medians, the ratio of the medians and the median of the
per-round ratios (the paired ratio: each round's load hits both of its samples).
"""
import statistics
from dataclasses import dataclass, field
from typing import Callable, Dict, List


@dataclass
class Paired:
    ours: List[float] = field(default_factory=list)
    baseline: List[float] = field(default_factory=list)

    @property
    def ours_median(self) -> float:
        return statistics.median(self.ours)

    @property
    def baseline_median(self) -> float:
        return statistics.median(self.baseline)

    @property
    def ratio(self) -> float:
        """Median of ours over median of the baseline."""
        return self.ours_median / self.baseline_median

    @property
    def paired_ratio(self) -> float:
        """Median of the per-round ratios."""
        return statistics.median(o / b for o, b in zip(self.ours, self.baseline))

    def extra_info(self) -> Dict[str, object]:
        ms = lambda xs: [round(x * 1e3, 3) for x in xs]  # noqa: E731
        return {"ours_samples_ms": ms(self.ours), "baseline_samples_ms": ms(self.baseline),
                "ours_median_ms": round(self.ours_median * 1e3, 3),
                "baseline_median_ms": round(self.baseline_median * 1e3, 3),
                "ratio_of_medians": round(self.ratio, 4),
                "median_paired_ratio": round(self.paired_ratio, 4),
                "rounds": len(self.ours)}

    def summary(self) -> str:
        return (f"ours median {self.ours_median * 1e3:.2f} ms, baseline median "
                f"{self.baseline_median * 1e3:.2f} ms, ratio {self.ratio:.3f} (paired "
                f"{self.paired_ratio:.3f}, {len(self.ours)} alternating rounds)")


def run_paired(ours: Callable[[], float], baseline: Callable[[], float], rounds: int,
               warmup: int = 1, round_runner: Callable = None) -> Paired:
    """Warm-up rounds, then `rounds` sampled rounds, each running both sides in turn.

    round_runner(fn, rounds) runs fn once per sampled round (pytest-benchmark's pedantic, so
    the benchmark's own stats cover the rounds); by default a plain loop."""
    result = Paired()
    state = {"i": 0}

    def one_round(sample: bool):
        order = (("ours", ours), ("baseline", baseline))
        if state["i"] % 2:
            order = order[::-1]
        state["i"] += 1
        for role, fn in order:
            seconds = fn()
            if sample:
                getattr(result, role).append(seconds)

    for _ in range(warmup):
        one_round(sample=False)
    if round_runner is None:
        for _ in range(rounds):
            one_round(sample=True)
    else:
        round_runner(lambda: one_round(sample=True), rounds)
    return result
