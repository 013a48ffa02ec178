"""The one error boundary of both command lines, `msb` and `python -m vmm`.

Every failure ends as exactly one line on stderr, `error: <message>`, and one exit status:

    2  usage: the command as typed cannot run, and the fix is to change it: an unknown
       command or flag, a missing or malformed argument, a value vmm refuses
       (vmm.ConfigError: a missing kernel file, not a kernel, too little memory;
       vmm.images.BadReference), an engine this host cannot run (EngineUnavailable)
    1  runtime: a valid request that failed (an image not in the store, a registry that
       refused, a file that is not a valid image, a guest that crashed, a build that broke)
  130  interrupted (Ctrl-C)

An error that is none of vmm's own (a bug) still prints one line, with its type to report
it by; MSB_TRACEBACK=1 prints the traceback as well. This module imports nothing heavy
and no click: `python -m vmm` starts without it.
"""
from __future__ import annotations

import os
import sys

from ..errors import EngineUnavailable, VmmError

EXIT_RUNTIME = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class UsageError(Exception):
    """The command line as typed cannot run (each CLI turns its parser's errors into this)."""


class Failure(Exception):
    """A runtime failure whose message is meant for the user as it is (exit 1)."""


def exit_status(e: BaseException) -> int:
    if isinstance(e, KeyboardInterrupt):
        return EXIT_INTERRUPTED
    if isinstance(e, (UsageError, EngineUnavailable)):
        return EXIT_USAGE
    # vmm's errors that are also ValueErrors are bad values from the caller
    # (vmm.ConfigError, vmm.images.BadReference): at the command line, bad arguments.
    if isinstance(e, VmmError) and isinstance(e, ValueError):
        return EXIT_USAGE
    return EXIT_RUNTIME


def message(e: BaseException) -> str:
    if isinstance(e, KeyboardInterrupt):
        return "interrupted"
    text = str(e) or type(e).__name__
    if isinstance(e, (UsageError, Failure, VmmError, OSError)):
        return text
    return f"internal error ({type(e).__name__}): {text}"


def print_error(text: str) -> None:
    sys.stderr.write(f"error: {text}\n")
    sys.stderr.flush()


def report(e: BaseException) -> int:
    """Print e as the one `error:` line and return the exit status it maps to."""
    if os.environ.get("MSB_TRACEBACK") and not isinstance(e, UsageError):
        import traceback
        traceback.print_exception(type(e), e, e.__traceback__)
    print_error(message(e))
    return exit_status(e)


def run(command, *args) -> int:
    """command(*args) inside the boundary: its int result (None is 0), or the failure's
    exit status after its one `error:` line. SystemExit passes through (--help, --version)."""
    try:
        rv = command(*args)
    except (Exception, KeyboardInterrupt) as e:
        return report(e)
    return rv if isinstance(rv, int) else 0
