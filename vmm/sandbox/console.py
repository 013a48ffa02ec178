"""The guest console of a sandbox: the kernel is quiet, so what reaches it is errors,
panics and the agent's fatal messages; kept in a log file (capped, rotated, rate limited:
vmm/console_limits.py) and its tail in memory, for BootFailed (ConsoleLog). An msb
supervisor copies that file into the sandbox log as it grows (ConsoleCopier)."""
from __future__ import annotations

import os
import threading
from typing import Optional

from ..console_limits import CappedFile, ConsoleLimits, ConsoleTail, RateLimit

CONSOLE_TAIL_BYTES = 8192
CONSOLE_POLL_S = 0.5


class ConsoleLog:
    """The guest console: appended to a log file, its tail kept in memory for errors.

    The file is `path` and, once it reaches limits.file_bytes, `path.1` (the older part):
    at most 2 x 4 MiB by default. What reaches the file is rate limited (64 KiB/s after
    256 KiB by default); the excess is dropped with a counted "[vmm: N bytes dropped ...]"
    line, except the latest 32 KiB, which are written at the next chance or at close(). The
    tail in memory (CONSOLE_TAIL_BYTES) gets every byte, rate or not: a panic after a
    flood is always in BootFailed's message.

    write() is the Machine's console callback and may still be called after close()
    (the VM's reader can deliver a last chunk): then only the tail grows.
    """

    def __init__(self, path: str, limits: Optional[ConsoleLimits] = None):
        limits = limits if limits is not None else ConsoleLimits()
        self.path = path
        self._file: Optional[CappedFile] = CappedFile(path, limits.file_bytes)
        self._limit = RateLimit(self._file.write, limits)
        self._tail = ConsoleTail(CONSOLE_TAIL_BYTES)
        self._lock = threading.Lock()

    def write(self, data: bytes) -> None:
        with self._lock:
            self._tail.add(data)
            if self._file is not None:
                self._limit.write(data)

    @property
    def dropped(self) -> int:
        """Bytes the rate limit kept out of the file."""
        with self._lock:
            return self._limit.dropped

    def tail(self) -> str:
        with self._lock:
            data = self._tail.value()
        return data.decode(errors="replace")

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                try:
                    self._limit.flush()
                finally:
                    self._file.close()
                    self._file = None


class ConsoleCopier:
    """Copies new bytes of a ConsoleLog's file into a sandbox log (vmm/sandbox/logs.py) as
    `system` entries, every CONSOLE_POLL_S and once more at close().

    It follows the file across a rotation: it keeps the file it reads open, so after
    ConsoleLog renamed it to <path>.1 it first reads the rest of it, then starts on the new
    <path>. (The rate limit means a rotation at most every ~60 s by default: the file
    cannot rotate twice between two polls.) What reaches the sandbox log is therefore
    bounded by the same rate, and the log itself is capped (logs.py)."""

    def __init__(self, path: str, log):
        self.path, self.log = path, log
        self._f = None
        self._lock = threading.Lock()   # the poll thread and close() both copy
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="msb-console", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(CONSOLE_POLL_S):
            self.copy()

    def copy(self) -> None:
        with self._lock:
            try:
                data = self._read()
            except OSError:
                return
            if data:
                self.log.write("system", data)

    def _read(self) -> bytes:
        if self._f is None:
            self._f = open(self.path, "rb")
        data = self._f.read()
        try:
            current = os.stat(self.path).st_ino
        except FileNotFoundError:
            return data
        if current != os.fstat(self._f.fileno()).st_ino:   # rotated: on to the new file
            self._f.close()
            self._f = open(self.path, "rb")
            data += self._f.read()
        return data

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.copy()
        with self._lock:
            if self._f is not None:
                self._f.close()
                self._f = None
