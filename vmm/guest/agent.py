"""Build the guest agent (guest/agent/*.c) and the initramfs that holds it as /init.

    agent_binary()     -> Path of the static agent, ${VMM_CACHE:-~/.cache/vmm}/agent/<key>/agent
    agent_initramfs()  -> Path of initramfs.cpio.gz with the agent as /init (and nothing else
                          but /dev/console and the mount points)

The key hashes every source file, the compiler flags and the initramfs layout, so an
edit rebuilds and an unchanged tree never does. A file lock makes concurrent callers
(several test workers, several sandboxes starting) build once.
"""
from __future__ import annotations

import fcntl
import gzip
import hashlib
import os
import shutil
import subprocess
from contextlib import contextmanager
from pathlib import Path
from typing import List

from ..errors import VmmError
from .kernel import cache_dir, guest_dir, initramfs_cpio

AGENT_CFLAGS = ("-static", "-Os", "-s", "-Wall", "-Wextra", "-Werror", "-std=c11")
LAYOUT = b"agent-initramfs-1"  # bump when the initramfs layout changes


class AgentBuildError(VmmError):
    """The guest agent could not be built."""


def agent_sources() -> List[Path]:
    src = guest_dir() / "agent"
    files = sorted(src.glob("*.c")) + sorted(src.glob("*.h"))
    if not any(f.suffix == ".c" for f in files):
        raise AgentBuildError(f"no agent sources in {src}")
    return files


def agent_key() -> str:
    h = hashlib.sha256()
    parts = [LAYOUT, " ".join(AGENT_CFLAGS).encode()]
    for f in agent_sources():
        parts += [f.name.encode(), f.read_bytes()]
    for part in parts:
        h.update(len(part).to_bytes(8, "little"))
        h.update(part)
    return h.hexdigest()[:16]


@contextmanager
def _locked(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _compile(out: Path) -> None:
    cc = shutil.which("musl-gcc")
    if cc is None:
        raise AgentBuildError("musl-gcc is needed to build the guest agent "
                              "(apt-get install musl-tools)")
    sources = [str(f) for f in agent_sources() if f.suffix == ".c"]
    tmp = out.with_name(out.name + ".tmp")
    proc = subprocess.run([cc, *AGENT_CFLAGS, "-o", str(tmp), *sources],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise AgentBuildError(f"compiling the guest agent failed:\n{proc.stderr.strip()[-3000:]}")
    tmp.rename(out)


def agent_dir() -> Path:
    return cache_dir() / "agent" / agent_key()


def agent_binary() -> Path:
    """The static agent binary, built on first use."""
    out = agent_dir()
    binary = out / "agent"
    if binary.is_file():
        return binary
    with _locked(out.with_suffix(".lock")):
        if not binary.is_file():
            out.mkdir(parents=True, exist_ok=True)
            _compile(binary)
    return binary


def agent_initramfs() -> Path:
    """initramfs.cpio.gz holding the agent as /init, built on first use."""
    binary = agent_binary()
    image = binary.parent / "initramfs.cpio.gz"
    if image.is_file():
        return image
    with _locked(binary.parent.with_suffix(".lock")):
        if not image.is_file():
            tmp = image.with_name(image.name + ".tmp")
            tmp.write_bytes(gzip.compress(initramfs_cpio(binary.read_bytes()), mtime=0))
            tmp.rename(image)
    return image


if __name__ == "__main__":
    print(agent_binary())
    print(agent_initramfs())
