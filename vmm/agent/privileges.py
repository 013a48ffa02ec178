"""What an exec may be given beyond its user: supplementary groups, a umask,
no_new_privileges and capability sets, checked and encoded as the EXEC request's GROUPS,
UMASK, NO_NEW_PRIVS and CAPS fields (guest/agent/PROTOCOL.md). The guest agent checks the
same bounds again: the host's checks are for a clear ValueError here, not for safety."""
from __future__ import annotations

import struct
from typing import List, Optional, Sequence, Tuple

from ..record import Record   # not dataclasses: `msb exec` imports this (vmm/record.py)
from . import protocol as P
from .capabilities import Capabilities
from .protocol import G

MAX_GID = 2**32 - 2      # (gid_t)-1 means "no change" to the kernel, never a group


class ExecPrivileges(Record):
    groups: Optional[Sequence[int]] = None     # None: the user's groups from /etc/group
    umask: Optional[int] = None                # None: the agent's (022)
    no_new_privileges: bool = False
    capabilities: Optional[Capabilities] = None   # None: the user's defaults

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.groups is not None:
            if isinstance(self.groups, (str, bytes)):
                raise ValueError(f"groups must be a list of gids, not {self.groups!r}")
            groups = tuple(self.groups)
            if len(groups) > P.MAX_GROUPS:
                raise ValueError(f"{len(groups)} supplementary groups: at most {P.MAX_GROUPS}")
            for g in groups:
                if isinstance(g, bool) or not isinstance(g, int) or not 0 <= g <= MAX_GID:
                    raise ValueError(f"supplementary group {g!r} is not a gid in 0..{MAX_GID}")
            self.groups = groups
        if self.umask is not None and (isinstance(self.umask, bool) or not isinstance(self.umask, int)
                                       or not 0 <= self.umask <= 0o777):
            raise ValueError(f"umask {self.umask!r} is not in 0..0o777")
        if self.capabilities is not None and not isinstance(self.capabilities, Capabilities):
            raise ValueError(f"capabilities must be a vmm.agent.Capabilities, not {self.capabilities!r}")

    def fields(self) -> List[Tuple[int, object]]:
        out: List[Tuple[int, object]] = []
        if self.groups is not None:
            out.append((G.GROUPS, struct.pack(f"<{len(self.groups)}I", *self.groups)))
        if self.umask is not None:
            out.append((G.UMASK, self.umask))
        if self.no_new_privileges:
            out.append((G.NO_NEW_PRIVS, 1))
        if self.capabilities is not None:
            out.append((G.CAPS, P.CAPS.pack(*self.capabilities.masks())))
        return out
