"""The sandbox database: one SQLite file (Home().database) that every `msb` call and every
supervisor opens for a moment, several at once.

    db = StateDB()                       # opens (and creates/migrates) MSB_HOME/msb.db
    db.insert("web", "alpine:3.20", cfg.to_json())
    db.get("web").status                 # "created" | "running" | "stopped" | "crashed"
    db.list()                            # every row, reconciled

Why it never corrupts: WAL journal (readers never block the one writer), a busy timeout
(a writer waits for another instead of failing), and every write is one BEGIN IMMEDIATE
transaction, so a read-modify-write (claim a sandbox, mark it crashed) sees no other
write in between. The schema carries its version in PRAGMA user_version.

Liveness: a row that says `running` names its supervisor by pid, the pid's start time
(field 22 of /proc/PID/stat, clock ticks since boot) and the host's boot id. A pid is
ours only if all three match: after a reboot the boot id differs, and a recycled pid has
another start time. reconcile() turns a `running` row whose supervisor is gone into
`crashed` and removes its stale runtime directory (sockets); every read goes through it,
so the next call after a crash or reboot shows the truth.
"""
from __future__ import annotations

import os
import sqlite3
import time
from contextlib import contextmanager
from typing import Iterator, List, Optional

from ..errors import VmmError
from ..home import Home
from ..record import Record   # not dataclasses: see vmm/record.py

SCHEMA_VERSION = 1
BUSY_TIMEOUT_S = 30.0
STATUSES = ("created", "running", "stopped", "crashed")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS sandboxes (
    name           TEXT PRIMARY KEY,
    image          TEXT NOT NULL,
    config         TEXT NOT NULL,
    status         TEXT NOT NULL,
    created_at     TEXT NOT NULL,
    updated_at     TEXT NOT NULL,
    started_at     TEXT,
    pid            INTEGER,
    pid_start      INTEGER,
    boot_id        TEXT,
    runtime_dir    TEXT,
    agent_socket   TEXT,
    control_socket TEXT,
    vm_runtime_dir TEXT,
    image_disk     TEXT,
    image_config   TEXT,
    published      TEXT
)
"""


class SandboxNotFound(VmmError):
    """No sandbox of that name (exit 1: the request was valid, the sandbox is not there)."""


class SandboxExists(VmmError):
    """A sandbox of that name exists already."""


def utc_now() -> str:
    # time, not datetime: one module less on every short-lived msb call
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return ""


def process_start_time(pid: int) -> Optional[int]:
    """The start time of pid (clock ticks after boot), or None if there is no such process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    fields = stat.rsplit(b")", 1)[1].split()
    if fields and fields[0] == b"Z":
        return None  # a zombie is dead; only its parent has not reaped it yet
    return int(fields[19])   # field 22 overall; fields[0] is field 3


def is_alive(pid: Optional[int], start: Optional[int], boot: Optional[str]) -> bool:
    """Whether the supervisor a row names still runs: same boot, same pid, same start."""
    if not pid or start is None:
        return False
    if boot and boot != boot_id():
        return False
    return process_start_time(pid) == start


class SandboxRow(Record):
    name: str
    image: str
    config: str
    status: str
    created_at: str
    updated_at: str
    started_at: Optional[str]
    pid: Optional[int]
    pid_start: Optional[int]
    boot_id: Optional[str]
    runtime_dir: Optional[str]
    agent_socket: Optional[str]
    control_socket: Optional[str]
    vm_runtime_dir: Optional[str]
    image_disk: Optional[str]
    image_config: Optional[str]
    published: Optional[str]       # JSON list of the running sandbox's published ports

    @property
    def supervisor_alive(self) -> bool:
        return is_alive(self.pid, self.pid_start, self.boot_id)


_COLUMNS = list(SandboxRow.record_fields)


