"""Pull progress: events from the pulling threads, and a renderer for a terminal.

`pull(progress=...)` takes None (render on stderr when it is a terminal, else stay
silent), False (silent), or any callable receiving Event objects (used by tests and by
programs embedding vmm).
"""
import sys
import threading
import time
from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class Event:
    kind: str                 # resolve | blob-start | blob-progress | blob-done | blob-cached
    reference: str            # | warning (message: a layer's media type lies) | done
    digest: Optional[str] = None
    done: int = 0
    total: int = 0
    message: str = ""


def human_size(n):
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024


class TerminalProgress:
    """One line per blob, redrawn in place with ANSI cursor movement, at most 10 times/s."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stderr
        self.lock = threading.Lock()
        self.rows = {}            # digest -> [done, total, state]
        self.drawn = 0
        self.last = 0.0

    def __call__(self, ev: Event):
        with self.lock:
            if ev.kind == "resolve":
                self.stream.write(f"Pulling {ev.reference}\n")
            elif ev.kind in ("blob-start", "blob-cached"):
                self.rows[ev.digest] = [ev.done if ev.kind == "blob-start" else ev.total, ev.total,
                                        "cached" if ev.kind == "blob-cached" else "pulling"]
            elif ev.kind == "blob-progress":
                self.rows[ev.digest][0] = ev.done
            elif ev.kind == "blob-done":
                self.rows[ev.digest][0:3] = [ev.total, ev.total, "done"]
            now = time.monotonic()
            if ev.kind == "done" or ev.kind != "blob-progress" or now - self.last > 0.1:
                self._draw()
                self.last = now
            self.stream.flush()

    def _draw(self):
        if self.drawn:
            self.stream.write(f"\x1b[{self.drawn}F")
        for digest, (done, total, state) in self.rows.items():
            pct = 100 * done // total if total else 100
            self.stream.write(f"\x1b[2K  {digest[7:19]}  {state:<8} {human_size(done):>10} / "
                              f"{human_size(total):<10} {pct:3d}%\n")
        self.drawn = len(self.rows)


def resolve(progress, stream=None):
    """The callable to report to, from pull()'s `progress` argument."""
    if progress is False:
        return None
    if progress is None:
        stream = stream or sys.stderr
        return TerminalProgress(stream) if stream.isatty() else None
    if not callable(progress):
        raise TypeError("progress must be None, False or a callable taking an Event")
    return progress
