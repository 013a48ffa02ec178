"""Reading a sandbox's log (the files logs.py writes): entries in order across the rotated
files, filtered by source and time, the last N read from the end, and follow.

Readers never block writers for long: the set of files is opened under the shared lock
(so no rotation happens mid-snapshot) and read through those descriptors after the lock
is released; a rotated file is never written again, so what was opened stays valid.
A line that does not parse (torn by a full disk, or not ours) is skipped.
"""
from __future__ import annotations

import fcntl
import json
import os
import re
import time
from collections import deque
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional

from .logs import LOCK_NAME, LOG_NAME, SOURCES, format_stamp, log_files

SOURCE_GROUPS = {"stdout": {"stdout"}, "stderr": {"stderr"}, "system": {"system"},
                 "output": {"stdout", "stderr"}, "all": set(SOURCES)}
BLOCK = 64 * 1024
# A line longer than this is not one the writer made (its lines stay under ~25 KiB):
# skipped, so a damaged file cannot make a reader hold it all.
MAX_LINE = 1024 * 1024

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)([smhd])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


class LogQueryError(ValueError):
    """A --source or a time that cannot be understood; the message names it."""


def parse_sources(text: str) -> set:
    """`stdout,stderr,output,system,all` (comma separated, any mix) -> set of sources."""
    chosen = set()
    for word in (w.strip() for w in text.split(",")):
        if word not in SOURCE_GROUPS:
            raise LogQueryError(f"unknown log source {word!r}: use stdout, stderr, output, "
                                "system or all, separated by commas")
        chosen |= SOURCE_GROUPS[word]
    return chosen


def parse_time(text: str, now: Optional[datetime] = None) -> str:
    """A --since/--until value -> the log's stamp form, for comparing with entries' `t`.

    Accepted: a time (`2026-11-29T10:00:00Z`, with fractions or an offset like +01:00;
    without a zone it is UTC, as every time msb shows is), a date (`2026-11-29`, its
    midnight UTC), or a duration back from now (`30s`, `10m`, `1h30m`, `2d`; a bare
    number is seconds, as msb's durations are)."""
    value = text.strip()
    now = now or datetime.now(timezone.utc)
    if re.fullmatch(r"\d+(?:\.\d+)?", value):
        return format_stamp(now - timedelta(seconds=float(value)))
    if value and re.fullmatch(r"(?:\d+(?:\.\d+)?[smhd])+", value):
        seconds = sum(float(n) * _UNIT_SECONDS[u] for n, u in _DURATION_PART.findall(value))
        return format_stamp(now - timedelta(seconds=seconds))
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise LogQueryError(f"bad time {text!r}: use a UTC time like 2026-11-29T10:00:00Z "
                            "or a duration back from now like 10m, 1h30m, 2d") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return format_stamp(when)


class LogReader:
    """The entries of the log in log_dir that match sources and [since, until] (stamps
    as parse_time gives; both ends included)."""

    def __init__(self, log_dir: Path, sources: Iterable[str] = ("stdout", "stderr"),
                 since: Optional[str] = None, until: Optional[str] = None):
        self.log_dir = Path(log_dir)
        self.sources = set(sources)
        self.since = since
        self.until = until

    def entries(self, tail: Optional[int] = None) -> Iterator[dict]:
        """The matching entries, oldest first; with tail, only the last `tail` of them."""
        files = _snapshot(self.log_dir)
        try:
            if tail is None:
                for f in files:
                    yield from self._matching(f.lines())
            else:
                yield from self._last(files, tail)
        finally:
            for f in files:
                f.close()

    def follow(self, tail: Optional[int] = None, poll: float = 0.2,
               stop: Optional[Callable[[], bool]] = None) -> Iterator[dict]:
        """entries(tail), then each new matching entry as it is written, across rotation,
        until stop() says so or the wall clock passes `until`."""
        files = _snapshot(self.log_dir)
        current = files[-1] if files and files[-1].is_base else None
        try:
            if tail is None:
                for f in files:
                    yield from self._matching(f.lines())
            else:
                yield from self._last(files, tail)
                if current is not None:     # follow on from where the tail ended
                    current.offset = current.end
            for f in files:
                if f is not current:
                    f.close()
            while True:
                ended = (stop is not None and stop()) or (
                    self.until is not None and format_stamp(datetime.now(timezone.utc)) > self.until)
                if current is not None:
                    yield from self._matching(current.lines())
                    if _still_base(self.log_dir, current.ino):
                        if ended:
                            return
                        time.sleep(poll)
                        continue
                    # Rotated away: nothing writes to it any more, so what is left in it
                    # now is all it will ever hold.
                    yield from self._matching(current.lines())
                    current.close()
                newer, current = _files_after(self.log_dir, current.ino if current else None)
                for f in newer:
                    yield from self._matching(f.lines())
                    f.close()
                if current is None:
                    if ended:
                        return
                    time.sleep(poll)
        finally:
            if current is not None:
                current.close()

    # -- internals ----------------------------------------------------------------------

    def _match(self, line: bytes) -> Optional[dict]:
        try:
            entry = json.loads(line)
            t, s = entry["t"], entry["s"]
            if not isinstance(t, str) or not isinstance(entry["d"], str):
                return None
        except (ValueError, KeyError, TypeError):
            return None
        if s not in self.sources:
            return None
        if self.since is not None and t < self.since:
            return None
        if self.until is not None and t > self.until:
            return None
        return entry

    def _matching(self, lines: Iterable[bytes]) -> Iterator[dict]:
        for line in lines:
            entry = self._match(line)
            if entry is not None:
                yield entry

    def _last(self, files: list, n: int) -> Iterator[dict]:
        """The last n matching entries, read backwards from the end of the newest file:
        memory holds n entries and one block, whatever the size of the files."""
        found: deque = deque()
        for f in reversed(files):
            if len(found) >= n:
                break
            for line in f.lines_backwards():
                entry = self._match(line)
                if entry is not None:
                    found.appendleft(entry)
                    if len(found) >= n:
                        break
        yield from found