class StateDB:
    """A connection to the sandbox database; short-lived, one per call (close() or `with`)."""

    def __init__(self, home: Optional[Home] = None):
        self.home = home or Home()
        self.home.root.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(self.home.database), timeout=BUSY_TIMEOUT_S,
                                   isolation_level=None, check_same_thread=False)
        self._db.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
        # In WAL mode NORMAL never corrupts the database; a power cut may lose the last
        # commits, which reconciliation then reads as the sandbox not running.
        self._db.execute("PRAGMA synchronous = NORMAL")
        self._migrate()

    def _migrate(self) -> None:
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version == SCHEMA_VERSION:
            return
        if version > SCHEMA_VERSION:
            raise VmmError(f"{self.home.database} was written by a newer msb (schema "
                           f"{version}, this one knows {SCHEMA_VERSION}); upgrade msb")
        # journal_mode cannot change inside a transaction; it is stored in the file.
        self._retry(lambda: self._db.execute("PRAGMA journal_mode=WAL"))
        with self.transaction() as db:
            if db.execute("PRAGMA user_version").fetchone()[0] == 0:
                db.execute(_SCHEMA)
                db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    @staticmethod
    def _retry(fn):
        """journal_mode=WAL takes an exclusive lock without waiting on busy_timeout when
        another process is just creating the file: retry briefly."""
        deadline = time.monotonic() + BUSY_TIMEOUT_S
        while True:
            try:
                return fn()
            except sqlite3.OperationalError as e:
                if "locked" not in str(e) or time.monotonic() > deadline:
                    raise
                time.sleep(0.01)

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT: the write lock is taken at the start, so what the
        transaction reads is still true when it writes."""
        self._retry(lambda: self._db.execute("BEGIN IMMEDIATE"))
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> "StateDB":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- reads ---------------------------------------------------------------------------
    def _row(self, r) -> SandboxRow:
        return SandboxRow(**dict(zip(_COLUMNS, r)))

    def get(self, name: str, reconcile: bool = True) -> SandboxRow:
        r = self._db.execute(f"SELECT {', '.join(_COLUMNS)} FROM sandboxes WHERE name = ?",
                             (name,)).fetchone()
        if r is None:
            raise SandboxNotFound(f"no sandbox named {name!r}")
        row = self._row(r)
        return self.reconcile(row) if reconcile else row

    def find(self, name: str) -> Optional[SandboxRow]:
        try:
            return self.get(name)
        except SandboxNotFound:
            return None

    def list(self) -> List[SandboxRow]:
        rows = [self._row(r) for r in self._db.execute(
            f"SELECT {', '.join(_COLUMNS)} FROM sandboxes ORDER BY created_at, name")]
        return [self.reconcile(r) for r in rows]

    # --- writes --------------------------------------------------------------------------
    def insert(self, name: str, image: str, config: str) -> SandboxRow:
        now = utc_now()
        with self.transaction() as db:
            if db.execute("SELECT 1 FROM sandboxes WHERE name = ?", (name,)).fetchone():
                raise SandboxExists(f"a sandbox named {name!r} already exists")
            db.execute("INSERT INTO sandboxes (name, image, config, status, created_at, "
                       "updated_at) VALUES (?, ?, ?, 'created', ?, ?)",
                       (name, image, config, now, now))
        return self.get(name, reconcile=False)

    def update(self, name: str, **values) -> None:
        unknown = set(values) - set(_COLUMNS)
        if unknown or "name" in values:
            raise ValueError(f"cannot update {sorted(unknown | {'name'} & set(values))}")
        if values.get("status") is not None and values["status"] not in STATUSES:
            raise ValueError(f"bad status {values['status']!r}")
        values["updated_at"] = utc_now()
        cols = ", ".join(f"{k} = ?" for k in values)
        with self.transaction() as db:
            cur = db.execute(f"UPDATE sandboxes SET {cols} WHERE name = ?",
                             (*values.values(), name))
            if cur.rowcount == 0:
                raise SandboxNotFound(f"no sandbox named {name!r}")

    def claim(self, name: str, pid: int) -> bool:
        """The supervisor pid takes the sandbox: true unless another live supervisor holds
        it. One transaction, so two `msb start` at once never both win."""
        with self.transaction() as db:
            r = db.execute(f"SELECT {', '.join(_COLUMNS)} FROM sandboxes WHERE name = ?",
                           (name,)).fetchone()
            if r is None:
                raise SandboxNotFound(f"no sandbox named {name!r}")
            row = self._row(r)
            if row.pid not in (None, pid) and row.supervisor_alive:
                return False
            db.execute("UPDATE sandboxes SET pid = ?, pid_start = ?, boot_id = ?, "
                       "updated_at = ? WHERE name = ?",
                       (pid, process_start_time(pid), boot_id(), utc_now(), name))
            return True

    def finish(self, name: str, pid: int, status: str) -> None:
        """The supervisor pid has ended the sandbox: clear what pointed at the run, if the
        row is still its own (a newer supervisor may own it already)."""
        with self.transaction() as db:
            db.execute("UPDATE sandboxes SET status = ?, pid = NULL, pid_start = NULL, "
                       "boot_id = NULL, agent_socket = NULL, control_socket = NULL, "
                       "runtime_dir = NULL, vm_runtime_dir = NULL, published = NULL, "
                       "updated_at = ? WHERE name = ? AND (pid = ? OR pid IS NULL)",
                       (status, utc_now(), name, pid))

    def delete(self, name: str) -> None:
        with self.transaction() as db:
            db.execute("DELETE FROM sandboxes WHERE name = ?", (name,))

    # --- reconciliation ------------------------------------------------------------------
    def reconcile(self, row: SandboxRow) -> SandboxRow:
        """A row whose supervisor is gone: `running` becomes `crashed`; its runtime paths
        are removed and cleared. A row with a live supervisor is returned as it is."""
        if row.pid is None or row.supervisor_alive:
            return row
        new_status = "crashed" if row.status == "running" else row.status
        with self.transaction() as db:
            # Only if nobody changed the row meanwhile (a new supervisor, a clean finish).
            cur = db.execute("UPDATE sandboxes SET status = ?, pid = NULL, pid_start = NULL, "
                             "boot_id = NULL, agent_socket = NULL, control_socket = NULL, "
                             "runtime_dir = NULL, vm_runtime_dir = NULL, published = NULL, "
                             "updated_at = ? WHERE name = ? AND pid = ? AND pid_start IS ?",
                             (new_status, utc_now(), row.name, row.pid, row.pid_start))
        if cur.rowcount:
            remove_runtime(row.runtime_dir, row.vm_runtime_dir)
        return self.get(row.name, reconcile=False)


def remove_runtime(*dirs: Optional[str]) -> None:
    """Remove stale runtime directories (sockets of a dead run)."""
    for d in dirs:
        if d and os.path.isdir(d):
            import shutil
            shutil.rmtree(d, ignore_errors=True)
