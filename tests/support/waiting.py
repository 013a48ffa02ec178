"""Waiting on a condition with a deadline, instead of sleeping and hoping it is enough."""
from __future__ import annotations

import time


def wait_until(pred, timeout=5.0, what="the condition", interval=0.005):
    """Polls pred() until it is true; fails naming `what` if timeout seconds pass first.
    Returns pred()'s last (true) value."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)