class _OpenLog:
    """One open log file and how far it has been read (only up to its last whole line)."""

    def __init__(self, path: Path, is_base: bool):
        self.fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        st = os.fstat(self.fd)
        self.ino = st.st_ino
        self.is_base = is_base
        self.offset = 0
        self.end = _last_newline_end(self.fd, st.st_size)

    def lines(self) -> Iterator[bytes]:
        """Whole lines from offset to the end of the file as it is now."""
        buf = b""
        skipping = False
        while True:
            block = os.pread(self.fd, BLOCK, self.offset + len(buf))
            if not block:
                return
            buf += block
            *complete, buf = buf.split(b"\n")
            for line in complete:
                self.offset += len(line) + 1
                if skipping:
                    skipping = False
                elif line:
                    yield line
            if len(buf) > MAX_LINE:
                self.offset += len(buf)
                buf, skipping = b"", True

    def lines_backwards(self) -> Iterator[bytes]:
        """Whole lines up to the end seen at open, newest first; offset moves past them
        (follow continues from there)."""
        self.offset = self.end
        pos, head, skipping = self.end, b"", False
        while pos > 0:
            n = min(BLOCK, pos)
            pos -= n
            parts = (os.pread(self.fd, n, pos) + head).split(b"\n")
            head = parts[0]
            rest = parts[1:]
            if skipping and rest:
                rest, skipping = rest[:-1], False
            for line in reversed(rest):
                if line:
                    yield line
            if len(head) > MAX_LINE:
                head, skipping = b"", True
        if head and not skipping:
            yield head

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _last_newline_end(fd: int, size: int) -> int:
    """The offset just past the last newline before size: a writer may be half-way
    through a line, and a reader only takes whole ones."""
    pos = size
    while pos > 0:
        n = min(BLOCK, pos)
        block = os.pread(fd, n, pos - n)
        i = block.rfind(b"\n")
        if i >= 0:
            return pos - n + i + 1
        pos -= n
        if size - pos > MAX_LINE:
            return size
    return 0


class _SharedLock:
    """The writers' lock, shared: no rotation while the set of files is opened. A log
    directory the reader cannot write (someone else's, read-only) is read unlocked."""

    def __init__(self, log_dir: Path):
        try:
            self.fd = os.open(Path(log_dir) / LOCK_NAME, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            self.fd = None

    def __enter__(self):
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_SH)
        return self

    def __exit__(self, *exc):
        if self.fd is not None:
            os.close(self.fd)   # closing drops the lock


def _snapshot(log_dir: Path) -> list:
    """Every log file open, oldest first, as one consistent set."""
    with _SharedLock(log_dir):
        return _open_all(log_dir, log_files(log_dir))


def _open_all(log_dir: Path, paths: list) -> list:
    files = []
    for p in paths:
        try:
            files.append(_OpenLog(p, p.name == LOG_NAME))
        except FileNotFoundError:   # removed by a rotation without the lock
            pass
    return files


def _still_base(log_dir: Path, ino: int) -> bool:
    try:
        return os.stat(Path(log_dir) / LOG_NAME).st_ino == ino
    except FileNotFoundError:
        return False


def _files_after(log_dir: Path, ino: Optional[int]):
    """The rotated files newer than the one with inode ino (all of them when it is gone
    or None), oldest first, and the current file (None when there is none yet)."""
    files = _snapshot(log_dir)
    base = files.pop() if files and files[-1].is_base else None
    seen = [i for i, f in enumerate(files) if f.ino == ino]
    keep_from = seen[0] + 1 if seen else 0
    for f in files[:keep_from]:
        f.close()
    return files[keep_from:], base
