"""A scripted registry that misbehaves in ways the real one will not: oversized or deeply
nested manifests, too many layers, blobs longer than declared, silence, redirects."""
import gzip
import hashlib
import http.server
import json
import socket
import threading
import time

import pytest

import vmm.images as images
from vmm.images.errors import HostileImage, ImageTooLarge, RegistryError

pytestmark = pytest.mark.usefixtures("msb_home")


def sha(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


class Scripted(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self):
        self.routes = {}          # path -> (status, headers, body) or callable(handler)
        self.seen = []
        super().__init__(("127.0.0.1", 0), Handler)
        self.host = f"127.0.0.1:{self.server_address[1]}"
        threading.Thread(target=self.serve_forever, args=(0.05,), daemon=True).start()


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        self.server.seen.append((self.path, dict(self.headers)))
        route = self.server.routes.get(self.path.split("?")[0])
        if callable(route):
            return route(self)
        status, headers, body = route or (404, {}, b'{"errors":[{"message":"unknown"}]}')
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def scripted():
    s = Scripted()
    yield s
    s.shutdown()
    s.server_close()


def manifest_doc(layers, config=b'{"os":"linux","architecture":"amd64"}'):
    return {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha(config),
                       "size": len(config)},
            "layers": layers}


def serve_manifest(s, repo, doc_bytes):
    s.routes[f"/v2/{repo}/manifests/1"] = (200, {"Content-Type": "application/vnd.oci.image.manifest.v1+json"},
                                           doc_bytes)


def test_oversized_manifest(scripted):
    serve_manifest(scripted, "r", b"{" + b" " * (5 << 20) + b"}")
    with pytest.raises(RegistryError, match="over the 4194304-byte limit"):
        images.pull(f"{scripted.host}/r:1", insecure=True, progress=False)


def test_deeply_nested_manifest(scripted):
    serve_manifest(scripted, "r", b'{"a":' + b"[" * 100000 + b"]" * 100000 + b"}")
    with pytest.raises(HostileImage, match="nests deeper"):
        images.pull(f"{scripted.host}/r:1", insecure=True, progress=False)


