"""The host TSC frequency a TCG guest's TSC runs at, for the qemu engine's kernel command
line (csrc/host_tsc.c says why a TCG guest cannot find it itself and what that cost).

Only an invariant TSC (constant_tsc and nonstop_tsc) has one frequency to give; elsewhere
this is None and the guest keeps its jiffies clock. Measured once per process (about
6 ms on an idle host: three 2 ms windows)."""
from __future__ import annotations

import functools
from typing import Optional

WINDOW_US = 2000
REQUIRED_FLAGS = ("constant_tsc", "nonstop_tsc")


def invariant_tsc(cpuinfo: str = "/proc/cpuinfo") -> bool:
    try:
        with open(cpuinfo) as f:
            for line in f:
                if line.startswith("flags"):
                    flags = line.split(":", 1)[1].split()
                    return all(flag in flags for flag in REQUIRED_FLAGS)
    except OSError:
        pass
    return False


@functools.lru_cache(maxsize=1)
def host_tsc_khz() -> Optional[int]:
    if not invariant_tsc():
        return None
    from .. import _binding
    khz = int(_binding.lib.vmm_host_tsc_khz(WINDOW_US))
    return khz if khz > 0 else None
