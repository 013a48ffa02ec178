"""The one place that loads the C core (vmm._core) and turns its errors into exceptions.

Every fallible function of the core (csrc/core_api.h) takes `char *err, size_t errlen` last
and returns -1 or NULL on failure with a one-line message in err. check() is the one way
Python calls such a function: it supplies the buffer, tests the result and raises a typed
exception (ConfigError unless told otherwise) carrying the core's message as core_message.

`ffi` and `lib` load on first use (module __getattr__), not at import: loading the shared
object costs a few milliseconds that `import vmm`, a bare `msb --help` or a qemu-only run
should not pay.
"""
from __future__ import annotations

from .errors import ConfigError

# Larger than any message the core writes (exit messages with registers stay in their own
# 1024-byte struct field): a truncated reason would hide the bad value it names.
ERROR_BUFFER_SIZE = 1024


def _load():
    from . import _core
    globals().update(ffi=_core.ffi, lib=_core.lib)  # later lookups skip __getattr__
    return _core


def __getattr__(name):
    if name in ("ffi", "lib"):
        return getattr(_load(), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _ffi():
    return globals().get("ffi") or _load().ffi


def string(ptr):
    """A C string the core returned (a device's breakage, an exit message) as str; None for NULL."""
    ffi = _ffi()
    return None if ptr == ffi.NULL else ffi.string(ptr).decode(errors="replace")


def check(fn, *args, error=ConfigError, context: str = ""):
    """fn(*args, err, errlen) -> its result, or raise error("<context>: <C message>").

    Failure is what the core's convention says: NULL for a pointer, a negative int
    otherwise (vmm_net_open_tap returns an fd). The exception has .core_message, the
    core's own words, for callers that sort failures by them."""
    ffi = _ffi()
    err = ffi.new("char[]", ERROR_BUFFER_SIZE)
    result = fn(*args, err, ERROR_BUFFER_SIZE)
    failed = (result == ffi.NULL) if isinstance(result, ffi.CData) else result < 0
    if not failed:
        return result
    message = ffi.string(err).decode(errors="replace")
    exc = error(f"{context}: {message}" if context else message)
    exc.core_message = message
    raise exc
