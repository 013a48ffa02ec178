"""The guest agent's wire format (guest/agent/PROTOCOL.md is the reference).

Frames: a 12-byte little-endian header {u32 payload length, u32 session, u16 type,
u16 flags} then the payload. Structured payloads are TLV fields {u16 tag, u32 length,
value}; integers are 8-byte little-endian. Data frames (stdin/stdout/stderr/file data)
carry raw bytes. Nothing here does I/O.
"""
from __future__ import annotations

import struct
from typing import Dict, Iterator, List, Tuple

HEADER = struct.Struct("<IIHH")
HDR_LEN = HEADER.size
TLV_HEAD = struct.Struct("<HI")
U64 = struct.Struct("<Q")
RLIMIT = struct.Struct("<IQQ")
CAPS = struct.Struct("<5Q")       # bounding, effective, permitted, inheritable, ambient
MAX_GROUPS = 1024                 # supplementary gids in one GROUPS field (u32 each)
VERSION = 1
MAX_PAYLOAD = 1 << 20
WINDOW = 256 * 1024
CHUNK = 64 * 1024


class T:
    """Message types."""
    READY = 0x01
    EXEC = 0x10
    STARTED = 0x11
    STDIN = 0x12
    STDOUT = 0x13
    STDERR = 0x14
    EXITED = 0x15
    FAILED = 0x16
    SIGNAL = 0x17
    RESIZE = 0x18
    FS_READ = 0x20
    FS_WRITE = 0x21
    FS_STAT = 0x22
    FS_LIST = 0x23
    FS_MKDIR = 0x24
    FS_REMOVE = 0x25
    DATA = 0x26
    ENTRIES = 0x27
    STAT = 0x28
    CONFIG = 0x30
    SHUTDOWN = 0x31
    PING = 0x32
    DONE = 0x40
    ERROR = 0x41
    CREDIT = 0x42


class G:
    """TLV tags."""
    ARGV = 1
    ENV = 2
    CWD = 3
    USER = 4
    TTY = 5
    ROWS = 6
    COLS = 7
    RLIMIT = 8
    PID = 9
    CODE = 10
    SIGNAL = 11
    ERRNO = 12
    KIND = 13
    MESSAGE = 14
    PATH = 15
    OFFSET = 16
    LENGTH = 17
    MODE = 18
    SIZE = 19
    MTIME_NS = 20
    UID = 21
    GID = 22
    NLINK = 23
    NAME = 24
    TARGET = 25
    BYTES = 26
    HOSTNAME = 27
    AGENT_START_NS = 28
    READY_NS = 29
    REALTIME_NS = 30
    VERSION = 31
    PARENTS = 32
    RECURSIVE = 33
    GROUP = 34
    APPEND = 35
    CORE = 36
    PID1 = 37
    MAX_PAYLOAD = 38
    WINDOW = 39
    NOW_NS = 40
    WORKDIR = 41
    GROUPS = 42
    UMASK = 43
    NO_NEW_PRIVS = 44
    CAPS = 45
    READONLY_ROOT = 46
    ROOT = 47            # EXEC: a guest directory that becomes the process's /
    MOUNT = 48           # EXEC, repeated: u32 flags, SOURCE, NUL, DESTINATION
    ROOT_READONLY = 49   # EXEC: the new root read-only (int 0/1)
    JOIN = 50            # EXEC: enter this guest pid's mount namespace (int > 1)


# Tags whose values are integers (everything else is bytes or a string).
INT_TAGS = frozenset({G.TTY, G.ROWS, G.COLS, G.PID, G.CODE, G.SIGNAL, G.ERRNO, G.OFFSET,
                      G.LENGTH, G.MODE, G.SIZE, G.MTIME_NS, G.UID, G.GID, G.NLINK, G.BYTES,
                      G.AGENT_START_NS, G.READY_NS, G.REALTIME_NS, G.VERSION, G.PARENTS,
                      G.RECURSIVE, G.GROUP, G.APPEND, G.CORE, G.PID1, G.MAX_PAYLOAD,
                      G.WINDOW, G.NOW_NS, G.UMASK, G.NO_NEW_PRIVS, G.READONLY_ROOT,
                      G.ROOT_READONLY, G.JOIN})


class ProtocolError(Exception):
    """Bytes from the other side that do not follow the protocol."""


def frame(session: int, type_: int, payload: bytes = b"", flags: int = 0) -> bytes:
    if len(payload) > MAX_PAYLOAD:
        raise ValueError(f"frame payload of {len(payload)} bytes is over the {MAX_PAYLOAD} limit")
    return HEADER.pack(len(payload), session, type_, flags) + payload


def tlv(tag: int, value) -> bytes:
    """One field: an int (u64), str (UTF-8, surrogates pass through) or bytes."""
    if isinstance(value, bool):
        value = int(value)
    if isinstance(value, int):
        raw = U64.pack(value & 0xFFFFFFFFFFFFFFFF)
    elif isinstance(value, str):
        raw = value.encode("utf-8", "surrogateescape")
    else:
        raw = bytes(value)
    return TLV_HEAD.pack(tag, len(raw)) + raw


def encode(fields: List[Tuple[int, object]]) -> bytes:
    return b"".join(tlv(tag, value) for tag, value in fields)


def iter_fields(payload: bytes) -> Iterator[Tuple[int, object]]:
    """Fields of a TLV payload, integers decoded; raises ProtocolError on a bad one."""
    pos, end = 0, len(payload)
    while pos < end:
        if end - pos < TLV_HEAD.size:
            raise ProtocolError(f"truncated TLV header at offset {pos}")
        tag, length = TLV_HEAD.unpack_from(payload, pos)
        pos += TLV_HEAD.size
        if length > end - pos:
            raise ProtocolError(f"TLV field {tag} claims {length} bytes, {end - pos} left")
        raw = bytes(payload[pos:pos + length])
        pos += length
        if tag in INT_TAGS:
            if length != 8:
                raise ProtocolError(f"integer TLV field {tag} is {length} bytes, not 8")
            yield tag, U64.unpack(raw)[0]
        else:
            yield tag, raw


def decode(payload: bytes) -> Dict[int, object]:
    """Fields as a dict (last value wins); use iter_fields for repeated tags."""
    return dict(iter_fields(payload))


def text(value, default: str = "") -> str:
    if value is None:
        return default
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def signed(value: int) -> int:
    """An errno or code sent as u64 from a C int."""
    return value - (1 << 64) if value >= 1 << 63 else value
