"""Checks of what a caller hands a sandbox, done on the host before anything boots, so a
bad value is a ConfigError naming it rather than a confused guest."""
from __future__ import annotations

import os
import re
import stat
from typing import Dict, Optional

from ..errors import ConfigError

_HOSTNAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]{0,62}[A-Za-z0-9])?")


def check_hostname(hostname: Optional[str]) -> None:
    # It goes on the kernel command line, which is split on spaces: keep it a plain name.
    if hostname is not None and not (isinstance(hostname, str) and _HOSTNAME.fullmatch(hostname)):
        raise ConfigError(f"hostname {hostname!r} must be 1-64 letters, digits, '-' or '.', "
                          "starting and ending with a letter or digit")


def check_env(env: Optional[Dict[str, str]]) -> None:
    """NAME=value pairs: a name with '=' (or any NUL) would mean something else in the guest."""
    for k, v in (env or {}).items():
        if not isinstance(k, str) or not k or "=" in k or "\0" in k:
            raise ConfigError(f"environment variable name {k!r} must be a non-empty string "
                              "without '=' or NUL")
        if not isinstance(v, str) or "\0" in v:
            raise ConfigError(f"environment variable {k} has value {v!r}: a string without NUL is needed")


def check_workdir(workdir: Optional[str]) -> None:
    if workdir is not None and not (isinstance(workdir, str) and workdir.startswith("/")):
        raise ConfigError(f"workdir {workdir!r} must be an absolute path in the guest")


def check_timeout(name: str, value) -> None:
    if not (isinstance(value, (int, float)) and value > 0):
        raise ConfigError(f"{name} must be a positive number of seconds, not {value!r}")


def existing_disk(path, what: str) -> str:
    """A disk is a regular file or a block device; returns the path as a str."""
    path = os.fspath(path)
    try:
        mode = os.stat(path).st_mode
    except OSError:
        mode = 0
    if not (stat.S_ISREG(mode) or stat.S_ISBLK(mode)):
        raise ConfigError(f"{what} {path} does not exist or is not a file or block device"
                          + ("; create one with Sandbox.format_writable_disk()"
                             if what == "writable disk" else ""))
    return path
