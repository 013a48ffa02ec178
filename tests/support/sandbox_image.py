"""A small sandbox image for tests and benchmarks: the product's default image layer
(vmm.images.default_image.layer_tar: Debian's busybox-static with its applet links and
/etc files) plus two test files, turned into an EROFS root disk by the project's own image
code (vmm.images.rootfs.build_root_disk), as a pulled image would be.

    image = build_busybox_image(tmp_dir)   # -> Path of image.erofs (reused if present)
"""
from pathlib import Path

from vmm.images.default_image import BUSYBOX, layer_tar

MARKER = b"from the image\n"
TEST_FILES = [("etc/image-marker", MARKER, 0o644),
              ("etc/not-executable.sh", b"#!/bin/sh\necho should not run\n", 0o644)]


def have_busybox() -> bool:
    return BUSYBOX.is_file()


def busybox_layer(path: Path) -> Path:
    """The default image's layer tar with the test files, written to path."""
    Path(path).write_bytes(layer_tar(BUSYBOX, extra_files=TEST_FILES))
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
