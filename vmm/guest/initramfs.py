"""Initramfs images: the newc cpio writer, and the test initramfs holding only the static
test init (guest/init/init.c).

    test_initramfs()        -> Path of initramfs.cpio.gz under ${VMM_CACHE:-~/.cache/vmm}/initramfs/<key>
    initramfs_cpio(init)    -> bytes of a cpio archive with /init and the few nodes it needs
    newc_archive(entries)   -> bytes of a cpio archive of arbitrary entries
    compile_static(src, out) -> a one-file C program as a static musl binary
"""
from __future__ import annotations

import gzip
import io
import shutil
import subprocess
from pathlib import Path
from typing import Iterable, Tuple

from . import cache
from .sources import GuestBuildError, guest_dir

# Bump when the initramfs layout below changes (the init source is hashed anyway).
INITRAMFS_FORMAT = "1"
INIT_CFLAGS = ("-static", "-Os", "-s", "-Wall", "-Wextra", "-Werror")

# (name, mode, data, (major, minor)): one file, directory or device node of an archive.
Entry = Tuple[str, int, bytes, Tuple[int, int]]


def initramfs_key(init_source: bytes) -> str:
    return cache.key([b"initramfs", INITRAMFS_FORMAT.encode(), " ".join(INIT_CFLAGS).encode(),
                      init_source])


def test_initramfs(build: bool = True) -> Path:
    """Path of initramfs.cpio.gz holding the static test init (guest/init/init.c)."""
    source = guest_dir() / "init" / "init.c"
    if not source.is_file():
        raise GuestBuildError(f"test init source not found: {source}")
    entry = cache.CacheDir("initramfs", initramfs_key(source.read_bytes()))
    image = entry.file("initramfs.cpio.gz")
    if not build and not image.is_file():
        raise GuestBuildError(f"the test initramfs is not built yet ({image})")

    def build_image(target: Path) -> None:
        init = compile_static(source, entry.file("init"))
        cache.publish(target, gzip.compress(initramfs_cpio(init.read_bytes()), mtime=0))

    return entry.build_once("initramfs.cpio.gz", build_image)


def compile_static(source: Path, output: Path) -> Path:
    """Compile a one-file C program into a static binary with musl-gcc."""
    cc = shutil.which("musl-gcc")
    if cc is None:
        raise GuestBuildError("musl-gcc is needed to build the test init (apt-get install musl-tools)")
    with cache.publishing(output) as tmp:
        proc = subprocess.run([cc, *INIT_CFLAGS, "-o", str(tmp), str(source)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise GuestBuildError(f"compiling {source} failed:\n{proc.stderr.strip()[-2000:]}")
    return output


def initramfs_cpio(init: bytes) -> bytes:
    """A cpio archive (newc) with /dev, /dev/console, /proc, /sys and /init.

    /dev/console must exist before init runs: the kernel opens it as init's stdin,
    stdout and stderr, and there is no devtmpfs yet at that point.
    """
    return newc_archive([
        ("dev", 0o040755, b"", (0, 0)),
        ("dev/console", 0o020600, b"", (5, 1)),
        ("proc", 0o040755, b"", (0, 0)),
        ("sys", 0o040755, b"", (0, 0)),
        ("init", 0o100755, init, (0, 0)),
    ])


def newc_archive(entries: Iterable[Entry]) -> bytes:
    """A cpio archive in the kernel's "newc" format: entries in order, inode numbers from 1,
    then the trailer."""
    buf = io.BytesIO()
    for ino, (name, mode, data, rdev) in enumerate(entries, start=1):
        _write_entry(buf, ino, name, mode, data, rdev)
    _write_entry(buf, 0, "TRAILER!!!", 0, b"", (0, 0))
    return buf.getvalue()


def _write_entry(buf: io.BytesIO, ino: int, name: str, mode: int, data: bytes, rdev) -> None:
    name_b = name.encode() + b"\0"
    nlink = 2 if mode & 0o040000 else 1
    fields = (ino, mode, 0, 0, nlink, 0, len(data), 0, 0, rdev[0], rdev[1], len(name_b), 0)
    buf.write(b"070701" + b"".join(b"%08X" % f for f in fields))
    buf.write(name_b)
    _pad4(buf)
    buf.write(data)
    _pad4(buf)


def _pad4(buf: io.BytesIO) -> None:
    buf.write(b"\0" * (-buf.tell() % 4))


if __name__ == "__main__":
    print(test_initramfs())
