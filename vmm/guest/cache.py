"""The one cache for built guest artefacts: ${VMM_CACHE:-~/.cache/vmm}/<kind>/<key>/.

    entry = CacheDir("kernel", key(parts))       # parts: every input of the build, as bytes
    vmlinux = entry.build_once("vmlinux", build) # build(target) runs at most once per key

The key is a hash of everything that goes into an artefact, so an edited input gives a
fresh directory and an unchanged one never rebuilds. Keys name directories that exist on
every machine that ran the project: key() must stay byte-for-byte what it is (a changed
kernel key costs every machine a five-minute kernel rebuild; tests/test_kernel_build.py
pins known values).

Concurrent callers (test workers, sandboxes starting together) build once: the builder
holds an flock on <key>.lock beside the directory, and others wait on it and then find the
file. Files are published atomically (written as <name>.tmp, then renamed), so a reader
never sees half an artefact and a killed build leaves no file that looks complete.
"""
from __future__ import annotations

import fcntl
import hashlib
import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterable


def cache_root() -> Path:
    return Path(os.environ.get("VMM_CACHE") or Path.home() / ".cache" / "vmm")


def key(parts: Iterable[bytes]) -> str:
    """16 hex digits of SHA-256 over the parts, each prefixed by its length (8 bytes, little
    endian), so moving bytes from one part to the next changes the key."""
    h = hashlib.sha256()
    for part in parts:
        h.update(len(part).to_bytes(8, "little"))
        h.update(part)
    return h.hexdigest()[:16]


@contextmanager
def publishing(target: Path):
    """Yield a temporary path beside target; rename it onto target if the block succeeds."""
    tmp = target.with_name(target.name + ".tmp")
    try:
        yield tmp
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    tmp.rename(target)


def publish(target: Path, data: bytes) -> Path:
    with publishing(target) as tmp:
        tmp.write_bytes(data)
    return target


class CacheDir:
    """One artefact directory, cache_root()/kind/key, and the lock that guards building it.

    announce_waits: say on stderr when another process holds the lock (worth it for the
    kernel's minutes-long build; the agent builds in a second and stays quiet).
    """

    def __init__(self, kind: str, key: str, *, announce_waits: bool = True):
        self.path = cache_root() / kind / key
        self.lock_path = self.path.with_name(key + ".lock")
        self.announce_waits = announce_waits

    def file(self, name: str) -> Path:
        return self.path / name

    @contextmanager
    def locked(self):
        """An exclusive flock on the directory's lock file: one builder at a time."""
        self.lock_path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if self.announce_waits:
                    print(f"vmm: waiting for another process building {self.lock_path.stem}",
                          file=sys.stderr, flush=True)
                fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    def build_once(self, name: str, build: Callable[[Path], object]) -> Path:
        """The file `name` in this directory, calling build(path) under the lock if it is
        missing. build must create path atomically (publish() or publishing())."""
        target = self.file(name)
        if target.is_file():
            return target
        with self.locked():
            if not target.is_file():  # another process may have built it while we waited
                self.path.mkdir(parents=True, exist_ok=True)
                build(target)
        return target
