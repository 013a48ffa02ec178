"""The L1 kernel: Debian's generic amd64 kernel package, fetched with `apt-get download`
and unpacked with `dpkg-deb -x` (never installed on the host).

Why the generic flavour: it builds kvm, kvm-amd, 9p and overlay as modules (the cloud
flavour lacks 9p), and it is what a Debian host would run. The package the
`linux-image-amd64` metapackage points at today is the key: the cache directory is named
after the exact package and version, so an upgrade gives a fresh copy and an unchanged
one is never fetched twice. Offline, the newest cached copy is used.
"""
from __future__ import annotations

import fcntl
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from .cache import nested_cache

METAPACKAGE = "linux-image-amd64"


class L1Unavailable(Exception):
    """L1 cannot be had on this host; the message says why (used as a skip reason)."""


@dataclass(frozen=True)
class L1Kernel:
    package: str      # linux-image-6.1.0-56-amd64
    version: str      # 6.1.192-2
    root: Path        # the unpacked package
    release: str      # 6.1.0-56-amd64 (the modules directory)

    @property
    def vmlinuz(self) -> Path:
        return self.root / "boot" / f"vmlinuz-{self.release}"

    @property
    def modules(self) -> Path:
        return self.root / "lib" / "modules" / self.release


def _run(argv, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, **kw)


def _show() -> Optional[tuple]:
    r = _run(["apt-cache", "show", "--no-all-versions", METAPACKAGE])
    m = re.search(r"^Depends:.*?\b(linux-image-[0-9][^ ,]*-amd64) \(= ([^)]+)\)", r.stdout, re.M)
    return (m.group(1), m.group(2)) if r.returncode == 0 and m else None


def resolve_package() -> Optional[tuple]:
    """(package, version) of the kernel the metapackage depends on, or None if apt does not
    know it. A fresh machine may have no package lists yet: as root, fetch them once."""
    if not shutil.which("apt-cache"):
        return None
    found = _show()
    if found is None and os.geteuid() == 0 and shutil.which("apt-get"):
        _run(["apt-get", "update", "-qq"], timeout=600)
        found = _show()
    return found


def _unpacked(package: str, version: str) -> Path:
    return nested_cache() / f"kernel-{package}_{version}"


def _load(path: Path) -> Optional[L1Kernel]:
    name = path.name[len("kernel-"):]
    package, _, version = name.partition("_")
    mods = list((path / "lib" / "modules").glob("*"))
    if not (path / ".complete").exists() or len(mods) != 1:
        return None
    return L1Kernel(package, version, path, mods[0].name)


def _cached_newest() -> Optional[L1Kernel]:
    found = [k for k in map(_load, sorted(nested_cache().glob("kernel-*"))) if k]
    return found[-1] if found else None


def _download(package: str, version: str, dest: Path) -> None:
    with tempfile.TemporaryDirectory(dir=nested_cache()) as tmp:
        # apt's sandbox user cannot write into root's temporary directory: let it.
        Path(tmp).chmod(0o755)
        r = _run(["apt-get", "download", f"{package}={version}"], cwd=tmp, timeout=600)
        debs = list(Path(tmp).glob("*.deb"))
        if r.returncode != 0 or not debs:
            raise L1Unavailable(f"apt-get download {package}={version} failed: "
                                f"{(r.stderr or r.stdout).strip()[-500:]}")
        staging = Path(tmp) / "root"
        r = _run(["dpkg-deb", "-x", str(debs[0]), str(staging)], timeout=600)
        if r.returncode != 0:
            raise L1Unavailable(f"dpkg-deb -x {debs[0].name} failed: {r.stderr.strip()[-500:]}")
        # Only what L1 boots with: the kernel and its modules (not firmware or docs).
        (staging / ".complete").write_text(f"{package} {version}\n")
        shutil.rmtree(dest, ignore_errors=True)
        staging.rename(dest)


def l1_kernel() -> L1Kernel:
    """The unpacked L1 kernel, downloading it on first use. Raises L1Unavailable."""
    want = resolve_package()
    if want is None:
        cached = _cached_newest()
        if cached:
            return cached
        raise L1Unavailable(f"apt does not know {METAPACKAGE} (run `apt-get update`) and no "
                            f"L1 kernel is cached under {nested_cache()}")
    dest = _unpacked(*want)
    with open(nested_cache() / "kernel.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)   # concurrent runs download once
        kernel = _load(dest)
        if kernel is None:
            _download(*want, dest)
            kernel = _load(dest)
    if kernel is None or not kernel.vmlinuz.exists():
        raise L1Unavailable(f"{dest} does not hold a kernel and one modules directory")
    return kernel
