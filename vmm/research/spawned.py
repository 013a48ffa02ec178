"""Timing a VMM that runs as its own process: spawn it, watch its serial console (its
stdout) for the test init's READY line, let it end or kill it. The baselines run this
way, and so does ours with `--process fresh` (`python -m vmm boot` in a new process) and
`--process launcher` (the compiled `vmm-boot`, launcher.py).

The spawn is the run's `request` mark: the process's own start-up counts for it.
"""
from __future__ import annotations

import os
import selectors
import subprocess
import tempfile
import time
from typing import Callable, Dict, List, Optional

from .phases import ReadyLineWatch, guest_phases, host_phases, ready_boottime_ns
from .samples import failed_sample, keep_initcalls, new_sample

CONSOLE_CAP = 4 << 20   # bytes of a console kept for parsing
TAIL_CAP = 64 << 10     # bytes of the end of stdout kept for what the process reports last
EXIT_GRACE_S = 5.0      # after READY, how long the guest may take to end before a kill


def run_process(system: str, argv: List[str], *, initcalls: int, timeout: float,
                more_marks: Optional[Callable[[bytes], Dict[str, int]]] = None,
                env: Optional[Dict[str, str]] = None) -> dict:
    """Spawn argv, time it to the READY line on its stdout, let it end (or kill it).
    more_marks, called once the process has ended with the last TAIL_CAP bytes of its
    stdout (where a report after the console is, however long the console was), may add
    marks it reported itself (CLOCK_MONOTONIC ns: the clock is the host's, shared by
    every process)."""
    watch = ReadyLineWatch(time.monotonic_ns)
    console = bytearray()
    tail = bytearray()
    with tempfile.TemporaryFile() as err:
        request = time.monotonic_ns()
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=err, env=env)
        except OSError as e:
            return failed_sample(system, f"{argv[0]}: {e}")
        deadline = time.monotonic() + timeout
        eof = False
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ)
            while True:
                left = deadline - time.monotonic()
                if watch.seen_ns is not None:
                    left = min(left, EXIT_GRACE_S)
                if left <= 0 or not sel.select(left):
                    break
                data = os.read(proc.stdout.fileno(), 65536)
                if not data:
                    eof = True
                    break
                watch.feed(data)
                console += data[:max(0, CONSOLE_CAP - len(console))]
                tail += data
                del tail[:max(0, len(tail) - TAIL_CAP)]
        killed = False
        try:
            # Its stdout closed: it is ending (or has), give it a moment to be reaped.
            rc = proc.wait(EXIT_GRACE_S if eof else 0)
        except subprocess.TimeoutExpired:
            killed = True
            proc.kill()
            rc = proc.wait()
        proc.stdout.close()
        err.seek(0)
        stderr = err.read()[-2000:].decode("utf-8", "replace").strip()
    sample = new_sample(system)
    marks = {"request": request}
    if more_marks is not None:
        marks.update(more_marks(bytes(tail)))
    if watch.seen_ns:
        marks["ready_line"] = watch.seen_ns
    sample["marks_ms"] = {k: (v - request) / 1e6 for k, v in marks.items()}
    sample["phases_ms"] = host_phases(marks)
    sample["guest_ms"] = guest_phases(init_boottime_ns=ready_boottime_ns(bytes(console)))
    sample["status"] = "killed" if killed else f"exit {rc}"
    if initcalls:
        keep_initcalls(sample, console.decode("utf-8", "replace"), initcalls)
    if watch.seen_ns is None:
        sample["ok"] = False
        sample["error"] = (f"no READY line ({sample['status']})"
                           + (f": {stderr.splitlines()[-1]}" if stderr else ""))
    return sample
