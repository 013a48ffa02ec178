"""The guest kernel's command line: one builder with the kernel's capacity.

The line a guest gets is made of parts appended in order: the engine's prefix (console,
reboot and panic behaviour), the engine's device arguments (the kvm engine announces each
virtio-mmio device as `virtio_mmio.device=...`), then the caller's options (a sandbox's,
the user's). Devices come before the caller's part because an init's own arguments after
`--` must stay last. Parts are kept verbatim, each carrying its own separating space, so
the text is exactly what the engine passes on.

The capacity is checked once, over every part, when the text is taken (Machine() takes it
before anything starts): an overflow is a ConfigError naming the part that crossed the
limit, what came before it and by how many bytes, instead of a refusal from the C loader
or a guest that silently loses the tail of its command line.
"""
from __future__ import annotations

from typing import List, Tuple

from .errors import ConfigError



def command_line_size() -> int:
    """Linux's COMMAND_LINE_SIZE on x86, the terminating NUL included (the C core's loader
    enforces the same number, so it is read from there)."""
    from .kernel_image import core_limits
    return core_limits().cmdline_size


class KernelCmdline:
    """Parts of a kernel command line, each with a description for error messages.

    A description may hold `{n}`, replaced by the part's size in bytes ("the kvm engine's
    {n}-byte prefix")."""

    def __init__(self, capacity: int = 0):
        self.capacity = capacity or command_line_size()
        self._parts: List[Tuple[str, str]] = []

    def append(self, text: str, what: str) -> "KernelCmdline":
        if text:
            self._parts.append((what, text))
        return self

    def extend(self, other: "KernelCmdline") -> "KernelCmdline":
        """Append another builder's parts (a sandbox's options), keeping their names."""
        for what, text in other.parts:
            self.append(text, what)
        return self

    @property
    def parts(self) -> Tuple[Tuple[str, str], ...]:
        return tuple(self._parts)

    def __len__(self) -> int:
        return sum(len(text.encode()) for _, text in self._parts)

    def text(self) -> str:
        """The whole line, or ConfigError if it does not fit the capacity."""
        self.check()
        return "".join(text for _, text in self._parts)

    def check(self) -> None:
        limit = self.capacity - 1  # the NUL
        total = 0
        for i, (what, text) in enumerate(self._parts):
            size = len(text.encode())
            if total + size > limit:
                raise ConfigError(self._overflow(i, total, limit))
            total += size

    def _overflow(self, i: int, before: int, limit: int) -> str:
        what, text = self._parts[i]
        size = len(text.encode())
        over = len(self) - limit
        earlier = [_describe(w, t) for w, t in self._parts[:i]]
        later = [_describe(w, t) for w, t in self._parts[i + 1:]]
        msg = f"kernel command line too long: {_describe(what, text)} is {size} bytes"
        if earlier:
            msg += f"; with {' and '.join(earlier)} that is {before + size}"
        msg += (f", over the limit of {limit} ({self.capacity} with the terminating NUL) by "
                f"{over} byte{'s' if over != 1 else ''}")
        if later:
            msg += f" (after it: {' and '.join(later)})"
        return msg + f": at most {max(0, limit - before)} bytes are left for {_describe(what, text)}"


def _describe(what: str, text: str) -> str:
    return what.replace("{n}", str(len(text.encode())))


def caller_parts(cmdline) -> KernelCmdline:
    """The caller's part (Machine's cmdline): a str is one part, "your command line"; a
    KernelCmdline (a sandbox's options, then the user's) keeps its parts and their names."""
    if isinstance(cmdline, KernelCmdline):
        return KernelCmdline().extend(cmdline)
    return KernelCmdline().append(cmdline, "your command line")
