"""Each sandbox's private runtime directory: the agent's vsock socket and, unless the
caller keeps it elsewhere, the console log. Removed when the sandbox stops."""
from __future__ import annotations

import os
import tempfile

PREFIX = "vmm-sb-"


def runtime_base() -> str:
    """Where runtime directories are made.

    Unix socket paths are limited to 107 bytes: prefer the short per-user runtime dir."""
    base = os.environ.get("XDG_RUNTIME_DIR")
    if base and os.path.isdir(base) and os.access(base, os.W_OK) and len(base) < 60:
        return base
    return tempfile.gettempdir()


def make_runtime_dir() -> str:
    return tempfile.mkdtemp(prefix=PREFIX, dir=runtime_base())
