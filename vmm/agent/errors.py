"""Errors of the agent client, and the one place that turns the agent's error frames
(ERROR, FAILED) and malformed replies into them.

Every error is a GuestError: it describes something in (or about) the guest, not a bad
argument on the host.
"""
from __future__ import annotations

import errno as errno_mod
from typing import Dict, Sequence

from . import protocol as P
from .protocol import G
from ..errors import GuestError


class AgentError(GuestError):
    """The agent reported an error, or broke the protocol."""

    def __init__(self, message: str, *, errno: int = 0, kind: str = ""):
        super().__init__(message)
        self.errno = errno
        self.kind = kind


class SandboxNotRunning(AgentError):
    """There is no live connection to the agent (the VM stopped, or never came up)."""


class Timeout(AgentError):
    """A deadline passed. For exec, the process was killed; output so far is attached."""

    def __init__(self, message: str, *, stdout: bytes = b"", stderr: bytes = b""):
        super().__init__(message, errno=errno_mod.ETIMEDOUT, kind="timeout")
        self.stdout = stdout
        self.stderr = stderr


class OutputTooLarge(AgentError):
    """exec() collected more output than its max_output: the process group was killed;
    the first max_output bytes (stdout first, then stderr, as they arrived) are attached."""

    def __init__(self, message: str, *, limit: int, stdout: bytes = b"", stderr: bytes = b""):
        super().__init__(message, errno=errno_mod.EFBIG, kind="output_too_large")
        self.limit = limit
        self.stdout = stdout
        self.stderr = stderr


class ExecFailed(AgentError):
    """The command could not be started (not found, not executable, bad cwd/user, ...)."""

    def __init__(self, message: str, *, errno: int, kind: str, argv: Sequence[str] = ()):
        super().__init__(message, errno=errno, kind=kind)
        self.argv = list(argv)

    @property
    def exit_code(self) -> int:
        """The shell's convention: 127 not found, 126 found but not executable."""
        if self.kind == "not_found":
            return 127
        if self.kind in ("permission_denied", "exec_format"):
            return 126
        return 1


class FsError(AgentError):
    """A file request failed in the guest; errno and kind say why."""

    def to_oserror(self) -> OSError:
        return OSError(self.errno, str(self))


def reply_fields(payload: bytes) -> Dict[int, object]:
    """Decode a TLV reply; a malformed one from the guest is an AgentError, not a crash."""
    try:
        return P.decode(payload)
    except P.ProtocolError as e:
        raise AgentError(f"malformed reply from the agent: {e}", kind="bad_frame") from None


def error_from(payload: bytes, cls=AgentError, **extra) -> AgentError:
    """The exception an ERROR or FAILED frame describes (errno, kind, message)."""
    try:
        f = P.decode(payload)
    except P.ProtocolError as e:
        return AgentError(f"malformed error frame from the agent: {e}")
    return cls(P.text(f.get(G.MESSAGE), "agent error"), errno=P.signed(f.get(G.ERRNO, 0)),
               kind=P.text(f.get(G.KIND)), **extra)
