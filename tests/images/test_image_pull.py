"""Pulls from a real registry (Debian's docker-registry), directly or through a proxy that
demands tokens, counts requests, or misbehaves."""
import hashlib
import json
import os
import subprocess
import sys
import textwrap

import pytest

import vmm.images as images
from vmm.images.errors import AuthError, DigestMismatch, ImageInUse, ImageNotFound, PlatformNotFound, RegistryError
from vmm.images.paths import StorePaths

from support.regserver import write_docker_config
from support.oci_fixtures import Dir, File, Image, Symlink, make_layer, write_layout

pytestmark = pytest.mark.usefixtures("msb_home")


def three_layer_image(seed=b"", **kw):
    l1 = make_layer([Dir("etc"), File("etc/os-release", b"ID=test\n" + seed)], "gzip")
    l2 = make_layer([Dir("usr"), Dir("usr/bin"), File("usr/bin/tool", os.urandom(200_000) + seed, 0o755),
                     Symlink("usr/bin/t", "tool")], "zstd")
    l3 = make_layer([File("README", b"plain layer" + seed)], "none")
    return Image([l1, l2, l3], cmd=["/usr/bin/tool"], entrypoint=["/bin/sh", "-c"], env=["A=1", "PATH=/bin"],
                 working_dir="/work", user="1000:1000", labels={"org.example": "yes"},
                 exposed_ports={"8080/tcp": {}}, stop_signal="SIGINT", **kw)


@pytest.fixture(scope="module")
def pushed(registry, tmp_path_factory):
    """test/app:1 (one platform, gzip+zstd+plain) and test/multi:1 (amd64, arm64/v8)."""
    root = tmp_path_factory.mktemp("layouts")
    app = three_layer_image()
    write_layout(root / "app", [app])
    registry.push(root / "app", "test/app:1")
    registry.push(root / "app", "test/app:also")
    arm = Image([make_layer([File("arch", b"arm64")], "gzip")], architecture="arm64", variant="v8")
    write_layout(root / "multi", [three_layer_image(b"m"), arm])
    registry.push(root / "multi", "test/multi:1", all_platforms=True)
    # Docker schema 2 has no zstd or plain-tar layer types: a gzip-only image for it.
    docker = Image([make_layer([File("a", b"1")], "gzip"), make_layer([File("b", b"2")], "gzip")],
                   cmd=["/usr/bin/tool"])
    write_layout(root / "docker", [docker])
    registry.push(root / "docker", "test/docker:1", fmt="v2s2")
    big = Image([make_layer([File("big", os.urandom(3 << 20))], "none")])
    write_layout(root / "big", [big])
    registry.push(root / "big", "test/big:1")
    return {"app": app, "root": root, "big": big}


def blob_files(home):
    paths = StorePaths(home)
    return sorted(p.name for p in (paths.blobs / "sha256").iterdir())


def test_pull_by_tag_verifies_and_exposes_config(registry, pushed, msb_home):
    info = images.pull(f"{registry.host}/test/app:1", insecure=True, progress=False)
    assert info["reference"] == f"{registry.host}/test/app:1" and not info["cached"]
    assert info["layer_count"] == 3 and info["os"] == "linux" and info["architecture"] == "amd64"
    assert [l["media_type"].rsplit(".", 1)[-1] for l in info["layers"]] == ["tar+gzip", "tar+zstd", "tar"]
    cfg = info["config"]
    assert cfg["entrypoint"] == ["/bin/sh", "-c"] and cfg["cmd"] == ["/usr/bin/tool"]
    assert cfg["env"] == ["A=1", "PATH=/bin"] and cfg["working_dir"] == "/work" and cfg["user"] == "1000:1000"
    assert cfg["labels"] == {"org.example": "yes"} and cfg["exposed_ports"] == ["8080/tcp"]
    assert cfg["stop_signal"] == "SIGINT"
    app = pushed["app"]
    for layer, stored in zip(app.layers, info["layers"]):
        assert stored["digest"] == layer.digest
        assert (StorePaths(msb_home).blob(layer.digest)).read_bytes() == layer.blob
    assert images.inspect(f"{registry.host}/test/app:1")["digest"] == info["digest"]
    again = images.pull(f"{registry.host}/test/app:1", insecure=True, progress=False)
    assert again["cached"] and again["digest"] == info["digest"]


def test_pull_by_digest_and_docker_v2_manifest(registry, pushed):
    first = images.pull(f"{registry.host}/test/app:1", insecure=True, progress=False)
    by_digest = images.pull(f"{registry.host}/test/app@{first['digest']}", insecure=True, progress=False)
    assert by_digest["digest"] == first["digest"]
    docker = images.pull(f"{registry.host}/test/docker:1", insecure=True, progress=False)
    assert docker["media_type"] == "application/vnd.docker.distribution.manifest.v2+json"
    assert docker["config"]["cmd"] == ["/usr/bin/tool"]
    assert [l["media_type"] for l in docker["layers"]] == ["application/vnd.docker.image.rootfs.diff.tar.gzip"] * 2


