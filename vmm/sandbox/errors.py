"""BootFailed: the one error for a sandbox whose guest never became ready."""
from __future__ import annotations

from typing import Optional

from ..errors import GuestError
from ..machine import ExitStatus

CONSOLE_TAIL_LINES = 25  # enough for a panic's backtrace, short enough to read in a traceback


class BootFailed(GuestError):
    """The guest never became ready: bad init, kernel panic, no root, or the boot timeout.

    console_tail holds the last lines of the guest console; status is how the VM ended.
    """

    def __init__(self, reason: str, *, console_tail: str = "", status: Optional[ExitStatus] = None,
                 elapsed: float = 0.0, log_path: Optional[str] = None):
        tail = "\n".join("  | " + line for line in console_tail.splitlines()[-CONSOLE_TAIL_LINES:])
        super().__init__(f"sandbox did not become ready: {reason}"
                         + (f"\nguest console (last lines):\n{tail}" if tail else
                            "\n(the guest console is empty)"))
        self.reason = reason
        self.console_tail = console_tail
        self.status = status
        self.elapsed = elapsed
        self.log_path = log_path
