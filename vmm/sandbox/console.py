"""The guest console of a sandbox: the kernel is quiet, so what reaches it is errors,
panics and the agent's fatal messages; kept whole in a log file and its tail in memory,
for BootFailed."""
from __future__ import annotations

import threading

CONSOLE_TAIL_BYTES = 8192


class ConsoleLog:
    """The guest console: appended to a log file, its tail kept in memory for errors.

    write() is the Machine's console callback and may still be called after close()
    (the VM's reader can deliver a last chunk): then only the tail grows.
    """

    def __init__(self, path: str):
        self.path = path
        self._f = open(path, "ab", buffering=0)
        self._tail = bytearray()
        self._lock = threading.Lock()

    def write(self, data: bytes) -> None:
        with self._lock:
            if self._f is not None:
                self._f.write(data)
            self._tail += data
            if len(self._tail) > 2 * CONSOLE_TAIL_BYTES:  # trim in batches, not per byte
                del self._tail[:-CONSOLE_TAIL_BYTES]

    def tail(self) -> str:
        with self._lock:
            data = bytes(self._tail[-CONSOLE_TAIL_BYTES:])
        return data.decode(errors="replace")

    def close(self) -> None:
        with self._lock:
            if self._f is not None:
                self._f.close()
                self._f = None