def test_wrong_digest_in_reference_is_refused(registry, pushed):
    with pytest.raises(ImageNotFound):
        images.pull(f"{registry.host}/test/app@sha256:{'0' * 64}", insecure=True, progress=False)


def test_platform_selection(registry, pushed):
    amd = images.pull(f"{registry.host}/test/multi:1", insecure=True, progress=False)
    assert amd["architecture"] == "amd64" and amd["index_digest"] and amd["layer_count"] == 3
    arm = images.pull(f"{registry.host}/test/multi:1", insecure=True, platform="linux/arm64", progress=False)
    assert arm["architecture"] == "arm64" and arm["variant"] == "v8" and arm["layer_count"] == 1
    with pytest.raises(PlatformNotFound) as e:
        images.pull(f"{registry.host}/test/multi:1", insecure=True, platform="linux/riscv64", progress=False)
    assert "linux/riscv64" in str(e.value) and "linux/amd64, linux/arm64/v8" in str(e.value)
    with pytest.raises(PlatformNotFound, match="available: linux/amd64"):
        images.pull(f"{registry.host}/test/app:1", insecure=True, platform="linux/arm64", progress=False)


def test_missing_repo_and_tag(registry, pushed):
    with pytest.raises(ImageNotFound, match="not found"):
        images.pull(f"{registry.host}/test/nope:1", insecure=True, progress=False)
    with pytest.raises(ImageNotFound):
        images.pull(f"{registry.host}/test/app:nope", insecure=True, progress=False)


def test_lying_registry_digest_mismatch_keeps_nothing(proxy, pushed, msb_home):
    layer = pushed["app"].layers[1]
    proxy.corrupt.add(layer.digest)
    with pytest.raises(DigestMismatch, match=layer.digest):
        images.pull(f"{proxy.host}/test/app:1", insecure=True, progress=False)
    paths = StorePaths(msb_home)
    assert layer.digest[7:] not in blob_files(msb_home)
    assert not list(paths.tmp.iterdir())
    assert images.list() == []


def registry_manifest(host, repo, target):
    """(content type, bytes) of a manifest exactly as the registry serves it."""
    import http.client
    from vmm.images.registry import ACCEPT
    conn = http.client.HTTPConnection(host, timeout=10)
    conn.request("GET", f"/v2/{repo}/manifests/{target}", headers={"Accept": ACCEPT})
    resp = conn.getresponse()
    body = resp.read()
    conn.close()
    assert resp.status == 200, body
    return resp.getheader("Content-Type"), body


def reserialised(body):
    """The same manifest, other bytes: a registry that answers this for a digest lies."""
    doc = json.loads(body)
    doc.setdefault("annotations", {})["org.example.swapped"] = "yes"
    return json.dumps(doc, indent=1).encode()


def test_lying_registry_manifest_bytes_refused(registry, proxy, pushed, msb_home):
    """Pull by digest: the registry answers a manifest with other bytes (valid JSON naming
    blobs it has, so only the byte check can notice). Nothing may be stored."""
    ctype, body = registry_manifest(registry.host, "test/app", "1")
    digest = "sha256:" + hashlib.sha256(body).hexdigest()
    proxy.manifests[digest] = (ctype, reserialised(body))
    with pytest.raises(DigestMismatch, match=f"should be {digest}"):
        images.pull(f"{proxy.host}/test/app@{digest}", insecure=True, progress=False)
    assert images.list() == []
    # The same pull through an honest proxy works: the refusal was the byte check's.
    proxy.manifests.clear()
    assert images.pull(f"{proxy.host}/test/app@{digest}", insecure=True,
                       progress=False)["digest"] == digest


def test_lying_registry_platform_manifest_refused(registry, proxy, pushed, msb_home):
    """Pull through an index: the platform manifest the index names by digest comes back
    with other bytes."""
    _, index = registry_manifest(registry.host, "test/multi", "1")
    entry = next(m for m in json.loads(index)["manifests"]
                 if m["platform"]["architecture"] == "amd64")
    ctype, body = registry_manifest(registry.host, "test/multi", entry["digest"])
    proxy.manifests[entry["digest"]] = (ctype, reserialised(body))
    with pytest.raises(DigestMismatch, match=entry["digest"]):
        images.pull(f"{proxy.host}/test/multi:1", insecure=True, platform="linux/amd64",
                    progress=False)
    assert images.list() == []


