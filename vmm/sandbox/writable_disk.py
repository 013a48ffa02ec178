"""A sandbox's writable disk: a sparse file holding an ext4 file system.

The host formats it (the guest agent only mounts it, as the upper layer of its overlay),
so formatting needs no root and no guest time:

    format_writable_disk("/var/lib/sb/one.ext4", size="4G")

The file is sparse: a new 4 GiB disk takes about as much host space as its journal.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from typing import Union

from ..errors import ConfigError, VmmError

DEFAULT_SIZE = "4G"
MIN_SIZE = 16 << 20    # below this ext4 with a journal hardly fits anything
MAX_SIZE = 16 << 40    # a sanity bound on typos (16 TiB)
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}

# lazy_*_init=0: mkfs initialises inode tables and journal now. On a file mkfs does
# that by punching holes, which is instant and keeps the file sparse; with the lazy
# default the guest kernel's ext4lazyinit thread would instead zero them after mount,
# spending guest CPU (slow under TCG) and writing real zeros into the file.
# -m 0: no blocks reserved for root; the sandbox is a single-tenant disk.
MKFS_OPTIONS = ("-q", "-F", "-m", "0", "-E", "lazy_itable_init=0,lazy_journal_init=0")


def parse_size(size: Union[int, str]) -> int:
    """Bytes from an int or a string like "512M", "4G", "4GiB", "1073741824"."""
    if isinstance(size, bool):
        raise ConfigError(f"disk size must be bytes or a string like '4G', not {size!r}")
    if isinstance(size, int):
        value = size
    elif isinstance(size, str):
        m = re.fullmatch(r"\s*(\d+)\s*([KMGT]?)(?:i?B)?\s*", size, re.IGNORECASE)
        if not m:
            raise ConfigError(f"disk size {size!r} is not a size like 512M, 4G or 1073741824")
        value = int(m.group(1)) * _UNITS[m.group(2).upper()]
    else:
        raise ConfigError(f"disk size must be bytes or a string like '4G', not {size!r}")
    if not MIN_SIZE <= value <= MAX_SIZE:
        raise ConfigError(f"disk size {size!r} ({value} bytes) is outside "
                          f"{MIN_SIZE >> 20} MiB .. {MAX_SIZE >> 40} TiB")
    return value


def format_writable_disk(path: Union[str, os.PathLike], size: Union[int, str] = DEFAULT_SIZE) -> str:
    """Create a new sparse file of `size` at path and put an empty ext4 on it.

    Refuses to touch an existing file: a writable disk holds a sandbox's state, and
    formatting one by mistake would lose it. Returns the path.
    """
    path = os.fspath(path)
    nbytes = parse_size(size)
    mkfs = shutil.which("mkfs.ext4") or next(
        (p for p in ("/sbin/mkfs.ext4", "/usr/sbin/mkfs.ext4") if os.access(p, os.X_OK)), None)
    if mkfs is None:
        raise ConfigError("formatting a writable disk needs mkfs.ext4 (apt-get install e2fsprogs)")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        raise ConfigError(f"writable disk {path} already exists; refusing to format over it") from None
    except OSError as e:
        raise ConfigError(f"cannot create writable disk {path}: {e.strerror}") from None
    try:
        try:
            os.ftruncate(fd, nbytes)  # sparse: no data blocks yet
        finally:
            os.close(fd)
        proc = subprocess.run([mkfs, *MKFS_OPTIONS, path], capture_output=True, text=True)
        if proc.returncode != 0:
            raise VmmError(f"mkfs.ext4 failed on {path}: "
                           f"{(proc.stderr or proc.stdout).strip()[-500:] or proc.returncode}")
    except BaseException:
        try:
            os.unlink(path)
        except OSError:
            pass
        raise
    return path
