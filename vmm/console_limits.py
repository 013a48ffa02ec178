"""What a guest's serial console may cost the host, and the pieces that bound it.

A guest writes to its console as fast as it can, for as long as it likes. The host keeps:

- in memory, the last `tail_bytes` (ConsoleTail; Machine.console), default 1 MiB;
- in a file (a path given as a Machine's `console=`, a sandbox's console.log), at most
  `file_bytes` per file: when a write would pass that, the file becomes `<path>.1` (the
  older `.1` is removed) and a new one starts (CappedFile), so at most 2 x file_bytes on
  disk, default 2 x 4 MiB;
- at most `rate_bytes` per second, after a burst of `burst_bytes`, to that file or fd
  (RateLimit), default 64 KiB/s after 256 KiB. What is over the budget is dropped, except
  the latest `held_bytes` (default 32 KiB): those are written once the budget allows (at
  the guest's next write) or when the console ends, after a line
  `[vmm: N bytes dropped: ...]` counting what was lost. So the last thing a guest printed
  (a panic after a flood) always reaches the file.

A callable `console=` receives every byte as it arrives: it is code in this process and
bounds its own use (the sandbox's console log does, with these same pieces). The kernel
panic watch (engines/panic_watch.py) reads every byte before any of this, so no limit hides
a panic from it.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Callable, Optional

from .errors import ConfigError


@dataclass(frozen=True)
class ConsoleLimits:
    """The bounds above, in bytes (rate_bytes per second; None: no rate limit)."""
    tail_bytes: int = 1 << 20
    file_bytes: int = 4 << 20
    rate_bytes: Optional[int] = 64 << 10
    burst_bytes: int = 256 << 10
    held_bytes: int = 32 << 10

    def __post_init__(self):
        for name in ("tail_bytes", "file_bytes", "rate_bytes", "burst_bytes", "held_bytes"):
            value = getattr(self, name)
            if name == "rate_bytes" and value is None:
                continue
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"console limit {name} must be a positive number of bytes, "
                                  f"got {value!r}")


class ConsoleTail:
    """The last `limit` bytes of a stream. Not thread-safe: the owner locks.

    Trimmed in batches (when twice the limit is held), so a stream of small writes costs
    O(1) per byte: at most 2 x limit + one write is ever held."""

    def __init__(self, limit: int):
        self.limit = limit
        self.total = 0              # bytes seen over the stream's life
        self._buf = bytearray()

    def add(self, data: bytes) -> None:
        self.total += len(data)
        if len(data) >= self.limit:
            self._buf = bytearray(data[-self.limit:])
            return
        self._buf += data
        if len(self._buf) > 2 * self.limit:
            del self._buf[:-self.limit]

    def value(self) -> bytes:
        return bytes(self._buf[-self.limit:])

    @property
    def held(self) -> int:
        """Bytes in memory now (what the bound is about)."""
        return len(self._buf)


class RateLimit:
    """A token bucket in front of write(bytes); see the module docstring for what happens to
    the excess. Not thread-safe: the owner locks. clock: seconds, monotonic (tests pass
    their own)."""

    def __init__(self, write: Callable[[bytes], object], limits: ConsoleLimits,
                 clock: Callable[[], float] = time.monotonic):
        self._write = write
        self.rate = limits.rate_bytes
        self.burst = limits.burst_bytes
        self.held_limit = limits.held_bytes
        self._clock = clock
        self._tokens = float(self.burst)
        self._last = clock()
        self._held = bytearray()    # the latest bytes over the budget, not yet written
        self._unreported = 0        # dropped bytes the file has not been told about yet
        self.dropped = 0            # bytes dropped over the stream's life

    def write(self, data: bytes) -> None:
        if self.rate is None:
            self._write(data)
            return
        self._refill()
        if not self._held and not self._unreported:
            fits = min(len(data), int(self._tokens))
            if fits:
                self._tokens -= fits
                self._write(data[:fits])
            data = data[fits:]
            if not data:
                return
        if len(data) >= self.held_limit:   # one big write: only its end can stay
            self.dropped += len(self._held) + len(data) - self.held_limit
            self._unreported += len(self._held) + len(data) - self.held_limit
            self._held = bytearray(data[-self.held_limit:])
            self._release(force=False)
            return
        self._held += data
        over = len(self._held) - self.held_limit
        if over > 0:
            del self._held[:over]
            self.dropped += over
            self._unreported += over
        self._release(force=False)

    def flush(self) -> None:
        """The stream ends: write what is held back (and the count of what was dropped)
        whatever the budget says; it is at most held_bytes and one line."""
        if self.rate is None:
            return
        self._refill()
        self._release(force=True)

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(float(self.burst), self._tokens + (now - self._last) * self.rate)
        self._last = now

    def _release(self, force: bool) -> None:
        if not self._held and not self._unreported:
            return
        out = bytes(self._held)
        if self._unreported:
            out = dropped_marker(self._unreported, self.rate) + out
        # (never more than a full bucket: held_bytes may be set above burst_bytes)
        if not force and min(len(out), self.burst) > self._tokens:
            return
        self._tokens = max(0.0, self._tokens - len(out))
        self._held.clear()
        self._unreported = 0
        self._write(out)


def dropped_marker(n: int, rate: int) -> bytes:
    """The line that stands for n dropped bytes in a console file."""
    return (f"\n[vmm: {n} bytes dropped: the guest console wrote faster than "
            f"{rate} bytes/s]\n").encode()


class CappedFile:
    """Appends to path; a write that would take it past max_bytes first moves it to
    path.1 (replacing the older one), so the two hold at most 2 x max_bytes. A write larger
    than max_bytes is split across files. Not thread-safe: the owner locks."""

    def __init__(self, path, max_bytes: int):
        self.path = os.fspath(path)
        self.max_bytes = max_bytes
        self._f = open(self.path, "ab", buffering=0)
        self._size = os.fstat(self._f.fileno()).st_size

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            room = self.max_bytes - self._size
            if room <= 0:
                self._rotate()
                continue
            chunk = view[:room]
            n = self._f.write(chunk)
            if not n:
                raise OSError(f"cannot write the console file {self.path}")
            self._size += n
            view = view[n:]

    def _rotate(self) -> None:
        self._f.close()
        os.replace(self.path, self.path + ".1")
        self._f = open(self.path, "ab", buffering=0)
        self._size = 0

    def close(self) -> None:
        self._f.close()


class ConsoleSink:
    """Where a Machine sends console bytes: `console=` None, a path, an fd or a callable,
    with the limits above on a path or fd. write() is for the path or fd (the owner locks);
    a callable is `callback`, which the owner calls without holding its lock (a callback
    may well read Machine.console)."""

    def __init__(self, console, limits: ConsoleLimits):
        self._file: Optional[CappedFile] = None
        self._limit: Optional[RateLimit] = None
        self.callback: Optional[Callable[[bytes], object]] = None
        self._closed = False
        if console is None:
            return
        if callable(console):
            self.callback = console
        elif isinstance(console, int) and not isinstance(console, bool):
            fd = console
            self._limit = RateLimit(lambda data: _write_all(fd, data), limits)
        elif isinstance(console, (str, os.PathLike)):
            self._file = CappedFile(console, limits.file_bytes)
            self._limit = RateLimit(self._file.write, limits)
        else:
            raise ConfigError("console must be None, a path, an fd or a callable, "
                              f"not {type(console).__name__}")

    def write(self, data: bytes) -> None:
        if not self._closed and self._limit is not None:
            self._limit.write(data)

    @property
    def dropped(self) -> int:
        """Bytes the rate limit dropped (a callable is given every byte: 0)."""
        return self._limit.dropped if self._limit is not None else 0

    def close(self) -> None:
        """The console has ended: flush what was held back, close the file. Idempotent;
        writes after it are ignored."""
        if self._closed:
            return
        self._closed = True
        try:
            if self._limit is not None:
                self._limit.flush()
        finally:
            if self._file is not None:
                self._file.close()


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
