"""The sandbox image of the host-directory tests and benchmark: the busybox test image's
layer (sandbox_image.py) plus a second layer with what busybox lacks:

- /usr/local/bin/fs_probe: tests/guest/fs_probe.c built static with musl-gcc (mmap
  through MAP_SHARED, fsync while the file stays open, a nanosecond clock);
- git: the host's /usr/bin/git, its builtins' links in /usr/lib/git-core (the ones that
  point at `git`; the scripts and the curl-linked helpers are left out, a local clone
  needs neither), /usr/share/git-core/templates, and the shared libraries `ldd` names at
  the host's own paths (git is Debian's dynamically linked one).

Both layers go through the project's own image code (vmm.images.rootfs.build_root_disk)
into one EROFS root disk, as a pulled two-layer image would.

    image = build_hostdir_image(tmp_dir)      # -> Path of image.erofs (reused if present)
"""
from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
import tarfile
from pathlib import Path

from support.sandbox_image import busybox_layer

GUEST = Path(__file__).resolve().parent.parent / "guest"
PROBE = "usr/local/bin/fs_probe"
GIT = Path("/usr/bin/git")
GIT_CORE = Path("/usr/lib/git-core")
GIT_TEMPLATES = Path("/usr/share/git-core/templates")
LAYER_TYPE = "application/vnd.oci.image.layer.v1.tar"


def have_git() -> bool:
    return GIT.is_file() and GIT_CORE.is_dir() and shutil.which("ldd") is not None


def shared_libraries(binary: Path) -> list:
    """The absolute paths `ldd` prints for binary (the loader included, vdso excluded)."""
    out = subprocess.run(["ldd", str(binary)], capture_output=True, text=True, check=True).stdout
    paths = []
    for line in out.splitlines():
        m = re.search(r"(/\S+)\s+\(0x", line)
        if m:
            paths.append(m.group(1))
    return paths


class _Layer:
    """A tar being written: directories added once, parents before children."""

    def __init__(self):
        self.buf = io.BytesIO()
        self.tar = tarfile.open(fileobj=self.buf, mode="w", format=tarfile.PAX_FORMAT)
        self.dirs = set()

    def _info(self, name, kind, mode, size=0, link=""):
        info = tarfile.TarInfo(name)
        info.type, info.mode, info.size, info.linkname = kind, mode, size, link
        info.uid = info.gid = 0
        info.mtime = 0
        return info

    def parents(self, name):
        parts = name.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            d = "/".join(parts[:i])
            if d not in self.dirs:
                self.dirs.add(d)
                self.tar.addfile(self._info(d, tarfile.DIRTYPE, 0o755))

    def file(self, name, data: bytes, mode=0o755):
        self.parents(name)
        self.tar.addfile(self._info(name, tarfile.REGTYPE, mode, len(data)), io.BytesIO(data))

    def symlink(self, name, target):
        self.parents(name)
        self.tar.addfile(self._info(name, tarfile.SYMTYPE, 0o777, link=target))

    def tree(self, host: Path, name: str):
        """Directories and regular files under host, at name."""
        self.parents(name + "/x")
        for root, dirs, files in os.walk(host):
            rel = os.path.relpath(root, host)
            base = name if rel == "." else f"{name}/{rel}"
            for d in sorted(dirs):
                self.parents(f"{base}/{d}/x")
            for f in sorted(files):
                p = Path(root) / f
                if p.is_file() and not p.is_symlink():
                    self.file(f"{base}/{f}", p.read_bytes(), p.stat().st_mode & 0o777)

    def bytes(self) -> bytes:
        self.tar.close()
        return self.buf.getvalue()


def tools_layer(path: Path, probe: Path, with_git: bool) -> Path:
    layer = _Layer()
    layer.file(PROBE, probe.read_bytes())
    if with_git:
        layer.file("usr/bin/git", GIT.read_bytes())
        for lib in shared_libraries(GIT):
            real = Path(lib).resolve()
            name = lib.lstrip("/")
            if real.name == Path(name).name:
                layer.file(name, real.read_bytes())
            else:   # libfoo.so.1 -> libfoo.so.1.2.3 next to it: both, as on the host
                layer.file(str(Path(name).parent / real.name), real.read_bytes())
                layer.symlink(name, real.name)
        for entry in sorted(GIT_CORE.iterdir()):
            if entry.is_symlink() and os.readlink(entry) == "git":
                layer.symlink(f"usr/lib/git-core/{entry.name}", "git")
        layer.symlink("usr/lib/git-core/git", "../../bin/git")
        if GIT_TEMPLATES.is_dir():
            layer.tree(GIT_TEMPLATES, "usr/share/git-core/templates")
    Path(path).write_bytes(layer.bytes())
    return path


def build_hostdir_image(directory: Path, with_git: bool = True) -> Path:
    """image.erofs in directory, built once: busybox layer + tools layer."""
    from vmm.guest.kernel import compile_static
    from vmm.images.rootfs import LayerSource, build_root_disk
    directory = Path(directory)
    image = directory / "image.erofs"
    if image.is_file():
        return image
    directory.mkdir(parents=True, exist_ok=True)
    probe = compile_static(GUEST / "fs_probe.c", directory / "fs_probe")
    base = busybox_layer(directory / "busybox-layer.tar")
    tools = tools_layer(directory / "tools-layer.tar", probe, with_git and have_git())
    tmp = directory / "image.erofs.tmp"
    build_root_disk([LayerSource(str(base), LAYER_TYPE), LayerSource(str(tools), LAYER_TYPE)],
                    str(tmp))
    tmp.rename(image)
    return image
