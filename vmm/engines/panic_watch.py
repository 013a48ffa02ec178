"""Spotting a guest kernel panic on the serial console, the same way on every engine.

With `panic=-1` a panicking Linux resets at once, which both engines would otherwise report
as a plain guest reset (`shutdown`). The first console line holding the kernel's panic
marker turns that ending into an `error` saying "guest kernel panic: ...", so a caller
(BootFailed, `python -m vmm boot`) reads the same thing whichever engine ran the guest.
"""
from __future__ import annotations

from typing import Optional

PANIC_MARKER = b"Kernel panic - not syncing"
# A console line longer than this is cut: the guest must not make us buffer without end.
MAX_LINE = 4096


class PanicWatch:
    def __init__(self):
        self.line: Optional[str] = None   # the first whole line holding the marker
        self._partial = bytearray()

    def feed(self, data: bytes, at_eof: bool = False) -> None:
        """Console bytes as they arrive (lines may span calls); at_eof once nothing more will."""
        if self.line is not None:
            return
        lines = (self._partial + data).split(b"\n")
        self._partial = bytearray() if at_eof else bytearray(lines.pop()[-MAX_LINE:])
        for line in lines:
            if PANIC_MARKER in line:
                self.line = line.decode(errors="replace").strip()
                return

    def message(self) -> Optional[str]:
        return None if self.line is None else f"guest kernel panic: {self.line}"
