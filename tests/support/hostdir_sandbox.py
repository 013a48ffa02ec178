"""Sandboxes with host directories for the host-directory tests and benchmark.

    sb = hostdir_sandbox(image, [(host_dir, "/share", False)], engine=ENGINE, ...)

Through the product's API: Sandbox.create(volumes=[HostDir(host, guest, read_only)]),
the agent mounting each before READY. INTERIM, until the HostDir branch is merged: with
only the Machine-level vmm.devices.SharedDir, the sandbox's Machine gets the shared dirs
(a wrapped Machine class during create()) and the test mounts them by hand with `mount -t
virtiofs`.
"""
from __future__ import annotations

import threading

import pytest

import vmm


def _hostdir_class():
    try:
        from vmm.sandbox.volumes import HostDir
    except ImportError:
        return None
    return HostDir


def _shared_dir_class():
    try:
        from vmm.devices import SharedDir
    except ImportError:
        return None
    return SharedDir


def need_hostdirs():
    """Skip, naming why, where this tree has no host directories (virtio-fs) yet."""
    if _hostdir_class() is None and _shared_dir_class() is None:
        pytest.skip("neither vmm.sandbox.volumes.HostDir nor vmm.devices.SharedDir: "
                    "no host directories yet")


_PATCH = threading.Lock()


def _by_hand(image, dirs, **kw):
    import vmm.sandbox.sandbox as sandbox_module
    SharedDir = _shared_dir_class()
    shared = [SharedDir(str(h), f"vmm-fs-{i}", read_only=ro) for i, (h, _, ro) in enumerate(dirs)]
    real = sandbox_module.Machine

    def machine(*a, **mkw):
        return real(*a, shared_dirs=shared, **mkw)
    with _PATCH:
        sandbox_module.Machine = machine
        try:
            sb = vmm.Sandbox.create(image, **kw)
        finally:
            sandbox_module.Machine = real
    for i, (_, guest, ro) in enumerate(dirs):
        r = sb.exec(["sh", "-c", f"mkdir -p {guest} && mount -t virtiofs {'-o ro ' if ro else ''}"
                     f"vmm-fs-{i} {guest}"], timeout=30)
        assert r.code == 0, r
    return sb


def hostdir_sandbox(image, dirs, **kw) -> vmm.Sandbox:
    """A sandbox with each (host_path, guest_path, read_only) of dirs mounted."""
    HostDir = _hostdir_class()
    if HostDir is None:
        return _by_hand(image, dirs, **kw)
    volumes = [HostDir(str(h), g, read_only=ro) for h, g, ro in dirs]
    return vmm.Sandbox.create(image, volumes=list(kw.pop("volumes", ())) + volumes, **kw)


def mounts_of(sb, timeout=30):
    """{mount point: (source, fs type, options)} from the guest's /proc/mounts."""
    out = {}
    for line in sb.exec(["cat", "/proc/mounts"], timeout=timeout).stdout.decode().splitlines():
        dev, where, fstype, opts = line.split()[:4]
        out[where.replace("\\040", " ")] = (dev, fstype, set(opts.split(",")))
    return out
