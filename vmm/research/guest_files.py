"""The guest-side files a benchmark boots: the kernel, the test initramfs, an ext4 root
disk holding the same test init (root=disk), and the busybox image the agent runs from.

The disk and the image are built into a directory the run owns (a temporary one unless
the caller names it), once per run: a few hundred ms, never inside a timed round.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Optional

from ..errors import VmmError


class GuestFilesError(VmmError):
    """A file a benchmark needs could not be found or built."""


def default_kernel() -> str:
    from ..guest import kernel
    return os.fspath(kernel.guest_kernel())


def test_initramfs() -> str:
    from ..guest import initramfs
    return os.fspath(initramfs.test_initramfs())


def test_init_binary() -> Path:
    """The static test init the test initramfs was built from (cached beside it)."""
    init = Path(test_initramfs()).parent / "init"
    if not init.is_file():
        raise GuestFilesError(f"the test init binary is missing beside the initramfs: {init}")
    return init


def init_root_disk(directory: Path) -> str:
    """An ext4 image holding /init (the test init), /dev and /proc: the root=disk variant."""
    out = Path(directory) / "init-root.ext4"
    if out.is_file():
        return os.fspath(out)
    mkfs = shutil.which("mkfs.ext4") or "/sbin/mkfs.ext4"
    tree = Path(directory) / "init-root"
    for d in ("dev", "proc"):
        (tree / d).mkdir(parents=True, exist_ok=True)
    shutil.copy2(test_init_binary(), tree / "init")
    r = subprocess.run([mkfs, "-q", "-F", "-d", str(tree), "-L", "benchroot", str(out), "8M"],
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise GuestFilesError(f"mkfs.ext4 of the bench root disk failed: {r.stderr.strip()}")
    return os.fspath(out)


# The kernel arguments that boot the disk above: /dev/vda is the first virtio disk on
# both engines; rootwait because the virtio-mmio probe may come after the root mount try.
DISK_ROOT_CMDLINE = "root=/dev/vda rootfstype=ext4 ro rootwait init=/init"


def agent_image(directory: Path) -> str:
    """The busybox EROFS image the agent runs from (the product's default image layer)."""
    from ..images.default_image import BUSYBOX, INSTALL_HINT, layer_tar
    from ..images.rootfs import LayerSource, build_root_disk

    out = Path(directory) / "agent-image.erofs"
    if out.is_file():
        return os.fspath(out)
    if not BUSYBOX.is_file():
        raise GuestFilesError(f"init=agent needs {BUSYBOX}: {INSTALL_HINT}")
    layer = Path(directory) / "busybox-layer.tar"
    layer.write_bytes(layer_tar(BUSYBOX))
    tmp = Path(directory) / "agent-image.erofs.tmp"
    build_root_disk([LayerSource(str(layer), "application/vnd.oci.image.layer.v1.tar")], str(tmp))
    tmp.rename(out)
    return os.fspath(out)


def kernel_for(config_kernel: Optional[str], kernel_config: Optional[str] = None) -> str:
    """The vmlinux a configuration boots: its path, the project's kernel, or the project's
    kernel built with the configuration's config fragments ("a.config+b.config")."""
    if config_kernel is not None:
        return config_kernel
    if kernel_config is None:
        return default_kernel()
    from ..guest import kernel
    return os.fspath(kernel.guest_kernel(fragments=kernel_config.split("+")))
