"""One sandbox per writable disk: two VMs mounting one ext4 read-write would corrupt it.

The lock is a flock on the disk file, so it holds across processes and goes away with a
crashed holder. A disk attached read-only (a volume mounted `:ro`) takes it shared: any
number of readers, but no writer beside them.
"""
from __future__ import annotations

import fcntl
import os
from typing import Optional

from ..errors import ConfigError


class DiskLock:
    """An exclusive (or, with shared=True, a shared) lock on a disk, taken at once or
    refused with ConfigError; busy replaces the refusal's message."""

    def __init__(self, path: str, *, shared: bool = False, busy: Optional[str] = None):
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise ConfigError(busy or f"writable disk {path} is in use by another sandbox") from None
        self.path = path
        self._fd: Optional[int] = fd

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        """Idempotent."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
