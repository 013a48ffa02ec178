import json

import pytest

from vmm.images import manifest as mf
from vmm.images.config import parse_config
from vmm.images.errors import HostileImage, ImageTooLarge, PlatformNotFound, RegistryError
from vmm.images.limits import Limits

D = "sha256:" + "b" * 64


def desc(platform=None, mt=mf.OCI_MANIFEST):
    d = {"mediaType": mt, "digest": D, "size": 10}
    if platform:
        os_, arch, *variant = platform.split("/")
        d["platform"] = {"os": os_, "architecture": arch, **({"variant": variant[0]} if variant else {})}
    return d


def test_platform_selection_and_error_lists_platforms():
    entries = mf.parse_index({"manifests": [desc("linux/amd64"), desc("linux/arm64/v8"),
                                            desc("unknown/unknown")]}, Limits())
    assert mf.select_platform(entries, mf.parse_platform("linux/arm64"), "x").platform.architecture == "arm64"
    assert mf.select_platform(entries, mf.parse_platform("linux/arm64/v8"), "x")
    assert mf.select_platform(entries, mf.parse_platform("amd64"), "x").platform.architecture == "amd64"
    with pytest.raises(PlatformNotFound) as e:
        mf.select_platform(entries, mf.parse_platform("linux/s390x"), "img:1")
    assert "linux/s390x" in str(e.value) and "linux/amd64, linux/arm64/v8" in str(e.value)
    assert "unknown" not in str(e.value)


def test_depth_and_size_limits():
    deep = b"[" * 10000 + b"]" * 10000
    with pytest.raises((HostileImage, RegistryError)):
        mf.load_json(b'{"a":' + deep + b"}", 1 << 20, 32, "m")
    nested = b'{"a":' + b'[' * 40 + b']' * 40 + b'}'
    with pytest.raises(HostileImage, match="deeper than 32"):
        mf.load_json(nested, 1 << 20, 32, "m")
    with pytest.raises(ImageTooLarge):
        mf.load_json(b"{}" + b" " * 100, 50, 32, "m")
    with pytest.raises(RegistryError, match="not a JSON object"):
        mf.load_json(b"[1]", 100, 32, "m")


def test_layer_count_and_types():
    layer = {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": D, "size": 1}
    doc = {"config": {"mediaType": mf.OCI_CONFIG, "digest": D, "size": 2}, "layers": [layer] * 300}
    with pytest.raises(ImageTooLarge, match="300 layers"):
        mf.parse_manifest(doc, mf.OCI_MANIFEST, Limits())
    doc["layers"] = [dict(layer, mediaType="application/vnd.docker.image.rootfs.foreign.diff.tar.gzip")]
    with pytest.raises(RegistryError, match="unsupported media type"):
        mf.parse_manifest(doc, mf.OCI_MANIFEST, Limits())
    doc["layers"] = [dict(layer, digest="sha256:../../etc/passwd")]
    with pytest.raises(RegistryError, match="bad digest"):
        mf.parse_manifest(doc, mf.OCI_MANIFEST, Limits())
    doc["layers"] = [dict(layer, size=-1)]
    with pytest.raises(RegistryError, match="bad size"):
        mf.parse_manifest(doc, mf.OCI_MANIFEST, Limits())
    doc["layers"] = [dict(layer, size=1 << 40)]
    with pytest.raises(ImageTooLarge):
        mf.parse_manifest(doc, mf.OCI_MANIFEST, Limits(image_bytes=1 << 30))


def test_kind_and_schema1():
    assert mf.kind(mf.DOCKER_LIST, {}) == "index"
    assert mf.kind("application/json", {"manifests": []}) == "index"
    assert mf.kind("", {"mediaType": mf.DOCKER_MANIFEST}) == "manifest"
    with pytest.raises(RegistryError, match="schema 1"):
        mf.kind("application/vnd.docker.distribution.manifest.v1+prettyjws", {})


def test_config_fields_and_hostile_types():
    cfg = parse_config({"os": "linux", "architecture": "amd64", "config": {
        "Entrypoint": ["/bin/tini", "--"], "Cmd": ["node"], "Env": ["A=1"], "WorkingDir": "/app",
        "User": "1000:1000", "ExposedPorts": {"80/tcp": {}}, "Labels": {"k": "v", "bad": 1},
        "StopSignal": "SIGQUIT"}})
    assert cfg.entrypoint == ["/bin/tini", "--"] and cfg.cmd == ["node"] and cfg.env == ["A=1"]
    assert cfg.working_dir == "/app" and cfg.user == "1000:1000" and cfg.stop_signal == "SIGQUIT"
    assert cfg.exposed_ports == ["80/tcp"] and cfg.labels == {"k": "v"}
    bad = parse_config({"config": {"Cmd": {"x": 1}, "Env": "A=1", "Labels": [1], "User": 5}})
    assert bad.cmd is None and bad.env == [] and bad.labels == {} and bad.user is None
    assert parse_config(json.loads('{"config": null}')).cmd is None
