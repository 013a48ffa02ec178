"""The busybox test image as an unpacked root directory (what a container runtime hands
Sandbox.create(root_dir=)): the very layer tar sandbox_image.py turns into image.erofs,
extracted into a directory, so the two roots hold the same tree.

    root = unpack_busybox_rootfs(tmp_dir)   # -> Path of the directory (reused if present)
    snapshot = tree_snapshot(root)          # compare before and after a guest ran on it
"""
import hashlib
import os
import tarfile
from pathlib import Path

from support.sandbox_image import busybox_layer


def unpack_busybox_rootfs(directory: Path) -> Path:
    """directory/rootfs holding the busybox image's tree, unpacked once."""
    directory = Path(directory)
    root = directory / "rootfs"
    if root.is_dir():
        return root
    directory.mkdir(parents=True, exist_ok=True)
    layer = busybox_layer(directory / "busybox-layer.tar")
    tmp = directory / "rootfs.tmp"
    with tarfile.open(layer) as tar:
        # Our own tar (absolute symlinks such as bin/sh -> /bin/busybox are meant for the
        # guest, resolved inside its root): extracted exactly as written.
        tar.extractall(tmp, filter="fully_trusted")
    tmp.rename(root)
    return root


def tree_snapshot(root: Path) -> dict:
    """Every entry under root (root itself as ""): type, mode, size, mtime, and a regular
    file's SHA-256 or a link's target, so any change on the host side shows."""
    root = Path(root)
    snap = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [""] + dirnames + filenames if dirpath == str(root) else dirnames + filenames:
            path = os.path.join(dirpath, name) if name else dirpath
            st = os.lstat(path)
            entry = (st.st_mode, st.st_size, st.st_mtime_ns, st.st_uid, st.st_gid)
            if os.path.islink(path):
                entry += (os.readlink(path),)
            elif os.path.isfile(path):
                entry += (hashlib.sha256(Path(path).read_bytes()).hexdigest(),)
            snap[os.path.relpath(path, root) if name else ""] = entry
    return snap
