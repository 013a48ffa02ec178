"""Mounts on the host made for a pod VM's share, and taking them away without losing a file.

A pod's members have their root directories and their host bind mounts (a user's own
directories among them) bind-mounted under the pod's shared directory. Removing such a
directory with a recursive delete would follow the bind into the user's directory and
delete their files. So:

- detach_under(path) unmounts (MNT_DETACH, deepest first) every mount at or below path,
  as /proc/self/mountinfo lists them, and checks that none is left;
- remove_tree(path) removes a tree only where no mount point is: it refuses (OSError
  EBUSY, nothing below removed) to go into a directory that is one, never crossing into
  another file system;
- bind(), make_shared() and make_slave() are mount(2) as `mount --rbind`,
  `--make-shared`, `--make-rslave` do them, through libc (no process per mount);
- bind_read_only() binds a tree read-only in a way that reaches the copies of a shared
  mount (virtiofsd's): read-only is a flag of each mount, and a remount of a mount already
  propagated changes only ours, so the tree is made read-only at a staging point first and
  then bound where it is shared (a bind copies the flags, propagated copies too). A guest
  that is root in the pod VM reaches the share's files; the host's file server refusing
  writes is what keeps a read-only bind read-only.

Everything here acts in the caller's mount namespace: the runtime's commands and monitors
share the one their caller (containerd's shim) runs in, as runc's do.
"""
from __future__ import annotations

import ctypes
import errno
import os
import stat
from typing import List, Set

MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MS_REC = 0x4000
MS_SLAVE = 1 << 19
MS_SHARED = 1 << 20
MNT_DETACH = 2
UMOUNT_NOFOLLOW = 8

_libc = ctypes.CDLL(None, use_errno=True)


def _check(rc: int, what: str, path: str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}", path)


def bind(source: str, target: str) -> None:
    """Bind-mounts source (a directory with what is mounted below it, or a file) on target."""
    _check(_libc.mount(os.fsencode(source), os.fsencode(target), None, MS_BIND | MS_REC, None),
           f"bind-mounting {source}", target)


def bind_read_only(source: str, target: str, stage: str) -> None:
    """Binds source (and what is mounted below it) on target with every mount read-only;
    stage is an empty directory outside any shared mount, used and left empty."""
    bind(source, stage)
    try:
        for point in mounts_under(stage):
            st = os.statvfs(point)
            keep = ((MS_NOSUID if st.f_flag & os.ST_NOSUID else 0)
                    | (MS_NODEV if st.f_flag & os.ST_NODEV else 0)
                    | (MS_NOEXEC if st.f_flag & os.ST_NOEXEC else 0))
            _check(_libc.mount(None, os.fsencode(point), None,
                               MS_REMOUNT | MS_BIND | MS_RDONLY | keep, None),
                   "making read-only", point)
        bind(stage, target)
    finally:
        detach_under(stage)


def make_shared(path: str) -> None:
    """path (a mount point) propagates mounts made below it to its copies in other mount
    namespaces (virtiofsd's, made later)."""
    _check(_libc.mount(None, os.fsencode(path), None, MS_SHARED, None), "making shared", path)


def make_slave(path: str) -> None:
    """Mounts made at or below path no longer propagate back to where it was bound from."""
    _check(_libc.mount(None, os.fsencode(path), None, MS_SLAVE | MS_REC, None),
           "making a slave mount", path)


def _unescape(field: str) -> str:
    """A mountinfo path: spaces, tabs, newlines and backslashes are octal escapes."""
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and field[i + 1:i + 4].isdigit() and len(field[i + 1:i + 4]) == 3:
            out.append(chr(int(field[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def mount_points(mountinfo: str = "/proc/self/mountinfo") -> List[str]:
    """Every mount point of this mount namespace, in mount order."""
    with open(mountinfo, "rb") as f:
        lines = f.read().decode(errors="surrogateescape").splitlines()
    return [_unescape(line.split(" ")[4]) for line in lines if line.count(" ") >= 5]


def _under(point: str, path: str) -> bool:
    return point == path or point.startswith(path.rstrip("/") + "/")


def mounts_under(path: str) -> List[str]:
    """The mount points at or below path (a real path), deepest last."""
    path = os.path.realpath(path)
    return [p for p in mount_points() if _under(p, path)]


def detach_under(path: str) -> None:
    """Unmounts everything at or below path, deepest first; OSError if something stays."""
    path = os.path.realpath(path)
    for _ in range(8):   # a mount stacked on another shows again once the top one goes
        points = mounts_under(path)
        if not points:
            return
        for p in sorted(set(points), key=lambda p: p.count("/"), reverse=True):
            if _libc.umount2(os.fsencode(p), MNT_DETACH | UMOUNT_NOFOLLOW) != 0:
                err = ctypes.get_errno()
                if err not in (errno.EINVAL, errno.ENOENT):   # already gone
                    raise OSError(err, f"unmounting: {os.strerror(err)}", p)
    left = mounts_under(path)
    if left:
        raise OSError(errno.EBUSY, "still mounted after unmounting", left[0])


def remove_tree(path: str) -> None:
    """Removes path and what is below it, never going into a mount point: OSError EBUSY
    naming the first one met (call detach_under first). A missing path is fine."""
    try:
        top = os.lstat(path)
    except FileNotFoundError:
        return
    points: Set[str] = set(mounts_under(path))
    if points:   # checked first, so nothing at all is removed from a tree still in use
        raise OSError(errno.EBUSY, "a mount point: not removed", min(points, key=len))
    _remove(os.path.realpath(path) if stat.S_ISDIR(top.st_mode) else path, top.st_dev, points)


def _remove(path: str, dev: int, points: Set[str]) -> None:
    try:
        st = os.lstat(path)
        if not stat.S_ISDIR(st.st_mode):
            if path in points:
                raise OSError(errno.EBUSY, "a mount point: not removed", path)
            os.unlink(path)
            return
        if path in points or st.st_dev != dev:
            raise OSError(errno.EBUSY, "a mount point: not removed", path)
        for name in os.listdir(path):
            _remove(os.path.join(path, name), dev, points)
        os.rmdir(path)
    except FileNotFoundError:
        return   # removed meanwhile (a monitor's socket as it ends)
