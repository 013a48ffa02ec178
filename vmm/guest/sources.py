"""Where the guest's sources are (kernel config and build script, test init, agent), and the
error every guest-artefact builder raises."""
from __future__ import annotations

import os
from pathlib import Path

from ..errors import VmmError


class GuestBuildError(VmmError):
    """A guest artefact (kernel, initramfs, agent) could not be found or built."""


def guest_dir() -> Path:
    """$VMM_GUEST_DIR, else guest/ of the checkout this package runs from, else the copy a
    plain `pip install` puts in the package (vmm/_guest: kernel, init and agent sources)."""
    env = os.environ.get("VMM_GUEST_DIR")
    if env:
        path = Path(env)
        if not (path / "kernel" / "config").is_file():
            raise GuestBuildError(f"VMM_GUEST_DIR={env} does not hold kernel/config")
        return path
    here = Path(__file__).resolve().parents[1]   # the vmm package
    for path in (here.parent / "guest", here / "_guest"):
        if (path / "kernel" / "config").is_file():
            return path
    raise GuestBuildError(f"no guest sources next to the vmm package ({here.parent / 'guest'} or "
                          f"{here / '_guest'}); set VMM_GUEST_DIR to a checkout's guest/ directory")
