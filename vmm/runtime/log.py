"""The runtime's log, as runc writes it: `--log FILE` (default stderr) and
`--log-format text|json`. containerd's shim reads the last JSON line's "msg" to tell the
user why a runtime command failed, so every error goes there; when the log is a file the
bare message also goes to stderr, as runc does.

    text: time="2026-11-29T15:16:09Z" level=error msg="container not running"
    json: {"level":"error","msg":"container not running","time":"2026-11-29T15:16:09Z"}
"""
from __future__ import annotations

import datetime
import json
import os
import sys
from typing import Optional

LEVELS = ("debug", "info", "warning", "error")
LINE_MAX = 16 << 10    # one message; a longer one is cut (a path list, a console tail)


class RuntimeLog:
    def __init__(self, path: Optional[str] = None, fmt: str = "text", debug: bool = False):
        if fmt not in ("text", "json"):
            raise ValueError(f"unknown log format {fmt!r} (text or json)")
        self.path, self.fmt, self.debug_on = path, fmt, debug
        self.fd: Optional[int] = None
        if path:
            self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)

    def line(self, level: str, msg: str) -> bytes:
        msg = msg if len(msg) <= LINE_MAX else msg[:LINE_MAX] + "..."
        t = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        if self.fmt == "json":
            return (json.dumps({"level": level, "msg": msg, "time": t}, separators=(",", ":")) + "\n").encode()
        return f"time=\"{t}\" level={level} msg={json.dumps(msg)}\n".encode()

    def write(self, level: str, msg: str) -> None:
        if level == "debug" and not self.debug_on:
            return
        data = self.line(level, msg)
        try:
            os.write(self.fd if self.fd is not None else 2, data)
        except OSError:
            pass

    def debug(self, msg: str) -> None:
        self.write("debug", msg)

    def info(self, msg: str) -> None:
        self.write("info", msg)

    def warning(self, msg: str) -> None:
        self.write("warning", msg)

    def error(self, msg: str) -> None:
        self.write("error", msg)

    def fatal(self, msg: str) -> None:
        """An error that ends the command: logged, and on stderr too when logging to a file."""
        self.error(msg)
        if self.fd is not None:
            try:
                sys.stderr.write(msg + "\n")
                sys.stderr.flush()
            except OSError:
                pass
