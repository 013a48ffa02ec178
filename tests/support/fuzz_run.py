"""Seeds, budgets and child runs for every fuzz test, so that a failing run replays exactly.

- Seed: $VMM_FUZZ_SEED (or a test's own <NAME>_SEED), else a fresh one; printed, and named
  in every failure message.
- Budget: $VMM_FUZZ_SECONDS of wall time (a test may let its own <NAME>_SECONDS override
  it; small defaults for the ordinary suite), or exactly $VMM_FUZZ_ROUNDS iterations. A
  time budget alone is not replayable (a loaded machine does fewer rounds in the same
  seconds), so every run counts its rounds and a failure says how to replay it:
  VMM_FUZZ_SEED=<s> VMM_FUZZ_ROUNDS=<n>.
- Child runs (run()): a fuzzer that drives the C core runs in a child process, so a crash
  or a sanitizer abort is a failed child, not a dead test runner. Its Budget keeps the
  round count in a small shared file ($VMM_FUZZ_PROGRESS, made by run()), so even a child
  killed by a signal says exactly how far it got.

A fuzzer module run as a child has main(budget, seed, *args), is started as
`python -m support.<module> SECONDS ROUNDS SEED ARGS...` (Budget.from_argv takes the first
two) and prints `key=value` statistics, `rounds=<n>` among them, on its last line of stdout.
An in-process fuzz loop uses Budget.from_env and seed_named_on_failure.
"""
from __future__ import annotations

import mmap
import os
import struct
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

from support import sanitized_core

TESTS = Path(__file__).resolve().parent.parent
DEFAULT_SECONDS = 2.0
SEED_ENV = "VMM_FUZZ_SEED"
PROGRESS_ENV = "VMM_FUZZ_PROGRESS"


def seconds(default: float = DEFAULT_SECONDS, env: str | None = None) -> float:
    """$env (a test's own budget variable) if set, else $VMM_FUZZ_SECONDS, else default."""
    value = (os.environ.get(env) if env else None) or os.environ.get("VMM_FUZZ_SECONDS")
    return float(value) if value else default


def rounds() -> int:
    """$VMM_FUZZ_ROUNDS, or 0: run by time."""
    return int(os.environ.get("VMM_FUZZ_ROUNDS") or 0)


def seed(name: str, env: str = SEED_ENV) -> int:
    """$env replays a run; else a fresh seed, printed so that a passing run can be replayed too."""
    value = os.environ.get(env)
    s = int(value) if value else int.from_bytes(os.urandom(4), "little")
    print(f"{name}: seed {s} (replay with {env}={s})")
    return s


def replay(seed_env: str, seed_: int, rounds_: int | str) -> str:
    return f"{seed_env}={seed_} VMM_FUZZ_ROUNDS={rounds_}"


class Budget:
    """`while b.more():` runs for `secs` seconds, or exactly `limit` times if limit > 0;
    `rounds` counts the rounds started. With `progress` (a file of 8 bytes), the count is
    also kept there, for a parent to read even if this process dies. The clock starts at
    the first round: set-up (a build, a child starting on a loaded machine) must not eat
    the fuzzing time."""

    def __init__(self, secs: float, limit: int = 0, progress: str | None = None):
        self.secs, self.limit, self.rounds = secs, limit or 0, 0
        self.end = None
        self._map = None
        if progress:
            with open(progress, "r+b") as f:
                self._map = mmap.mmap(f.fileno(), 8)

    def _ended(self) -> bool:
        if self.end is None:
            self.end = time.monotonic() + self.secs
        return time.monotonic() >= self.end

    def more(self) -> bool:
        if not self.left():
            return False
        self.rounds += 1
        if self._map is not None:
            struct.pack_into("<Q", self._map, 0, self.rounds)
        return True

    def left(self) -> bool:
        """Whether more() would say yes, without counting a round."""
        return self.rounds < self.limit if self.limit else not self._ended()

    @classmethod
    def from_argv(cls, argv: list[str]) -> "Budget":
        """A child's budget: SECONDS ROUNDS from its command line, the progress file from
        the environment run() gave it."""
        return cls(float(argv[0]), int(argv[1]), os.environ.get(PROGRESS_ENV) or None)

    @classmethod
    def from_env(cls, default_seconds: float, seconds_env: str | None = None) -> "Budget":
        """An in-process loop's budget: see seconds() and rounds()."""
        return cls(seconds(default_seconds, seconds_env), rounds())


@contextmanager
def seed_named_on_failure(seed_env: str, seed_: int, budget: Budget):
    """Any failure inside names the seed and the round it happened in."""
    try:
        yield
    except Exception as e:
        raise AssertionError(f"fuzz failed in round {budget.rounds} with seed {seed_} "
                             f"(replay: {replay(seed_env, seed_, budget.rounds)}): {e!r}") from e


def summary(name: str, seed_env: str, seed_: int, budget: Budget, **stats) -> None:
    """An in-process loop's statistics line, as a child's run() prints it (the fuzz tier
    quotes these lines): the rounds done and how to replay them."""
    words = " ".join(f"{k}={v}" for k, v in stats.items())
    print(f"{name}: rounds={budget.rounds} {words} (replay: {replay(seed_env, seed_, budget.rounds)})")


class Progress:
    """The shared round counter of a child's Budget (see Budget.from_argv)."""

    def __init__(self, path: str):
        self.path = path
        with open(path, "wb") as f:
            f.write(bytes(8))

    def rounds(self) -> int:
        with open(self.path, "rb") as f:
            return struct.unpack("<Q", f.read(8))[0]


def stats(stdout: str) -> dict:
    last = stdout.strip().splitlines()[-1] if stdout.strip() else ""
    return {k: v for k, _, v in (w.partition("=") for w in last.split()) if _}


def run(name: str, module: str, *args, secs: float | None = None, extra_timeout: float = 60.0) -> dict:
    """Runs `python -m support.<module> SECONDS ROUNDS SEED *args`; returns its statistics, or
    fails the test with the seed, the rounds to replay and the child's output."""
    secs = seconds() if secs is None else secs
    s = seed(name)
    n = rounds()
    argv = [sys.executable, "-m", f"support.{module}", str(secs), str(n), str(s), *map(str, args)]
    # A replay by rounds takes as long as it takes; a time budget has a hard deadline.
    timeout = None if n else secs + extra_timeout
    with tempfile.TemporaryDirectory(prefix="fuzz-progress-") as d:
        progress = Progress(os.path.join(d, "rounds"))
        env = dict(child_env(), **{PROGRESS_ENV: progress.path})
        try:
            r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env)
        except subprocess.TimeoutExpired as e:
            raise AssertionError(f"{name}: seed {s} hung past {timeout:.0f} s in round {progress.rounds()} "
                                 f"(replay: {replay(SEED_ENV, s, progress.rounds())})\n"
                                 f"{_text(e.stdout)[-2000:]}\n{_text(e.stderr)[-4000:]}") from None
        done = progress.rounds()
    st = stats(r.stdout)
    again = replay(SEED_ENV, s, st.get("rounds") or done)
    if r.returncode != 0:
        # A sanitizer report is quoted from its first line: the tail alone may cut it off.
        found = sanitized_core.report(r.stderr)
        raise AssertionError(f"{name}: seed {s} failed in round {done} (rc {r.returncode}; replay: {again})\n"
                             + (f"sanitizer report:\n{found}\n" if found else "")
                             + f"{r.stdout[-2000:]}\n{r.stderr[-4000:]}")
    print(f"{name}: {r.stdout.strip().splitlines()[-1]} (replay: {again})")
    return st


def child_env() -> dict:
    """A child imports `support.*` (tests/) and `vmm` (the checkout above it) first."""
    return dict(os.environ, PYTHONPATH=os.pathsep.join(
        p for p in [str(TESTS), str(TESTS.parent), os.environ.get("PYTHONPATH", "")] if p))


def _text(b) -> str:
    return b.decode(errors="replace") if isinstance(b, bytes) else (b or "")


def mutator_on() -> bool:
    """False when VMM_FUZZ_MUTATOR=0 turns the racing threads off for an exact replay."""
    return os.environ.get("VMM_FUZZ_MUTATOR", "1") != "0"
