"""Importing OCI layout directories and `docker save` tarballs, including hostile ones."""
import io
import json
import os
import tarfile

import pytest

import vmm.images as images
from vmm.images.errors import BadReference, DigestMismatch, HostileImage, ImageError, PlatformNotFound
from vmm.images.paths import StorePaths

from support.oci_fixtures import Dir, File, Image, make_layer, write_docker_save, write_layout

pytestmark = pytest.mark.usefixtures("msb_home")


def sample(seed=b""):
    return Image([make_layer([Dir("etc"), File("etc/x", b"x" + seed)], "gzip"),
                  make_layer([File("bin/y", b"y" + seed, 0o755)], "zstd"),
                  make_layer([File("z", b"z" + seed)], "none")],
                 cmd=["/bin/y"], env=["K=V"], user="1000")


def test_import_layout(tmp_path, msb_home):
    img = sample()
    write_layout(tmp_path / "l", [img])
    info = images.import_layout(tmp_path / "l", "local/tool:1")
    assert info["reference"] == "docker.io/local/tool:1"
    assert info["config"]["cmd"] == ["/bin/y"] and info["config"]["user"] == "1000"
    assert [l["digest"] for l in info["layers"]] == [l.digest for l in img.layers]
    assert info["source"].startswith("oci-layout:")
    for l in img.layers:
        assert StorePaths(msb_home).blob(l.digest).read_bytes() == l.blob
    # The layout's own ref.name annotation names it when no name is given.
    write_layout(tmp_path / "named", [sample(b"2")], ref_name="localhost:5000/named:2")
    assert images.import_layout(tmp_path / "named")["reference"] == "localhost:5000/named:2"


def test_import_multi_platform_layout(tmp_path):
    arm = Image([make_layer([File("arch", b"arm")], "gzip")], architecture="arm64", variant="v8")
    write_layout(tmp_path / "l", [sample(), arm])
    assert images.import_layout(tmp_path / "l", "multi:1")["architecture"] == "amd64"
    assert images.import_layout(tmp_path / "l", "multi:arm", platform="linux/arm64")["layer_count"] == 1
    with pytest.raises(PlatformNotFound, match="linux/amd64, linux/arm64/v8"):
        images.import_layout(tmp_path / "l", "multi:x", platform="linux/ppc64le")


def test_layout_with_tampered_blob(tmp_path, msb_home):
    img = sample()
    write_layout(tmp_path / "l", [img])
    blob = tmp_path / "l" / "blobs" / "sha256" / img.layers[0].digest[7:]
    data = blob.read_bytes()
    blob.write_bytes(data[:-1] + bytes([data[-1] ^ 0xFF]))
    with pytest.raises(DigestMismatch):
        images.import_layout(tmp_path / "l", "bad:1")
    assert images.list() == []
    assert img.layers[0].digest[7:] not in os.listdir(StorePaths(msb_home).blobs / "sha256")


def test_layout_blob_symlink_is_refused(tmp_path):
    img = sample()
    write_layout(tmp_path / "l", [img])
    blob = tmp_path / "l" / "blobs" / "sha256" / img.layers[1].digest[7:]
    outside = tmp_path / "outside"
    outside.write_bytes(blob.read_bytes())
    blob.unlink()
    blob.symlink_to(outside)
    with pytest.raises(HostileImage, match="cannot open"):
        images.import_layout(tmp_path / "l", "sym:1")


def test_layout_with_traversal_digest(tmp_path):
    write_layout(tmp_path / "l", [sample()])
    index = json.loads((tmp_path / "l" / "index.json").read_text())
    index["manifests"][0]["digest"] = "sha256:../../../../etc/passwd"
    (tmp_path / "l" / "index.json").write_text(json.dumps(index))
    with pytest.raises(ImageError, match="bad digest"):
        images.import_layout(tmp_path / "l", "trav:1")


def test_not_a_layout(tmp_path):
    with pytest.raises(ImageError, match="not an OCI image layout"):
        images.import_layout(tmp_path, "x:1")
    with pytest.raises(ImageError, match="not a directory"):
        images.import_layout(tmp_path / "missing", "x:1")