def test_corrupt_registry_storage(own_registry, tmp_path, msb_home):
    image = three_layer_image(b"own")
    write_layout(tmp_path / "l", [image])
    own_registry.push(tmp_path / "l", "x/y:1")
    data = own_registry.blob_file(image.layers[0].digest)
    raw = bytearray(data.read_bytes())
    raw[10] ^= 1
    data.write_bytes(bytes(raw))
    with pytest.raises(DigestMismatch):
        images.pull(f"{own_registry.host}/x/y:1", insecure=True, progress=False)
    assert images.list() == []
    # Truncated blob in the registry: the body ends early; refused, nothing visible.
    data.write_bytes(bytes(raw[: len(raw) // 2]))
    with pytest.raises(RegistryError, match="shorter|ended"):
        images.pull(f"{own_registry.host}/x/y:1", insecure=True, progress=False)
    assert images.list() == [] and image.layers[0].digest[7:] not in blob_files(msb_home)


def test_interrupted_pull_then_resume(proxy, pushed, msb_home, monkeypatch):
    monkeypatch.setenv("MSB_REGISTRY_RETRIES", "1")
    layer = pushed["app"].layers[1]          # the 200 KB zstd layer
    proxy.cut = {layer.digest: 50_000}
    proxy.cut_times = 1
    with pytest.raises(RegistryError, match="50000"):
        images.pull(f"{proxy.host}/test/app:1", insecure=True, progress=False)
    paths = StorePaths(msb_home)
    assert images.list() == []
    assert layer.digest[7:] not in blob_files(msb_home)
    partial = paths.partial(layer.digest)
    assert partial.stat().st_size == 50_000
    info = images.pull(f"{proxy.host}/test/app:1", insecure=True, progress=False)
    assert info["layer_count"] == 3
    ranges = [r[2] for r in proxy.blob_gets(layer.digest)]
    assert ranges[-1] == "bytes=50000-"
    assert paths.blob(layer.digest).read_bytes() == layer.blob
    assert not partial.exists()


def test_transient_errors_are_retried(proxy, pushed, monkeypatch):
    monkeypatch.setenv("MSB_REGISTRY_RETRIES", "4")
    monkeypatch.setenv("MSB_PULL_PARALLEL", "1")
    proxy.fail_next = 2
    info = images.pull(f"{proxy.host}/test/app:1", insecure=True, progress=False)
    assert info["layer_count"] == 3
    assert sum(1 for r in proxy.requests if r[3] == 503) == 2
    monkeypatch.setenv("MSB_REGISTRY_RETRIES", "2")
    proxy.fail_next = 10
    with pytest.raises(RegistryError, match="503"):
        images.pull(f"{proxy.host}/test/app:1", insecure=True, progress=False, force=True)


def test_bearer_token_flow(proxy, pushed, tmp_path):
    proxy.token_auth = True
    info = images.pull(f"{proxy.host}/test/app:1", insecure=True, progress=False)
    assert info["layer_count"] == 3
    # One token for the repository scope serves the manifest and all blobs.
    assert proxy.token_requests == 1
    assert all(r[3] in (200, 206) for r in proxy.requests)


def test_bearer_token_with_credentials(proxy, pushed, tmp_path, monkeypatch):
    proxy.token_auth = True
    proxy.users = {"bob": "hunter2"}
    with pytest.raises(AuthError, match="anonymous"):
        images.pull(f"{proxy.host}/test/app:1", insecure=True, progress=False)
    write_docker_config(tmp_path / "docker-config", proxy.host, "bob", "wrong")
    with pytest.raises(AuthError, match="stored credentials"):
        images.pull(f"{proxy.host}/test/app:1", insecure=True, progress=False)
    write_docker_config(tmp_path / "docker-config", proxy.host, "bob", "hunter2", style="plain")
    assert images.pull(f"{proxy.host}/test/app:1", insecure=True, progress=False)["layer_count"] == 3


def test_basic_auth_registry(auth_registry, tmp_path):
    image = three_layer_image(b"auth")
    write_layout(tmp_path / "l", [image])
    auth_registry.push(tmp_path / "l", "private/app:1")
    ref = f"{auth_registry.host}/private/app:1"
    with pytest.raises(AuthError, match="needs a login"):
        images.pull(ref, insecure=True, progress=False)
    write_docker_config(tmp_path / "docker-config", auth_registry.host, "alice", "nope")
    with pytest.raises(AuthError):
        images.pull(ref, insecure=True, progress=False)
    write_docker_config(tmp_path / "docker-config", auth_registry.host, "alice", "s3cret")
    assert images.pull(ref, insecure=True, progress=False)["layer_count"] == 3


def test_remove_image_shared_by_two_refs(registry, pushed, msb_home):
    a = images.pull(f"{registry.host}/test/app:1", insecure=True, progress=False)
    b = images.pull(f"{registry.host}/test/app:also", insecure=True, progress=False)
    assert a["digest"] == b["digest"]
    before = blob_files(msb_home)
    assert len(before) == 4          # config + 3 layers
    with pytest.raises(ImageInUse, match="test/app:1.*test/app:also|test/app:also.*test/app:1"):
        images.remove(a["digest"][:19])
    assert images.remove(f"{registry.host}/test/app:1") == [f"{registry.host}/test/app:1"]
    assert blob_files(msb_home) == before
    assert [i["reference"] for i in images.list()] == [f"{registry.host}/test/app:also"]
    images.remove(f"{registry.host}/test/app:also")
    assert blob_files(msb_home) == [] and images.list() == []
    with pytest.raises(ImageNotFound):
        images.remove(f"{registry.host}/test/app:also")


def test_remove_by_digest_force_and_shared_layers(registry, pushed, msb_home):
    a = images.pull(f"{registry.host}/test/app:1", insecure=True, progress=False)
    images.pull(f"{registry.host}/test/app:also", insecure=True, progress=False)
    multi = images.pull(f"{registry.host}/test/multi:1", insecure=True, progress=False)
    removed = images.remove(a["digest"], force=True)
    assert len(removed) == 2
    # The multi image's own blobs are untouched.
    for layer in multi["layers"]:
        assert StorePaths(msb_home).blob(layer["digest"]).exists()
    assert [i["reference"] for i in images.list()] == [f"{registry.host}/test/multi:1"]


PULL_SCRIPT = textwrap.dedent("""
    import sys, vmm.images as images
    info = images.pull(sys.argv[1], insecure=True, progress=False)
    print(info["digest"])
""")


def test_concurrent_pulls_download_each_blob_once(proxy, pushed, msb_home):
    proxy.delay = 0.3          # per MiB, and at least once per blob: the pulls overlap
    ref = f"{proxy.host}/test/app:1"
    env = dict(os.environ)
    procs = [subprocess.Popen([sys.executable, "-c", PULL_SCRIPT, ref], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
    outs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1] for o in outs]
    assert outs[0][0] == outs[1][0]
    for layer in pushed["app"].layers:
        assert len(proxy.blob_gets(layer.digest)) == 1, proxy.requests
    assert len(images.list()) == 1


def test_progress_events_and_terminal_display(registry, pushed):
    import io
    from vmm.images.progress import TerminalProgress
    events = []
    images.pull(f"{registry.host}/test/app:1", insecure=True, progress=events.append)
    kinds = [e.kind for e in events]
    assert kinds[0] == "resolve" and kinds[-1] == "done"
    started = {e.digest for e in events if e.kind == "blob-start"}
    finished = {e.digest for e in events if e.kind == "blob-done"}
    assert started == finished and len(finished) == 4
    assert all(e.done == e.total for e in events if e.kind == "blob-done")

    class Tty(io.StringIO):
        def isatty(self):
            return True
    out = Tty()
    images.pull(f"{registry.host}/test/app:also", insecure=True, progress=TerminalProgress(out), force=True)
    text = out.getvalue()
    assert text.startswith(f"Pulling {registry.host}/test/app:also\n") and "cached" in text
    assert text.count("\x1b[2K") >= 4          # one redrawn line per blob


def test_bad_leftover_partial_is_refetched(registry, pushed, msb_home):
    layer = pushed["app"].layers[1]
    paths = StorePaths(msb_home)
    paths.create()
    paths.partial(layer.digest).write_bytes(b"\0" * 1000)      # not a prefix of the blob
    info = images.pull(f"{registry.host}/test/app:1", insecure=True, progress=False)
    assert paths.blob(layer.digest).read_bytes() == layer.blob and info["layer_count"] == 3


def test_killed_pull_leaves_nothing_visible_and_resumes(proxy, pushed, msb_home):
    import signal
    import time
    layer = pushed["big"].layers[0]
    paths = StorePaths(msb_home)
    proxy.delay = 0.4                  # per MiB: the 3 MiB layer takes ~1.2 s to arrive
    ref = f"{proxy.host}/test/big:1"
    p = subprocess.Popen([sys.executable, "-c", PULL_SCRIPT, ref], env=dict(os.environ),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    partial = paths.partial(layer.digest)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not (partial.exists() and partial.stat().st_size >= 1 << 20):
        time.sleep(0.02)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert partial.stat().st_size >= 1 << 20
    assert images.list() == [] and not paths.blob(layer.digest).exists()
    proxy.delay = 0
    info = images.pull(ref, insecure=True, progress=False)
    assert info["layers"][0]["digest"] == layer.digest
    assert paths.blob(layer.digest).read_bytes() == layer.blob
    assert proxy.blob_gets(layer.digest)[-1][2].startswith("bytes=")
