"""How the fuzz tests run a fuzzer: in a child process (a crash or a sanitizer abort is a
failed child, not a dead test runner), with a seed and a budget that make it replayable.

- Seed: $VMM_FUZZ_SEED, else a fresh one; printed, and named in every failure message.
- Budget: $VMM_FUZZ_SECONDS of wall time (small default for the ordinary suite), or exactly
  $VMM_FUZZ_ROUNDS iterations. A time budget alone is not replayable, so every run prints
  its iteration count and the failure message says how to replay it:
  VMM_FUZZ_SEED=<s> VMM_FUZZ_ROUNDS=<n>.

A fuzzer module has main(budget, seed, *args) and prints `key=value` statistics on its last
line of stdout; Budget counts its rounds.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from support import sanitized_core

TESTS = Path(__file__).resolve().parent.parent
DEFAULT_SECONDS = 2.0
PROGRESS = 200


def seconds() -> float:
    return float(os.environ.get("VMM_FUZZ_SECONDS") or DEFAULT_SECONDS)


def rounds() -> int:
    return int(os.environ.get("VMM_FUZZ_ROUNDS") or 0)


def seed(name: str) -> int:
    s = int(os.environ.get("VMM_FUZZ_SEED") or int.from_bytes(os.urandom(4), "little"))
    print(f"{name}: seed {s} (replay with VMM_FUZZ_SEED={s})")
    return s


class Budget:
    """`while b.more():` runs for `secs` seconds, or exactly `rounds` times if rounds > 0."""

    def __init__(self, secs: float, rounds: int = 0):
        self.secs, self.limit, self.rounds = secs, rounds, 0
        self.end = None  # the clock starts at the first round: set-up (a build, a child
        #                  starting on a loaded machine) must not eat the fuzzing time

    def _ended(self) -> bool:
        if self.end is None:
            self.end = time.monotonic() + self.secs
        return time.monotonic() >= self.end

    def more(self) -> bool:
        if self.limit and self.rounds >= self.limit or not self.limit and self._ended():
            return False
        self.rounds += 1
        if self.rounds % PROGRESS == 0:   # a crash prints no statistics: this bounds the replay
            print(f"progress: rounds={self.rounds}", file=sys.stderr, flush=True)
        return True

    def left(self) -> bool:
        """Whether more() would say yes, without counting a round."""
        return self.rounds < self.limit if self.limit else not self._ended()

    def argv(self) -> list[str]:
        return [str(self.secs), str(self.limit)]

    @classmethod
    def from_argv(cls, argv: list[str]) -> "Budget":
        return cls(float(argv[0]), int(argv[1]))


def stats(stdout: str) -> dict:
    last = stdout.strip().splitlines()[-1] if stdout.strip() else ""
    return {k: v for k, _, v in (w.partition("=") for w in last.split()) if _}


def run(name: str, module: str, *args, secs: float | None = None, extra_timeout: float = 60.0) -> dict:
    """Runs `python -m support.<module> SECONDS ROUNDS SEED *args`; returns its statistics, or
    fails the test with the seed, the rounds to replay and the child's output."""
    secs = seconds() if secs is None else secs
    s = seed(name)
    n = rounds()
    env = child_env()
    argv = [sys.executable, "-m", f"support.{module}", str(secs), str(n), str(s), *map(str, args)]
    # A replay by rounds takes as long as it takes; a time budget has a hard deadline.
    timeout = None if n else secs + extra_timeout
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired as e:
        raise AssertionError(f"{name}: seed {s} hung past {timeout:.0f} s (replay: VMM_FUZZ_SEED={s})\n"
                             f"{_text(e.stdout)[-2000:]}\n{_text(e.stderr)[-4000:]}") from None
    st = stats(r.stdout)
    replay = f"VMM_FUZZ_SEED={s} VMM_FUZZ_ROUNDS={st.get('rounds') or _crash_rounds(r.stderr)}"
    if r.returncode != 0:
        # A sanitizer report is quoted from its first line: the tail alone may cut it off.
        found = sanitized_core.report(r.stderr)
        raise AssertionError(f"{name}: seed {s} failed (rc {r.returncode}; replay: {replay})\n"
                             + (f"sanitizer report:\n{found}\n" if found else "")
                             + f"{r.stdout[-2000:]}\n{_without_progress(r.stderr)[-4000:]}")
    print(f"{name}: {r.stdout.strip().splitlines()[-1]} (replay: {replay})")
    return st


def child_env() -> dict:
    """A child imports `support.*` (tests/) and `vmm` (the checkout above it) first."""
    return dict(os.environ, PYTHONPATH=os.pathsep.join(
        p for p in [str(TESTS), str(TESTS.parent), os.environ.get("PYTHONPATH", "")] if p))


def _crash_rounds(stderr: str) -> str:
    """Rounds enough to reach a crash: the last progress line plus one interval."""
    done = [int(line.split("=")[1]) for line in stderr.splitlines() if line.startswith("progress: rounds=")]
    return f"{(done[-1] if done else 0) + PROGRESS} (at most)"


def _without_progress(stderr: str) -> str:
    return "\n".join(line for line in stderr.splitlines() if not line.startswith("progress: "))


def _text(b) -> str:
    return b.decode(errors="replace") if isinstance(b, bytes) else (b or "")


def mutator_on() -> bool:
    """False when VMM_FUZZ_MUTATOR=0 turns the racing threads off for an exact replay."""
    return os.environ.get("VMM_FUZZ_MUTATOR", "1") != "0"
