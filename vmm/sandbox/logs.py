"""A sandbox's log: JSON lines `{t, s, d, id}` in `<sandbox>/logs/`, written by several
processes at once (the supervisor and each `msb exec`), rotated with a cap.

    logs/sandbox.jsonl          the file being written
    logs/sandbox.jsonl.1 .. .N-1    older files, .1 the newest of them (keep=N files in all)
    logs/sandbox.jsonl.lock     flock: shared while appending, exclusive while rotating

One entry per line:

    t   UTC time of the write, `2026-11-29T10:00:00.123456Z` (fixed width, so entries
        compare as strings)
    s   source: "stdout", "stderr" or "system" (sandbox start/stop, the guest console)
    d   the text. Bytes are decoded as UTF-8 per stream (source + exec id) with an
        incremental decoder, so a character split across two reads is kept whole; bytes
        that are not UTF-8 become U+FFFD. Logs are for reading text: binary output is
        not kept byte for byte.
    id  the exec id the output belongs to, or null

Why lines never interleave: each line is one write(2) on an O_APPEND descriptor, and a
line is bounded (a big chunk is split into entries of at most CHUNK_CHARS characters), so
the kernel appends it whole. Why rotation is safe across processes: a writer appends
holding a shared flock and first checks that its descriptor is still the file named
sandbox.jsonl (re-opening when the inode changed); rotation renames under the exclusive
lock, so no append lands in a file after it was rotated away and every line is in
exactly one file until it falls off the end.

A log must never take the sandbox down: a write that fails (a full disk, a removed
directory) is counted in `dropped` and logged once; the next write that succeeds first
adds a system entry saying how many were lost.
"""
from __future__ import annotations

import codecs
import errno
import fcntl
import json
import os
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

LOG_NAME = "sandbox.jsonl"
LOCK_NAME = "sandbox.jsonl.lock"
SOURCES = ("stdout", "stderr", "system")
MAX_BYTES = 10 * 1024 * 1024
KEEP = 3
# At most this many characters per entry: with JSON escapes (6 bytes for a control
# character) a line stays under ~25 KiB, so one write(2) appends it whole and a reader
# never needs more than that for a line.
CHUNK_CHARS = 4096


def now_stamp() -> str:
    """The current UTC time in the log's fixed-width form."""
    return format_stamp(datetime.now(timezone.utc))


def format_stamp(when: datetime) -> str:
    return when.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def log_files(log_dir: Path) -> list[Path]:
    """The log's files that exist, oldest first (sandbox.jsonl.N .. .1, sandbox.jsonl)."""
    rotated = []
    for p in Path(log_dir).glob(LOG_NAME + ".*"):
        suffix = p.name[len(LOG_NAME) + 1:]
        if suffix.isdigit():
            rotated.append((int(suffix), p))
    files = [p for _, p in sorted(rotated, reverse=True)]
    base = Path(log_dir) / LOG_NAME
    if base.exists():
        files.append(base)
    return files