def test_too_many_layers(scripted):
    layer = {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": sha(b"x"), "size": 1}
    serve_manifest(scripted, "r", json.dumps(manifest_doc([layer] * 1000)).encode())
    with pytest.raises(ImageTooLarge, match="1000 layers"):
        images.pull(f"{scripted.host}/r:1", insecure=True, progress=False)


def test_blob_longer_than_declared(scripted, msb_home):
    config = b'{"os":"linux","architecture":"amd64"}'
    blob = gzip.compress(b"layer")
    layer = {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": sha(blob), "size": len(blob)}
    serve_manifest(scripted, "r", json.dumps(manifest_doc([layer], config)).encode())
    scripted.routes[f"/v2/r/blobs/{sha(config)}"] = (200, {}, config)
    scripted.routes[f"/v2/r/blobs/{sha(blob)}"] = (200, {}, blob + b"x" * 1000)
    with pytest.raises(RegistryError, match="manifest says"):
        images.pull(f"{scripted.host}/r:1", insecure=True, progress=False)
    assert images.list() == []


def test_silent_registry_times_out(scripted, monkeypatch):
    monkeypatch.setenv("MSB_REGISTRY_TIMEOUT", "0.3")
    monkeypatch.setenv("MSB_REGISTRY_RETRIES", "2")
    scripted.routes["/v2/r/manifests/1"] = lambda h: time.sleep(3)
    t0 = time.monotonic()
    with pytest.raises(RegistryError, match="timed out|gave up"):
        images.pull(f"{scripted.host}/r:1", insecure=True, progress=False)
    assert time.monotonic() - t0 < 3


def test_redirect_to_other_host_drops_credentials(scripted, msb_home, tmp_path):
    """Blob redirects (to S3, a CDN) must not carry the registry's credentials along."""
    other = Scripted()
    try:
        config = b'{"os":"linux","architecture":"amd64"}'
        blob = gzip.compress(b"layer")
        layer = {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": sha(blob),
                 "size": len(blob)}
        body = json.dumps(manifest_doc([layer], config)).encode()

        def needs_basic(route):
            def handle(h):
                if h.headers.get("Authorization", "").startswith("Basic "):
                    return _reply(h, *route)
                _reply(h, 401, {"WWW-Authenticate": 'Basic realm="r"'}, b"")
            return handle
        scripted.routes["/v2/r/manifests/1"] = needs_basic(
            (200, {"Content-Type": "application/vnd.oci.image.manifest.v1+json"}, body))
        scripted.routes[f"/v2/r/blobs/{sha(config)}"] = needs_basic((200, {}, config))
        scripted.routes[f"/v2/r/blobs/{sha(blob)}"] = needs_basic(
            (307, {"Location": f"http://{other.host}/storage/blob?sig=1"}, b""))
        other.routes["/storage/blob"] = (200, {}, blob)
        (tmp_path / "docker-config" / "config.json").write_text(json.dumps(
            {"auths": {scripted.host: {"username": "u", "password": "p"}}}))
        info = images.pull(f"{scripted.host}/r:1", insecure=True, progress=False)
        assert info["layers"][0]["digest"] == sha(blob)
        assert other.seen and all("Authorization" not in headers for _, headers in other.seen)
    finally:
        other.shutdown()
        other.server_close()


def _reply(h, status, headers, body):
    h.send_response(status)
    for k, v in headers.items():
        h.send_header(k, v)
    h.send_header("Content-Length", str(len(body)))
    h.end_headers()
    h.wfile.write(body)


def test_connection_refused_is_one_clear_error(monkeypatch):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("MSB_REGISTRY_RETRIES", "1")
    with pytest.raises(RegistryError, match=f"127.0.0.1:{port}"):
        images.pull(f"127.0.0.1:{port}/r:1", insecure=True, progress=False)


def test_media_type_that_lies_is_reported_at_pull(scripted, msb_home):
    """A layer declared zstd that is gzip: used (runtimes go by the magic bytes too), but the
    user hears of it: a progress event, the pull result, the store, and `msb pull`."""
    import io
    import os
    import subprocess
    import sys
    import tarfile
    from vmm.images.progress import Event
    config = b'{"os":"linux","architecture":"amd64"}'
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        info = tarfile.TarInfo("hello")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"hi"))
    blob = gzip.compress(raw.getvalue())
    layer = {"mediaType": "application/vnd.oci.image.layer.v1.tar+zstd", "digest": sha(blob),
             "size": len(blob)}
    serve_manifest(scripted, "r", json.dumps(manifest_doc([layer], config)).encode())
    scripted.routes[f"/v2/r/blobs/{sha(config)}"] = (200, {}, config)
    scripted.routes[f"/v2/r/blobs/{sha(blob)}"] = (200, {}, blob)
    events = []
    info = images.pull(f"{scripted.host}/r:1", insecure=True, progress=events.append)
    said = [e.message for e in events if e.kind == "warning"]
    assert len(said) == 1 and "media type says zstd, data is gzip" in said[0]
    assert info["warnings"] == said and images.list()[0]["warnings"] == said
    assert events[-1] == Event("done", info["reference"])
    assert images.root_disk(info["reference"]).exists()        # used all the same
    assert images.inspect(info["reference"])["warnings"] == said   # said once, kept once
    p = subprocess.run([sys.executable, "-m", "vmm.cli", "pull", "--force", "--insecure",
                        f"{scripted.host}/r:1"], capture_output=True, text=True,
                       env=dict(os.environ), timeout=60)
    assert p.returncode == 0 and "Traceback" not in p.stderr, p.stderr
    assert f"warning: {info['reference']}: layer 1" in p.stderr
    assert "media type says zstd, data is gzip" in p.stderr
