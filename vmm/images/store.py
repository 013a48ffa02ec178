"""The local image store: verified blobs on disk and an SQLite index of what they form.

Visibility rules, so an interrupted pull leaves nothing half-visible:
- a blob is written to tmp/ while it is hashed, and renamed into blobs/ only once its
  digest matched; a mismatch deletes it;
- an image appears (references, manifest, layers) in one SQLite transaction, committed
  after every blob it needs is in place.
Concurrency between processes: a blob is downloaded under its own flock, so a second
puller waits and then finds it present; pulls hold gc.lock shared and removal takes it
exclusive, so removal never deletes a blob an unfinished pull is about to reference.
"""
import contextlib
import hashlib
import json
import os
import sqlite3
import time
from dataclasses import dataclass, field
from typing import Optional

from .digest import check_hash, hasher, parse_digest
from .errors import DigestMismatch, ImageTooLarge
from .locks import file_lock
from .paths import StorePaths

SCHEMA = """
CREATE TABLE IF NOT EXISTS image_refs (
    reference TEXT PRIMARY KEY,
    manifest_digest TEXT NOT NULL,
    index_digest TEXT,
    source TEXT NOT NULL,
    pulled_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS image_manifests (
    digest TEXT PRIMARY KEY,
    media_type TEXT NOT NULL,
    body BLOB NOT NULL,
    config_digest TEXT NOT NULL,
    config BLOB NOT NULL,
    os TEXT, architecture TEXT, variant TEXT, created TEXT,
    size INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS image_layers (
    manifest_digest TEXT NOT NULL,
    position INTEGER NOT NULL,
    digest TEXT NOT NULL,
    media_type TEXT NOT NULL,
    size INTEGER NOT NULL,
    PRIMARY KEY (manifest_digest, position)
);
CREATE INDEX IF NOT EXISTS image_layers_digest ON image_layers(digest);
CREATE INDEX IF NOT EXISTS image_refs_manifest ON image_refs(manifest_digest);
-- What we learnt about an image after storing it: kind 'warning' (a layer's media type lies)
-- or 'refused' (its root disk build refused the layers; detail: JSON with the error class
-- and the unpack limits in force, so raising a limit allows another try).
CREATE TABLE IF NOT EXISTS image_notes (
    manifest_digest TEXT NOT NULL,
    kind TEXT NOT NULL,
    text TEXT NOT NULL,
    detail TEXT
);
CREATE INDEX IF NOT EXISTS image_notes_manifest ON image_notes(manifest_digest);
"""


@dataclass
class Layer:
    digest: str
    media_type: str
    size: int


@dataclass
class StoredImage:
    reference: str
    manifest_digest: str
    index_digest: Optional[str]
    media_type: str
    config_digest: str
    config: dict
    layers: list
    size: int
    os: Optional[str]
    architecture: Optional[str]
    variant: Optional[str]
    created: Optional[str]
    pulled_at: float
    source: str
    manifest: bytes = field(repr=False, default=b"")


class BlobSink:
    """A partial download: appends, hashes, and resumes from what an earlier try left."""

    CHUNK = 1 << 20

    def __init__(self, path, digest):
        self.path = path
        self.hash = hasher(digest)
        self.offset = 0
        self.file = open(path, "ab+")
        self.file.seek(0)
        # Re-hash what a previous, interrupted pull left, so the download resumes there.
        while True:
            chunk = self.file.read(self.CHUNK)
            if not chunk:
                break
            self.hash.update(chunk)
            self.offset += len(chunk)

    def write(self, data):
        self.file.write(data)
        self.hash.update(data)
        self.offset += len(data)

    def restart(self):
        self.file.seek(0)
        self.file.truncate()
        self.hash = hashlib.new(self.hash.name)
        self.offset = 0

    def close(self):
        self.file.close()


