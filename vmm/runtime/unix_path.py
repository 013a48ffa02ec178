"""A Unix socket path a caller's deep state directory can still use. sun_path holds 107
bytes, and Docker puts a container's runtime state at
/var/run/docker/runtime-NAME/moby/<64-hex id>/, so our monitor's socket there is longer
than that. A path that does not fit is reached through the directory's file descriptor
instead: /proc/self/fd/N/NAME names the same file and is short (bind creates the socket
in the real directory; connect finds it there).

    with short_unix_path(path) as p:
        sock.bind(p)     # or connect(p)
"""
from __future__ import annotations

import contextlib
import os
from typing import Iterator

SUN_PATH_MAX = 107   # sizeof(sun_path) - 1 for the terminating zero


@contextlib.contextmanager
def short_unix_path(path: str) -> Iterator[str]:
    if len(os.fsencode(path)) <= SUN_PATH_MAX:
        yield path
        return
    fd = os.open(os.path.dirname(path) or ".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        yield f"/proc/self/fd/{fd}/{os.path.basename(path)}"
    finally:
        os.close(fd)
