"""What a result was measured on, recorded with every result so that numbers stay
comparable later: CPU model, core count, what backs /dev/kvm, the host kernel, the QEMU
version, the project's version and git revision, and whether the host was busy.

Every probe is best effort: a value that cannot be read is None, never a guess.
"""
from __future__ import annotations

import os
import platform
import shutil
import subprocess
from pathlib import Path
from typing import Optional

from .._version import __version__


def cpu_model() -> Optional[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def qemu_version(binary: Optional[str] = None) -> Optional[str]:
    binary = binary or shutil.which("qemu-system-x86_64")
    if not binary:
        return None
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    first = out.stdout.splitlines()[0] if out.stdout else ""
    return first.strip() or None


def git_revision() -> Optional[str]:
    """The checkout's HEAD commit (with "-dirty" when it has uncommitted changes), or None
    for an installed package outside a checkout."""
    root = Path(__file__).resolve().parents[2]
    if not (root / ".git").exists():
        return None
    try:
        rev = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=10)
        if rev.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return rev.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def load_average() -> Optional[list]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def machine_info() -> dict:
    from ..engines import kvm_backing

    return {
        "cpu_model": cpu_model(),
        "cpus": os.cpu_count(),
        "kvm_backing": kvm_backing(),
        "host_kernel": platform.release(),
        "qemu": qemu_version(),
        "vmm_version": __version__,
        "git_revision": git_revision(),
        "load_average_at_start": load_average(),
    }