def test_import_docker_save(tmp_path):
    img = sample()
    write_docker_save(tmp_path / "img.tar", img, "example/app:3")
    info = images.import_archive(tmp_path / "img.tar")
    assert info["reference"] == "docker.io/example/app:3"
    assert info["layer_count"] == 3 and info["config"]["env"] == ["K=V"]
    # docker save stores layers uncompressed: their digests are the config's diff_ids.
    assert [l["digest"] for l in info["layers"]] == [l.diff_id for l in img.layers]
    assert all(l["media_type"] == "application/vnd.oci.image.layer.v1.tar" for l in info["layers"])
    renamed = images.import_archive(tmp_path / "img.tar", "other:1")
    assert renamed["digest"] == info["digest"] and renamed["reference"] == "docker.io/library/other:1"


def test_import_oci_layout_archive(tmp_path):
    img = sample()
    write_layout(tmp_path / "l", [img])
    with tarfile.open(tmp_path / "oci.tar", "w") as tar:
        for name in ("oci-layout", "index.json", "blobs"):
            tar.add(tmp_path / "l" / name, arcname=name)
    info = images.import_archive(tmp_path / "oci.tar", "fromtar:1")
    assert [l["digest"] for l in info["layers"]] == [l.digest for l in img.layers]


def test_docker_save_with_wrong_diff_id(tmp_path):
    img = sample()
    write_docker_save(tmp_path / "img.tar", img, "example/app:3")
    # Re-pack with a layer that does not match the config's diff_ids.
    with tarfile.open(tmp_path / "img.tar") as src, tarfile.open(tmp_path / "bad.tar", "w") as dst:
        for m in src.getmembers():
            data = src.extractfile(m).read()
            if m.name.endswith("layer.tar") and m.name.startswith("0" * 63 + "1"):
                data = data[:-1] + b"\1"
            m.size = len(data)
            dst.addfile(m, io.BytesIO(data))
    with pytest.raises(DigestMismatch, match="config says"):
        images.import_archive(tmp_path / "bad.tar")
    assert images.list() == []


def test_docker_save_hostile_members(tmp_path):
    config = b'{"os":"linux","architecture":"amd64","rootfs":{"diff_ids":[]}}'
    manifest = json.dumps([{"Config": "c.json", "RepoTags": ["h:1"], "Layers": ["../../etc/passwd"]}]).encode()
    with tarfile.open(tmp_path / "h.tar", "w") as tar:
        for name, data in (("manifest.json", manifest), ("c.json", config)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("loop/layer.tar")
        link.type, link.linkname = tarfile.SYMTYPE, "../loop/layer.tar"
        tar.addfile(link)
    with pytest.raises(ImageError, match="has no"):
        images.import_archive(tmp_path / "h.tar")
    manifest = json.dumps([{"Config": "c.json", "RepoTags": ["h:1"], "Layers": ["loop/layer.tar"]}]).encode()
    with tarfile.open(tmp_path / "h2.tar", "w") as tar:
        for name, data in (("manifest.json", manifest), ("c.json", config)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        tar.addfile(link)
    with pytest.raises(HostileImage):
        images.import_archive(tmp_path / "h2.tar")
    assert images.list() == []


def test_archive_without_name(tmp_path):
    img = sample()
    write_docker_save(tmp_path / "img.tar", img, "x:1")
    with tarfile.open(tmp_path / "img.tar") as src, tarfile.open(tmp_path / "noname.tar", "w") as dst:
        for m in src.getmembers():
            data = src.extractfile(m).read()
            if m.name == "manifest.json":
                doc = json.loads(data)
                doc[0]["RepoTags"] = None
                data = json.dumps(doc).encode()
                m.size = len(data)
            dst.addfile(m, io.BytesIO(data))
    with pytest.raises(BadReference, match="no name given"):
        images.import_archive(tmp_path / "noname.tar")
    with pytest.raises(ImageError, match="not a readable tar"):
        (tmp_path / "junk.tar").write_bytes(b"\x1f\x8b" + os.urandom(100))
        images.import_archive(tmp_path / "junk.tar")
