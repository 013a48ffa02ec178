"""The one lookup of the built guest kernel for the real-guest tests (the `kernel_path`
fixture in conftest.py, support/virtio_e2e.py).

Only "no guest kernel was ever built here" is a skip (scripts/test.sh builds it first). Any
other failure fails the tests that need it, so that a broken lookup cannot pass as dozens of
skips: a lookup that raises anything but "not built yet", and a "not built yet" while the
cache does hold a built kernel (the lookup missed it, or the kernel's inputs changed since:
either way the run must say so). The cache is located here on its own, not through
vmm.guest.cache, so that a regression there cannot hide itself.
"""
import os
from pathlib import Path

import pytest


def cached_kernels() -> list:
    """Every built vmlinux in the guest cache, whatever its key."""
    root = Path(os.environ.get("VMM_CACHE") or Path.home() / ".cache" / "vmm")
    return sorted(root.glob("kernel/*/vmlinux"))


def built_guest_kernel() -> Path:
    """The built guest kernel; pytest.skip only when none was ever built here."""
    from vmm.guest import kernel
    try:
        return kernel.guest_kernel(build=False)
    except kernel.KernelError as e:
        if "not built yet" not in str(e):
            raise
        others = cached_kernels()
        if others:
            pytest.fail(f"{e}, but the cache holds {len(others)} other built kernel(s) "
                        f"({', '.join(str(p.parent.name) for p in others)}): the lookup missed "
                        "it or the kernel's inputs changed; build it with "
                        "`python -m vmm.guest.kernel`", pytrace=False)
        pytest.skip(f"guest kernel not built: {e}")
