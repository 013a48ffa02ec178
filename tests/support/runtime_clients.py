"""What the vmm-runtime client tests and benchmarks share: the busybox image as a
`docker save` tarball (what `ctr image import` and `podman load` take, no registry), and
the runtime as the executable path a client is given."""
import sys
from pathlib import Path

from support.oci_fixtures import LAYER_MT, Image, Layer, sha256, write_docker_save
from support.sandbox_image import busybox_layer

ROOT = Path(__file__).resolve().parent.parent.parent


def busybox_archive(directory: Path, ref: str) -> Path:
    """directory/busybox.tar: the busybox test image, tagged ref."""
    raw = busybox_layer(directory / "layer.tar").read_bytes()
    path = directory / "busybox.tar"
    write_docker_save(path, Image(layers=[Layer(raw, sha256(raw), LAYER_MT["none"])],
                                  cmd=["/bin/sh"]), ref)
    return path


def runtime_executable(directory: Path, engine: str) -> Path:
    """directory/vmm-runtime: this checkout's runtime on the given engine, as a program."""
    path = directory / "vmm-runtime"
    path.write_text(f"#!/bin/sh\nPYTHONPATH={ROOT} VMM_RUNTIME_ENGINE={engine} "
                    f"exec {sys.executable} -m vmm.runtime \"$@\"\n")
    path.chmod(0o755)
    return path
