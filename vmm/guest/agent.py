"""Build the guest agent (guest/agent/*.c) and the initramfs that holds it as /init.

    agent_binary()     -> Path of the static agent, ${VMM_CACHE:-~/.cache/vmm}/agent/<key>/agent
    agent_initramfs()  -> Path of initramfs.cpio.gz with the agent as /init (and nothing else
                          but /dev/console and the mount points)

The key hashes every source file, the compiler flags and the initramfs layout, so an
edit rebuilds and an unchanged tree never does (vmm/guest/cache.py: one build per key,
even with several test workers or sandboxes starting at once).
"""
from __future__ import annotations

import gzip
import shutil
import subprocess
from pathlib import Path
from typing import List

from . import cache
from .initramfs import initramfs_cpio
from .sources import GuestBuildError, guest_dir

AGENT_CFLAGS = ("-static", "-Os", "-s", "-Wall", "-Wextra", "-Werror", "-std=c11")
LAYOUT = b"agent-initramfs-1"  # bump when the initramfs layout changes


class AgentBuildError(GuestBuildError):
    """The guest agent could not be built."""


def agent_sources() -> List[Path]:
    src = guest_dir() / "agent"
    files = sorted(src.glob("*.c")) + sorted(src.glob("*.h"))
    if not any(f.suffix == ".c" for f in files):
        raise AgentBuildError(f"no agent sources in {src}")
    return files


def agent_key() -> str:
    parts = [LAYOUT, " ".join(AGENT_CFLAGS).encode()]
    for f in agent_sources():
        parts += [f.name.encode(), f.read_bytes()]
    return cache.key(parts)


def _cache_dir() -> cache.CacheDir:
    # The binary and its initramfs share one directory and one lock.
    return cache.CacheDir("agent", agent_key(), announce_waits=False)


def _compile(out: Path) -> None:
    cc = shutil.which("musl-gcc")
    if cc is None:
        raise AgentBuildError("musl-gcc is needed to build the guest agent "
                              "(apt-get install musl-tools)")
    sources = [str(f) for f in agent_sources() if f.suffix == ".c"]
    with cache.publishing(out) as tmp:
        proc = subprocess.run([cc, *AGENT_CFLAGS, "-o", str(tmp), *sources],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise AgentBuildError(f"compiling the guest agent failed:\n{proc.stderr.strip()[-3000:]}")


def agent_dir() -> Path:
    return _cache_dir().path


def agent_binary() -> Path:
    """The static agent binary, built on first use."""
    return _cache_dir().build_once("agent", _compile)


def agent_initramfs() -> Path:
    """initramfs.cpio.gz holding the agent as /init, built on first use."""
    binary = agent_binary()
    return _cache_dir().build_once("initramfs.cpio.gz", lambda image: cache.publish(
        image, gzip.compress(initramfs_cpio(binary.read_bytes()), mtime=0)))


if __name__ == "__main__":
    print(agent_binary())
    print(agent_initramfs())
