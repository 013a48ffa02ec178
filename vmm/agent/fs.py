"""File operations in the guest, one session per request: read and list stream their
answer under the client's window; write streams under the agent's credit."""
from __future__ import annotations

import errno as errno_mod
from typing import TYPE_CHECKING, BinaryIO, Iterator, List, Optional, Tuple, Union

from . import protocol as P
from .errors import AgentError, FsError, SandboxNotRunning, error_from, reply_fields
from .protocol import G, T
from .results import DirEntry, FileStat
from .session import CONNECTION_LOST, Session, chunks, deadline_after

if TYPE_CHECKING:
    from .connection import Connection


def _deadline(timeout: Optional[float]) -> Optional[float]:
    """None: each wait on the agent gets session.DEFAULT_WAIT_S (so a long transfer that
    keeps moving is never cut off); a number bounds the whole request."""
    return deadline_after(timeout)


class Fs:
    """File operations in the guest: read, write, stat, list, mkdir, remove."""

    def __init__(self, conn: "Connection"):
        self._conn = conn

    def _simple(self, type_: int, fields, timeout: Optional[float]) -> Tuple[int, bytes]:
        s = self._conn.open(type_, P.encode(fields))
        try:
            t, payload = s.get(_deadline(timeout))
        finally:
            s.release()
        return self._check(t, payload)

    @staticmethod
    def _check(t: int, payload: bytes) -> Tuple[int, bytes]:
        if t == T.ERROR:
            raise error_from(payload, FsError)
        if t == CONNECTION_LOST:
            raise SandboxNotRunning("connection to the agent lost during a file request")
        return t, payload

    def read_iter(self, path: str, offset: int = 0, length: Optional[int] = None,
                  timeout: Optional[float] = None) -> Iterator[bytes]:
        fields = [(G.PATH, path), (G.OFFSET, offset)]
        if length is not None:
            fields.append((G.LENGTH, length))
        s = self._conn.open(T.FS_READ, P.encode(fields))
        deadline = _deadline(timeout)
        got = 0
        try:
            while True:
                t, payload = self._check(*s.get(deadline))
                if t == T.DONE:
                    return
                if t != T.DATA:
                    raise AgentError(f"unexpected message 0x{t:x} while reading {path}")
                got += len(payload)
                if length is not None and got > length:
                    raise AgentError(f"the agent sent more than the {length} bytes asked "
                                     f"of {path}", kind="bad_frame")
                s.consumed(len(payload))
                yield payload
        finally:
            s.release()

    def read(self, path: str, offset: int = 0, length: Optional[int] = None,
             timeout: Optional[float] = None) -> bytes:
        return b"".join(self.read_iter(path, offset, length, timeout))

    def write(self, path: str, data: Union[bytes, BinaryIO], mode: int = 0o644,
              append: bool = False, timeout: Optional[float] = None) -> int:
        """Write bytes (or a binary file's contents) to path; returns the byte count."""
        s = self._conn.open(T.FS_WRITE, P.encode([(G.PATH, path), (G.MODE, mode),
                                                  (G.APPEND, append)]))
        deadline = _deadline(timeout)
        try:
            return self._send_file(s, data, deadline)
        finally:
            s.release()

    def _send_file(self, s: Session, data, deadline: Optional[float]) -> int:
        for chunk in chunks(data):
            if not s.send_data(T.DATA, chunk, deadline):
                break  # the agent ended the session: its ERROR is queued
        if not s.ended:
            s.send(T.DATA, b"")  # end of file
        t, payload = self._check(*s.get(deadline))
        return reply_fields(payload).get(G.SIZE, 0)

    def stat(self, path: str, timeout: Optional[float] = None) -> FileStat:
        t, payload = self._simple(T.FS_STAT, [(G.PATH, path)], timeout)
        if t != T.STAT:
            raise AgentError(f"unexpected message 0x{t:x} in reply to stat {path}")
        f = reply_fields(payload)
        target = f.get(G.TARGET)
        return FileStat(mode=f.get(G.MODE, 0), size=f.get(G.SIZE, 0),
                        mtime_ns=f.get(G.MTIME_NS, 0), uid=f.get(G.UID, 0),
                        gid=f.get(G.GID, 0), nlink=f.get(G.NLINK, 0),
                        target=None if target is None else P.text(target))

    def list(self, path: str, timeout: Optional[float] = None) -> List[DirEntry]:
        s = self._conn.open(T.FS_LIST, P.encode([(G.PATH, path)]))
        deadline = _deadline(timeout)
        entries: List[DirEntry] = []
        try:
            while True:
                t, payload = self._check(*s.get(deadline))
                if t == T.DONE:
                    return entries
                s.consumed(len(payload))
                try:
                    entries.extend(_entries(payload))
                except P.ProtocolError as e:
                    raise AgentError(f"malformed directory listing of {path}: {e}") from None
        finally:
            s.release()

    def mkdir(self, path: str, mode: int = 0o755, parents: bool = False,
              timeout: Optional[float] = None) -> None:
        self._simple(T.FS_MKDIR, [(G.PATH, path), (G.MODE, mode), (G.PARENTS, parents)], timeout)

    def remove(self, path: str, recursive: bool = False, timeout: Optional[float] = None) -> None:
        self._simple(T.FS_REMOVE, [(G.PATH, path), (G.RECURSIVE, recursive)], timeout)

    def exists(self, path: str) -> bool:
        try:
            self.stat(path)
            return True
        except FsError as e:
            if e.errno == errno_mod.ENOENT:
                return False
            raise


def _entries(payload: bytes) -> Iterator[DirEntry]:
    """ENTRIES: groups of NAME, MODE, SIZE, MTIME_NS; a NAME starts each entry."""
    cur: Optional[dict] = None
    for tag, value in P.iter_fields(payload):
        if tag == G.NAME:
            if cur is not None:
                yield DirEntry(**cur)
            cur = dict(name=P.text(value), mode=0, size=0, mtime_ns=0)
        elif cur is not None and tag in (G.MODE, G.SIZE, G.MTIME_NS):
            cur[{G.MODE: "mode", G.SIZE: "size", G.MTIME_NS: "mtime_ns"}[tag]] = value
    if cur is not None:
        yield DirEntry(**cur)
