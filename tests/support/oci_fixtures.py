"""Build OCI image layouts in Python for the image tests (tarfile + json, no tools).

    layer = make_layer([File("etc/hello", b"hi"), Dir("var/x")], "gzip")
    write_layout(tmp / "layout", [Image(layers=[layer], cmd=["/bin/sh"])])
"""
import gzip
import hashlib
import io
import json
import os
import tarfile
from dataclasses import dataclass, field
from typing import Optional

import zstandard

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
LAYER_MT = {"none": "application/vnd.oci.image.layer.v1.tar",
            "gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
            "zstd": "application/vnd.oci.image.layer.v1.tar+zstd"}


@dataclass
class Entry:
    name: str
    data: bytes = b""
    kind: str = "file"        # file | dir | symlink | hardlink
    target: str = ""
    mode: int = 0o644
    uid: int = 0
    gid: int = 0


def File(name, data, mode=0o644, uid=0):
    return Entry(name, data, "file", mode=mode, uid=uid)


def Dir(name, mode=0o755):
    return Entry(name, kind="dir", mode=mode)


def Symlink(name, target):
    return Entry(name, kind="symlink", target=target, mode=0o777)


@dataclass
class Layer:
    blob: bytes
    diff_id: str
    media_type: str

    @property
    def digest(self):
        return sha256(self.blob)


def sha256(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def tar_bytes(entries):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for e in entries:
            info = tarfile.TarInfo(e.name)
            info.mode, info.uid, info.gid, info.mtime = e.mode, e.uid, e.gid, 1700000000
            if e.kind == "dir":
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif e.kind == "symlink":
                info.type, info.linkname = tarfile.SYMTYPE, e.target
                tar.addfile(info)
            elif e.kind == "hardlink":
                info.type, info.linkname = tarfile.LNKTYPE, e.target
                tar.addfile(info)
            else:
                info.size = len(e.data)
                tar.addfile(info, io.BytesIO(e.data))
    return buf.getvalue()


def compress(data, compression):
    if compression == "gzip":
        return gzip.compress(data, compresslevel=1, mtime=0)
    if compression == "zstd":
        return zstandard.ZstdCompressor(level=1).compress(data)
    return data


def make_layer(entries, compression="gzip"):
    raw = tar_bytes(entries)
    return Layer(compress(raw, compression), sha256(raw), LAYER_MT[compression])


@dataclass
class Image:
    layers: list
    os: str = "linux"
    architecture: str = "amd64"
    variant: Optional[str] = None
    cmd: Optional[list] = None
    entrypoint: Optional[list] = None
    env: list = field(default_factory=lambda: ["PATH=/usr/bin:/bin"])
    working_dir: str = ""
    user: str = ""
    labels: dict = field(default_factory=dict)
    exposed_ports: dict = field(default_factory=dict)
    stop_signal: str = ""

    def config_bytes(self):
        cfg = {"Env": self.env}
        for key, value in (("Cmd", self.cmd), ("Entrypoint", self.entrypoint),
                           ("WorkingDir", self.working_dir), ("User", self.user),
                           ("Labels", self.labels), ("ExposedPorts", self.exposed_ports),
                           ("StopSignal", self.stop_signal)):
            if value:
                cfg[key] = value
        doc = {"created": "2024-01-02T03:04:05Z", "architecture": self.architecture, "os": self.os,
               "config": cfg, "rootfs": {"type": "layers", "diff_ids": [l.diff_id for l in self.layers]}}
        if self.variant:
            doc["variant"] = self.variant
        return json.dumps(doc, sort_keys=True).encode()

    def platform(self):
        p = {"os": self.os, "architecture": self.architecture}
        if self.variant:
            p["variant"] = self.variant
        return p


def _put(root, data):
    digest = sha256(data)
    path = os.path.join(root, "blobs", "sha256", digest[7:])
    with open(path, "wb") as f:
        f.write(data)
    return {"digest": digest, "size": len(data)}


def manifest_bytes(root, image):
    config = image.config_bytes()
    doc = {"schemaVersion": 2, "mediaType": OCI_MANIFEST,
           "config": {"mediaType": OCI_CONFIG, **_put(root, config)},
           "layers": [{"mediaType": l.media_type, **_put(root, l.blob)} for l in image.layers]}
    return json.dumps(doc, sort_keys=True).encode()


def write_layout(root, images, ref_name="latest"):
    """Write an OCI layout; several images become one multi-platform index."""
    root = str(root)
    os.makedirs(os.path.join(root, "blobs", "sha256"), exist_ok=True)
    with open(os.path.join(root, "oci-layout"), "w") as f:
        json.dump({"imageLayoutVersion": "1.0.0"}, f)
    descs = []
    for image in images:
        body = manifest_bytes(root, image)
        descs.append({"mediaType": OCI_MANIFEST, **_put(root, body), "platform": image.platform()})
    if len(images) == 1:
        top = dict(descs[0])
    else:
        index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": descs},
                           sort_keys=True).encode()
        top = {"mediaType": OCI_INDEX, **_put(root, index)}
    top["annotations"] = {"org.opencontainers.image.ref.name": ref_name}
    with open(os.path.join(root, "index.json"), "w") as f:
        json.dump({"schemaVersion": 2, "manifests": [top]}, f)
    return top["digest"]


def write_docker_save(path, image, repo_tag):
    """A legacy `docker save` tarball: manifest.json + <id>/layer.tar (uncompressed)."""
    config = image.config_bytes()
    config_name = sha256(config)[7:] + ".json"
    files = {config_name: config}
    layer_names = []
    for i, layer in enumerate(image.layers):
        raw = layer.blob if layer.media_type.endswith(".tar") else _decompress(layer)
        name = f"{i:064x}/layer.tar"
        files[name] = raw
        layer_names.append(name)
    files["manifest.json"] = json.dumps([{"Config": config_name, "RepoTags": [repo_tag],
                                          "Layers": layer_names}]).encode()
    with tarfile.open(path, "w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def _decompress(layer):
    if layer.media_type.endswith("gzip"):
        return gzip.decompress(layer.blob)
    return zstandard.ZstdDecompressor().decompress(layer.blob, max_output_size=1 << 30)