class Store:
    def __init__(self, home=None):
        self.paths = StorePaths(home)
        self.paths.create()
        self.db = sqlite3.connect(self.paths.db, timeout=60, isolation_level=None,
                                  check_same_thread=False)
        self.db.execute("PRAGMA synchronous=NORMAL")
        # Switching to WAL and creating tables can fail with "database is locked" when two
        # processes open a new store at once (the busy timeout does not cover the journal
        # mode change): serialise first-time set-up on a file lock.
        if self.db.execute("PRAGMA journal_mode").fetchone()[0] != "wal" or not self._has_schema():
            with file_lock(self.paths.lock("db-init")):
                self.db.execute("PRAGMA journal_mode=WAL")
                self.db.executescript(SCHEMA)

    def _has_schema(self):
        # The newest object: a store made by an older version gets the tables it lacks.
        return self.db.execute("SELECT count(*) FROM sqlite_master "
                               "WHERE name='image_notes_manifest'").fetchone()[0] == 1

    def close(self):
        self.db.close()

    # -- locks --------------------------------------------------------------------------

    def gc_lock(self, shared):
        return file_lock(self.paths.lock("gc"), shared=shared)

    def blob_lock(self, digest):
        algorithm, hexpart = parse_digest(digest)
        return file_lock(self.paths.lock(f"{algorithm}-{hexpart}"))

    # -- blobs --------------------------------------------------------------------------

    def has_blob(self, digest, size=None):
        try:
            st = os.stat(self.paths.blob(digest))
        except FileNotFoundError:
            return False
        return size is None or st.st_size == size

    def ensure_blob(self, digest, size, fetch):
        """Make blob `digest` present, calling fetch(sink) at most once per store.

        Returns True if this call downloaded it, False if it was already there (perhaps
        put there by another process while we waited for its lock).
        """
        final = self.paths.blob(digest)
        if self.has_blob(digest, size):
            return False
        with self.blob_lock(digest):
            if self.has_blob(digest, size):
                return False
            partial = self.paths.partial(digest)
            sink = BlobSink(partial, digest)
            try:
                if sink.offset > size:
                    sink.restart()
                resumed = sink.offset > 0
                try:
                    self._download(sink, fetch, digest)
                except DigestMismatch:
                    if not resumed:
                        raise
                    # The bytes an earlier, interrupted pull left may be the bad ones.
                    sink.restart()
                    self._download(sink, fetch, digest)
            except DigestMismatch:
                sink.close()
                _unlink(partial)   # keep nothing that failed verification
                raise
            finally:
                sink.close()
            os.rename(partial, final)
            return True

    @staticmethod
    def _download(sink, fetch, digest):
        fetch(sink)
        sink.file.flush()
        os.fsync(sink.file.fileno())
        check_hash(sink.hash, digest)

    def put_stream(self, reader, algorithm="sha256", expected=None, limit=None):
        """Store what `reader` yields under its own digest; return (digest, size).

        For local sources, where the digest is not known before reading.
        """
        tmp = self.paths.tmp / f"stream.{os.getpid()}.{time.monotonic_ns()}"
        h, size = hashlib.new(algorithm), 0
        try:
            with open(tmp, "wb") as f:
                while True:
                    chunk = reader.read(BlobSink.CHUNK)
                    if not chunk:
                        break
                    size += len(chunk)
                    if limit is not None and size > limit:
                        raise ImageTooLarge(f"blob is over the {limit}-byte limit")
                    f.write(chunk)
                    h.update(chunk)
            digest = f"{algorithm}:{h.hexdigest()}"
            if expected and expected != digest:
                raise DigestMismatch(f"blob should be {expected} but hashes to {digest}")
            with self.blob_lock(digest):
                if not self.has_blob(digest, size):
                    os.rename(tmp, self.paths.blob(digest))
            return digest, size
        finally:
            _unlink(tmp)

    def read_blob(self, digest, limit):
        with open(self.paths.blob(digest), "rb") as f:
            return f.read(limit + 1)

    # -- index --------------------------------------------------------------------------

    def commit_image(self, references, *, manifest_digest, index_digest, media_type, manifest,
                     config_digest, config, image_config, layers, source, warnings=()):
        """Publish an image: one transaction, after all its blobs are in place.

        Storing it again (pull --force, a new import) forgets an earlier refusal."""
        size = sum(l.size for l in layers) + len(config)
        now = time.time()
        with self._transaction() as db:
            db.execute("INSERT OR REPLACE INTO image_manifests VALUES (?,?,?,?,?,?,?,?,?,?)",
                       (manifest_digest, media_type, manifest, config_digest, config,
                        image_config.os, image_config.architecture, image_config.variant,
                        image_config.created, size))
            db.execute("DELETE FROM image_layers WHERE manifest_digest=?", (manifest_digest,))
            db.executemany("INSERT INTO image_layers VALUES (?,?,?,?,?)",
                           [(manifest_digest, i, l.digest, l.media_type, l.size) for i, l in enumerate(layers)])
            old = self._manifests_of(db, references)
            db.executemany("INSERT OR REPLACE INTO image_refs VALUES (?,?,?,?,?)",
                           [(r, manifest_digest, index_digest, source, now) for r in references])
            db.execute("DELETE FROM image_notes WHERE manifest_digest=?", (manifest_digest,))
            db.executemany("INSERT INTO image_notes VALUES (?,'warning',?,NULL)",
                           [(manifest_digest, w) for w in warnings])
            orphans = self._drop_unreferenced(db, old - {manifest_digest})
        # A tag that moved to a new manifest may have orphaned the old one: the caller
        # deletes these files with delete_orphans() once it has left its shared gc lock.
        return orphans

    def delete_orphans(self, files):
        if files:
            with self.gc_lock(shared=False):
                self._delete_files(files)

    @contextlib.contextmanager
    def _transaction(self):
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    def lookup(self, reference) -> Optional[StoredImage]:
        row = self.db.execute("SELECT reference, manifest_digest, index_digest, source, pulled_at "
                              "FROM image_refs WHERE reference=?", (reference,)).fetchone()
        return self._image(row) if row else None

    def find_by_digest(self, prefix) -> list:
        """References whose manifest (or index) digest starts with `prefix` (hex or alg:hex)."""
        if ":" not in prefix:
            prefix = "sha256:" + prefix
        like = prefix.replace("%", "").replace("_", "") + "%"
        rows = self.db.execute(
            "SELECT reference, manifest_digest, index_digest, source, pulled_at FROM image_refs "
            "WHERE manifest_digest LIKE ? OR index_digest LIKE ? ORDER BY reference", (like, like)).fetchall()
        return [self._image(r) for r in rows]

    def images(self) -> list:
        rows = self.db.execute("SELECT reference, manifest_digest, index_digest, source, pulled_at "
                               "FROM image_refs ORDER BY reference").fetchall()
        return [self._image(r) for r in rows]

    def _image(self, row):
        reference, manifest_digest, index_digest, source, pulled_at = row
        m = self.db.execute("SELECT media_type, body, config_digest, config, os, architecture, variant, "
                            "created, size FROM image_manifests WHERE digest=?", (manifest_digest,)).fetchone()
        layers = [Layer(*r) for r in self.db.execute(
            "SELECT digest, media_type, size FROM image_layers WHERE manifest_digest=? ORDER BY position",
            (manifest_digest,))]
        media_type, body, config_digest, config, os_, arch, variant, created, size = m
        return StoredImage(reference, manifest_digest, index_digest, media_type, config_digest,
                           json.loads(config), layers, size, os_, arch, variant, created,
                           pulled_at, source, bytes(body))

    # -- notes ----------------------------------------------------------------------------

    def warnings(self, manifest_digest) -> list:
        return [r[0] for r in self.db.execute(
            "SELECT text FROM image_notes WHERE manifest_digest=? AND kind='warning' "
            "ORDER BY rowid", (manifest_digest,))]

    def add_warnings(self, manifest_digest, texts):
        """Record warnings not already recorded for this manifest."""
        with self._transaction() as db:
            have = {r[0] for r in db.execute("SELECT text FROM image_notes WHERE "
                                             "manifest_digest=? AND kind='warning'",
                                             (manifest_digest,))}
            db.executemany("INSERT INTO image_notes VALUES (?,'warning',?,NULL)",
                           [(manifest_digest, t) for t in dict.fromkeys(texts) if t not in have])

    def refusal(self, manifest_digest) -> Optional[dict]:
        """{"reason", "error", "limits"} if building this image's root disk was refused."""
        row = self.db.execute("SELECT text, detail FROM image_notes WHERE manifest_digest=? "
                              "AND kind='refused'", (manifest_digest,)).fetchone()
        if not row:
            return None
        detail = json.loads(row[1] or "{}")
        return {"reason": row[0], "error": detail.get("error", "ImageError"),
                "limits": detail.get("limits", {})}

    def mark_refused(self, manifest_digest, reason, error, limits):
        detail = json.dumps({"error": error, "limits": limits})
        with self._transaction() as db:
            db.execute("DELETE FROM image_notes WHERE manifest_digest=? AND kind='refused'",
                       (manifest_digest,))
            db.execute("INSERT INTO image_notes VALUES (?,'refused',?,?)",
                       (manifest_digest, reason, detail))

    def clear_refusal(self, manifest_digest):
        self.db.execute("DELETE FROM image_notes WHERE manifest_digest=? AND kind='refused'",
                        (manifest_digest,))

    def is_complete(self, image: StoredImage) -> bool:
        return all(self.has_blob(l.digest, l.size) for l in image.layers)

    # -- removal ------------------------------------------------------------------------

    def remove(self, references):
        """Untag `references`; delete manifests, layers and disks nothing else uses."""
        with self.gc_lock(shared=False):
            with self._transaction() as db:
                manifests = self._manifests_of(db, references)
                db.executemany("DELETE FROM image_refs WHERE reference=?", [(r,) for r in references])
                orphans = self._drop_unreferenced(db, manifests)
            self._delete_files(orphans)
        return orphans

    def _manifests_of(self, db, references):
        out = set()
        for r in references:
            row = db.execute("SELECT manifest_digest FROM image_refs WHERE reference=?", (r,)).fetchone()
            if row:
                out.add(row[0])
        return out

    def _drop_unreferenced(self, db, manifests):
        """Delete index rows of manifests no reference names; return files to delete."""
        files = {"blobs": set(), "disks": set()}
        for digest in manifests:
            if db.execute("SELECT 1 FROM image_refs WHERE manifest_digest=?", (digest,)).fetchone():
                continue
            config_digest = db.execute("SELECT config_digest FROM image_manifests WHERE digest=?",
                                       (digest,)).fetchone()
            layers = [r[0] for r in db.execute("SELECT digest FROM image_layers WHERE manifest_digest=?", (digest,))]
            db.execute("DELETE FROM image_layers WHERE manifest_digest=?", (digest,))
            db.execute("DELETE FROM image_manifests WHERE digest=?", (digest,))
            db.execute("DELETE FROM image_notes WHERE manifest_digest=?", (digest,))
            files["disks"].add(digest)
            files["blobs"].add(digest)
            if config_digest:
                files["blobs"].add(config_digest[0])
            files["blobs"].update(layers)
        # Keep any blob another manifest still uses.
        files["blobs"] = {b for b in files["blobs"] if not self._blob_in_use(db, b)}
        return files if files["blobs"] or files["disks"] else None

    @staticmethod
    def _blob_in_use(db, digest):
        return bool(db.execute("SELECT 1 FROM image_layers WHERE digest=? LIMIT 1", (digest,)).fetchone()
                    or db.execute("SELECT 1 FROM image_manifests WHERE digest=? OR config_digest=? LIMIT 1",
                                  (digest, digest)).fetchone())

    def _delete_files(self, files):
        """Unlink files, re-checking under the exclusive gc lock that nothing uses them."""
        if not files:
            return
        for digest in files["blobs"]:
            if not self._blob_in_use(self.db, digest):
                _unlink(self.paths.blob(digest))
        for digest in files["disks"]:
            if not self.db.execute("SELECT 1 FROM image_manifests WHERE digest=?", (digest,)).fetchone():
                _unlink(self.paths.disk(digest))


def _unlink(path):
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass

