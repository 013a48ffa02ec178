"""Seeds and iteration budgets for randomized tests, so that a failing run replays exactly.

A seed alone does not replay a run that stops after a time budget: a loaded machine does
fewer iterations in the same seconds. So every fuzz loop counts its rounds, a failure names
the seed and the round count, and `VMM_FUZZ_ROUNDS=<n>` runs exactly n rounds instead of
`VMM_FUZZ_SECONDS`. Fuzzers that run in a child process (a crash must fail the child, not
the test runner) keep their round count in a small shared file, so that even a child killed
by a signal says how far it got."""
from __future__ import annotations

import mmap
import os
import struct
import time
from contextlib import contextmanager
from typing import Optional


def fuzz_seed(name: str, env: str = "VMM_FUZZ_SEED") -> int:
    """$env replays a run; else a fresh seed, printed so a passing run can be replayed too."""
    value = os.environ.get(env)
    seed = int(value) if value else int.from_bytes(os.urandom(4), "little")
    print(f"{name}: seed {seed} (replay with {env}={seed})")
    return seed


def fuzz_seconds(default: float) -> float:
    return float(os.environ.get("VMM_FUZZ_SECONDS") or default)


def fuzz_rounds() -> Optional[int]:
    value = os.environ.get("VMM_FUZZ_ROUNDS")
    return int(value) if value else None


class Budget:
    """The rounds of a fuzz loop: exactly `rounds` when given (a replay), else as many as
    fit in `seconds`. `while budget.more(): ...`; `done` counts the rounds started."""

    def __init__(self, seconds: float, rounds: Optional[int] = None, progress: Optional[str] = None):
        self.seconds, self.rounds, self.done = seconds, rounds, 0
        self._end = time.monotonic() + seconds
        self._map = None
        if progress:  # a child process: the parent reads the count even if we crash
            with open(progress, "r+b") as f:
                self._map = mmap.mmap(f.fileno(), 8)

    @classmethod
    def from_env(cls, default_seconds: float) -> "Budget":
        return cls(fuzz_seconds(default_seconds), fuzz_rounds())

    def more(self) -> bool:
        go = self.done < self.rounds if self.rounds is not None else time.monotonic() < self._end
        if go:
            self.done += 1
            if self._map is not None:
                struct.pack_into("<Q", self._map, 0, self.done)
        return go


def replay(seed_env: str, seed: int, rounds: int) -> str:
    return f"{seed_env}={seed} VMM_FUZZ_ROUNDS={rounds}"


@contextmanager
def seed_named_on_failure(seed_env: str, seed: int, budget: Budget):
    """Any failure inside names the seed and the round it happened in."""
    try:
        yield
    except Exception as e:
        raise AssertionError(f"fuzz failed in round {budget.done} with seed {seed} "
                             f"(replay: {replay(seed_env, seed, budget.done)}): {e!r}") from e


class ChildProgress:
    """The shared round counter of a fuzzer run as a child process (see Budget)."""

    def __init__(self, path: str):
        self.path = path
        with open(path, "wb") as f:
            f.write(bytes(8))

    def rounds(self) -> int:
        with open(self.path, "rb") as f:
            return struct.unpack("<Q", f.read(8))[0]