class LogWriter:
    """Appends entries to one sandbox's log; safe to use from several threads and from
    several processes writing the same log_dir at once."""

    def __init__(self, log_dir: Path, max_bytes: int = MAX_BYTES, keep: int = KEEP):
        if keep < 1:
            raise ValueError(f"keep must be at least 1 (got {keep})")
        if max_bytes < 1:
            raise ValueError(f"max_bytes must be positive (got {max_bytes})")
        self.log_dir = Path(log_dir)
        self.path = self.log_dir / LOG_NAME
        self.max_bytes = max_bytes
        self.keep = keep
        self.dropped = 0            # entries lost to write errors, over this writer's life
        self._unreported = 0        # of those, not yet announced in the log
        self._fd: Optional[int] = None
        self._lock_fd: Optional[int] = None
        self._decoders: dict = {}
        # flock belongs to the open file description, shared by this process's threads:
        # one thread's unlock would release another's lock, so threads take turns here
        # (the per-stream decoders are kept under it too).
        self._mutex = threading.Lock()

    # -- public -------------------------------------------------------------------------

    def write(self, source: str, data: bytes, exec_id: Optional[str] = None) -> None:
        """Append data from source as one or more entries. Never raises for I/O."""
        if source not in SOURCES:
            raise ValueError(f"unknown log source {source!r} (one of {', '.join(SOURCES)})")
        with self._mutex:
            if isinstance(data, str):
                # A str with lone surrogates cannot be UTF-8: they become '?'.
                text = data.encode("utf-8", "replace").decode("utf-8")
            else:
                text = self._decoder(source, exec_id).decode(bytes(data))
            self._append_text(source, text, exec_id)

    def flush(self, source: str, exec_id: Optional[str] = None) -> None:
        """End a stream: an incomplete UTF-8 sequence held back is written (as U+FFFD)."""
        with self._mutex:
            decoder = self._decoders.pop((source, exec_id), None)
            if decoder is not None:
                self._append_text(source, decoder.decode(b"", final=True), exec_id)

    def close(self) -> None:
        for source, exec_id in list(self._decoders):
            self.flush(source, exec_id)
        with self._mutex:
            for fd in (self._fd, self._lock_fd):
                if fd is not None:
                    os.close(fd)
            self._fd = self._lock_fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- internals ----------------------------------------------------------------------

    def _decoder(self, source, exec_id):
        key = (source, exec_id)
        if key not in self._decoders:
            self._decoders[key] = codecs.getincrementaldecoder("utf-8")(errors="replace")
        return self._decoders[key]

    def _append_text(self, source, text, exec_id):
        """(called holding self._mutex)"""
        if not text:
            return
        stamp = now_stamp()
        for i in range(0, len(text), CHUNK_CHARS):
            self._append_line(_line(stamp, source, text[i:i + CHUNK_CHARS], exec_id))

    def _append_line(self, line: bytes) -> None:
        try:
            if self._unreported:
                note = _line(now_stamp(), "system",
                             f"[msb] {self._unreported} log entries were dropped "
                             "(the log could not be written)\n", None)
                self._locked_append(note)
                self._unreported = 0
            self._locked_append(line)
        except OSError as e:
            self._drop(e)

    def _drop(self, e: OSError) -> None:
        if not self.dropped:
            # logging loads here, on the first failure: it costs each `msb exec` ~3 ms.
            import logging
            logging.getLogger(__name__).warning(
                "sandbox log %s: %s; dropping log entries until it can be written again",
                self.path, e)
        self.dropped += 1
        self._unreported += 1
        # A descriptor that failed may point at a file that is gone: start afresh.
        self._close_file()

    def _locked_append(self, line: bytes) -> None:
        lock = self._lock()
        fcntl.flock(lock, fcntl.LOCK_SH)
        try:
            size = self._current_size()
            if size > 0 and size + len(line) > self.max_bytes:
                # Rotation needs the exclusive lock; flock cannot upgrade in place, and
                # another writer may rotate in between, so check again once holding it.
                fcntl.flock(lock, fcntl.LOCK_UN)
                fcntl.flock(lock, fcntl.LOCK_EX)
                size = self._current_size()
                if size > 0 and size + len(line) > self.max_bytes:
                    self._rotate()
                    self._current_size()
            if self._unreported:
                line = self._after_torn(line)
            self._write_all(line)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)

    def _lock(self) -> int:
        if self._lock_fd is None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            self._lock_fd = os.open(self.log_dir / LOCK_NAME,
                                    os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        return self._lock_fd

    def _current_size(self) -> int:
        """Size of sandbox.jsonl, with self._fd made to be that file (called locked)."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            st = None
        if self._fd is not None and st is not None and os.fstat(self._fd).st_ino == st.st_ino:
            return st.st_size
        self._close_file()
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC,
                           0o644)
        return os.fstat(self._fd).st_size

    def _after_torn(self, line: bytes) -> bytes:
        """After a failed write the file may end in a torn line: start on a new one, so
        the entry is not glued to the torn one (which readers skip)."""
        size = os.fstat(self._fd).st_size
        if size == 0:
            return line
        with open(self.path, "rb") as f:
            f.seek(size - 1)
            last = f.read(1)
        return line if last in (b"\n", b"") else b"\n" + line

    def _rotate(self) -> None:
        """sandbox.jsonl -> .1 -> .2 ..., the oldest beyond keep removed (called holding
        the exclusive lock)."""
        if self.keep == 1:
            os.unlink(self.path)
        else:
            for i in range(self.keep - 1, 0, -1):
                src = self.path if i == 1 else self.path.with_name(f"{LOG_NAME}.{i - 1}")
                try:
                    os.replace(src, self.path.with_name(f"{LOG_NAME}.{i}"))
                except FileNotFoundError:
                    pass
        self._close_file()

    def _write_all(self, line: bytes) -> None:
        n = os.write(self._fd, line)
        if n != len(line):
            # A short append (the disk filled mid-line): end the torn line so the next
            # entry starts on a line of its own; readers skip the torn one.
            try:
                os.write(self._fd, b"\n")
            except OSError:
                pass
            raise OSError(errno.ENOSPC, "short write to the sandbox log")

    def _close_file(self) -> None:
        if self._fd is not None:
            try:
                os.close(self._fd)
            except OSError:
                pass
            self._fd = None


def _line(stamp: str, source: str, text: str, exec_id: Optional[str]) -> bytes:
    entry = {"t": stamp, "s": source, "d": text, "id": exec_id}
    return (json.dumps(entry, ensure_ascii=False, separators=(",", ":")) + "\n").encode()
