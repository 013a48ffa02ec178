"""What the agent's replies turn into: a finished command, a file's status, a directory
entry, and the agent's READY announcement. Plain data; nothing here does I/O."""
from __future__ import annotations

import time
from typing import Dict, Optional

from ..record import Factory, Record   # not dataclasses: see vmm/record.py
from . import protocol as P
from .protocol import G

_S_IFMT, _S_IFDIR, _S_IFREG, _S_IFLNK = 0o170000, 0o040000, 0o100000, 0o120000


class ExecResult(Record):
    code: Optional[int]          # exit status, or None when killed by a signal
    signal: Optional[int]        # the killing signal, or None
    stdout: bytes = b""
    stderr: bytes = b""
    pid: int = 0

    @property
    def exit_code(self) -> int:
        """code, or 128 + signal like a shell."""
        return self.code if self.code is not None else 128 + (self.signal or 0)


class FileStat(Record):
    mode: int
    size: int
    mtime_ns: int
    uid: int
    gid: int
    nlink: int
    target: Optional[str] = None

    @property
    def is_dir(self) -> bool:
        return (self.mode & _S_IFMT) == _S_IFDIR

    @property
    def is_file(self) -> bool:
        return (self.mode & _S_IFMT) == _S_IFREG

    @property
    def is_symlink(self) -> bool:
        return (self.mode & _S_IFMT) == _S_IFLNK


class DirEntry(Record):
    name: str
    mode: int
    size: int
    mtime_ns: int

    @property
    def is_dir(self) -> bool:
        return (self.mode & _S_IFMT) == _S_IFDIR


class ReadyInfo(Record):
    """The guest's READY message; times are the guest's CLOCK_BOOTTIME in ns (kernel
    start is ~0 on that clock)."""
    version: int
    agent_start_ns: int
    ready_ns: int
    now_ns: int
    realtime_ns: int
    pid1: bool
    hostname: str
    max_payload: int
    window: int
    received_monotonic_ns: int = 0
    raw: Dict[int, object] = Factory(dict)
    record_hidden = ("raw",)

    @classmethod
    def from_payload(cls, payload: bytes) -> "ReadyInfo":
        """Decode READY (raises protocol.ProtocolError), stamped with the host's receipt time."""
        f = P.decode(payload)
        return cls(version=f.get(G.VERSION, 0), agent_start_ns=f.get(G.AGENT_START_NS, 0),
                   ready_ns=f.get(G.READY_NS, 0), now_ns=f.get(G.NOW_NS, 0),
                   realtime_ns=f.get(G.REALTIME_NS, 0), pid1=bool(f.get(G.PID1, 0)),
                   hostname=P.text(f.get(G.HOSTNAME)),
                   max_payload=f.get(G.MAX_PAYLOAD, P.MAX_PAYLOAD),
                   window=f.get(G.WINDOW, P.WINDOW), received_monotonic_ns=time.monotonic_ns(),
                   raw=f)
