"""A small sandbox image for tests and benchmarks: Debian's busybox-static as an OCI-style
layer tar, turned into an EROFS root disk by the project's own image code
(vmm.images.rootfs.build_root_disk), as a pulled image would be.

    image = build_busybox_image(tmp_dir)   # -> Path of image.erofs (reused if present)
"""
import io
import subprocess
import tarfile
from pathlib import Path

BUSYBOX = Path("/bin/busybox")
PASSWD = (b"root:x:0:0:root:/root:/bin/sh\n"
          b"nobody:x:65534:65534:nobody:/home/nobody:/bin/sh\n")
GROUP = b"root:x:0:\nnogroup:x:65534:\n"
MARKER = b"from the image\n"


def have_busybox() -> bool:
    return BUSYBOX.is_file()


def _add_dir(t: tarfile.TarFile, name: str, mode: int = 0o755) -> None:
    ti = tarfile.TarInfo(name)
    ti.type, ti.mode = tarfile.DIRTYPE, mode
    t.addfile(ti)


def _add_file(t: tarfile.TarFile, name: str, data: bytes, mode: int = 0o644) -> None:
    ti = tarfile.TarInfo(name)
    ti.size, ti.mode = len(data), mode
    t.addfile(ti, io.BytesIO(data))


def busybox_layer(path: Path) -> Path:
    """A layer tar: /bin/busybox, a symlink per applet, /etc/passwd and /etc/group."""
    applets = subprocess.run([str(BUSYBOX), "--list"], capture_output=True, text=True,
                             check=True).stdout.split()
    with tarfile.open(path, "w") as t:
        for d in ("bin", "etc", "root", "proc", "sys", "dev", "home", "home/nobody"):
            _add_dir(t, d)
        _add_dir(t, "tmp", 0o1777)
        t.add(str(BUSYBOX), "bin/busybox")
        for applet in applets:
            if applet != "busybox":
                ti = tarfile.TarInfo("bin/" + applet)
                ti.type, ti.linkname = tarfile.SYMTYPE, "busybox"
                t.addfile(ti)
        _add_file(t, "etc/passwd", PASSWD)
        _add_file(t, "etc/group", GROUP)
        _add_file(t, "etc/image-marker", MARKER)
        _add_file(t, "etc/not-executable.sh", b"#!/bin/sh\necho should not run\n", 0o644)
    return path


def build_busybox_image(directory: Path) -> Path:
    """image.erofs in directory, built once."""
    from vmm.images.rootfs import LayerSource, build_root_disk
    directory = Path(directory)
    image = directory / "image.erofs"
    if image.is_file():
        return image
    directory.mkdir(parents=True, exist_ok=True)
    layer = busybox_layer(directory / "busybox-layer.tar")
    tmp = directory / "image.erofs.tmp"
    build_root_disk([LayerSource(str(layer), "application/vnd.oci.image.layer.v1.tar")], str(tmp))
    tmp.rename(image)
    return image
