"""Kernel config fragments: a few options laid over the project's guest/kernel/config.

    frag = Fragment.read("nosmp.config")       # checked: only CONFIG_ lines and comments
    merged = merge_config(base_bytes, [frag])  # the fragment's options win, in place

A fragment is what Kbuild's merge_config.sh takes: `CONFIG_FOO=y`, `CONFIG_BAR="text"`
or `# CONFIG_BAZ is not set` lines, blank lines and other comments. The kernel built
from it is cached like the project's own (vmm/guest/kernel.py), keyed by the fragments'
text too. The merged config goes through guest/kernel/build.sh unchanged, so its check
that olddefconfig kept every option covers the fragment's options as well.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from .sources import GuestBuildError

_SET = re.compile(r"^(CONFIG_[A-Za-z0-9_]+)=(\S.*)$")
_UNSET = re.compile(r"^# (CONFIG_[A-Za-z0-9_]+) is not set$")


class FragmentError(GuestBuildError):
    """A config fragment cannot be read or holds a line that is not a config option."""


def option_of(line: str) -> Optional[str]:
    """The option a config line sets ("CONFIG_FOO"), or None for blanks and comments."""
    line = line.strip()
    m = _SET.match(line) or _UNSET.match(line)
    return m.group(1) if m else None


@dataclass(frozen=True)
class Fragment:
    name: str      # what the user called it (a path), for messages and records
    text: bytes

    @classmethod
    def read(cls, path) -> "Fragment":
        try:
            text = Path(path).read_bytes()
        except OSError as e:
            raise FragmentError(f"kernel config fragment {path}: {e.strerror or e}") from None
        frag = cls(str(path), text)
        frag.options()  # refuse a bad one before anything is keyed or built
        return frag

    def options(self) -> List[Tuple[str, str]]:
        """[(option, line)] in file order; FragmentError names the first bad line."""
        try:
            text = self.text.decode()
        except UnicodeDecodeError:
            raise FragmentError(f"kernel config fragment {self.name} is not text "
                                "(a vmlinux goes to --kernel)") from None
        out = []
        for n, raw in enumerate(text.splitlines(), 1):
            line = raw.strip()
            opt = option_of(line)
            if opt is not None:
                out.append((opt, line))
            elif line and not line.startswith("#"):
                raise FragmentError(f"kernel config fragment {self.name} line {n}: {line[:80]!r} "
                                    "is not CONFIG_NAME=value or '# CONFIG_NAME is not set'")
            elif line.startswith("# CONFIG_"):
                raise FragmentError(f"kernel config fragment {self.name} line {n}: {line[:80]!r} "
                                    "looks like an option but is not '# CONFIG_NAME is not set'")
        if not out:
            raise FragmentError(f"kernel config fragment {self.name} sets no options")
        return out


def merge_config(base: bytes, fragments: Sequence[Fragment]) -> bytes:
    """The base config with each fragment's options laid over it: an option the base sets
    is replaced where it stands (later fragments win), a new one is appended. The result
    names each option once, so build.sh's survival check compares against what was asked."""
    lines = base.decode().splitlines()
    where: Dict[str, int] = {}
    for i, line in enumerate(lines):
        opt = option_of(line)
        if opt is not None:
            where[opt] = i
    for frag in fragments:
        added = False
        for opt, line in frag.options():
            if opt in where:
                lines[where[opt]] = line
                continue
            if not added:
                lines += ["", f"# --- from the fragment {Path(frag.name).name}"]
                added = True
            where[opt] = len(lines)
            lines.append(line)
    return ("\n".join(lines) + "\n").encode()


def owners(fragments: Sequence[Fragment]) -> Dict[str, str]:
    """option -> the name of the last fragment that sets it."""
    out = {}
    for frag in fragments:
        for opt, _ in frag.options():
            out[opt] = frag.name
    return out
