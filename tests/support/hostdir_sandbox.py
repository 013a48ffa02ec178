"""Sandboxes with host directories for the host-directory tests and benchmark.

    sb = hostdir_sandbox(image, [(host_dir, "/share", False)], engine=ENGINE, ...)

Through the product's API: Sandbox.create(volumes=[HostDir(host, guest, read_only)]),
the agent mounting each before READY.
"""
from __future__ import annotations

import vmm
from vmm.sandbox.volumes import HostDir


def hostdir_sandbox(image, dirs, **kw) -> vmm.Sandbox:
    """A sandbox with each (host_path, guest_path, read_only) of dirs mounted."""
    volumes = [HostDir(str(h), g, read_only=ro) for h, g, ro in dirs]
    return vmm.Sandbox.create(image, volumes=list(kw.pop("volumes", ())) + volumes, **kw)


def mounts_of(sb, timeout=30):
    """{mount point: (source, fs type, options)} from the guest's /proc/mounts."""
    out = {}
    for line in sb.exec(["cat", "/proc/mounts"], timeout=timeout).stdout.decode().splitlines():
        dev, where, fstype, opts = line.split()[:4]
        out[where.replace("\\040", " ")] = (dev, fstype, set(opts.split(",")))
    return out
