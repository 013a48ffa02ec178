"""Test servers for the image tests: a real registry (Debian's docker-registry) with skopeo
pushes, and a Python proxy in front of it that can demand Bearer tokens, count requests,
and misbehave (lie about content, cut bodies short). Used by conftest.py and benchmarks.
"""
import base64
import http.client
import http.server
import json
import secrets
import shutil
import socket
import subprocess
import threading
import time
import urllib.parse
import warnings

import pytest

from support import proctable

REGISTRY_BIN = shutil.which("docker-registry")
SKOPEO = shutil.which("skopeo")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bcrypt_hash(password):
    """A bcrypt hash without network or extra packages: the C library's crypt(3)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            import crypt
            # Cost 4 (rounds=16): the registry checks it on every request; keep tests fast.
            h = crypt.crypt(password, crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=16))
            if h and h.startswith("$2"):
                return h
        except (ImportError, AttributeError, ValueError):
            pass
    try:
        import bcrypt
        return bcrypt.hashpw(password.encode(), bcrypt.gensalt(4)).decode()
    except ImportError:
        pytest.skip("no bcrypt implementation (crypt module or pip bcrypt) for htpasswd")


class Registry:
    def __init__(self, root, htpasswd=None):
        self.root = root
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.storage = root / "storage"
        self.storage.mkdir(parents=True)
        self.creds = None
        config = [
            "version: 0.1",
            "log:", "  level: error", "  accesslog:", "    disabled: true",
            "storage:", "  filesystem:", f"    rootdirectory: {self.storage}",
            "  delete:", "    enabled: true",
            "http:", f"  addr: {self.host}",
        ]
        if htpasswd:
            user, password = htpasswd
            (root / "htpasswd").write_text(f"{user}:{bcrypt_hash(password)}\n")
            config += ["auth:", "  htpasswd:", "    realm: test", f"    path: {root / 'htpasswd'}"]
            self.creds = htpasswd
        (root / "config.yml").write_text("\n".join(config) + "\n")
        self.log = open(root / "registry.log", "wb")
        self.proc = subprocess.Popen([REGISTRY_BIN, "serve", str(root / "config.yml")],
                                     stdout=self.log, stderr=subprocess.STDOUT)
        self._wait()

    def _wait(self):
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"docker-registry exited: {(self.root / 'registry.log').read_text()}")
            try:
                c = http.client.HTTPConnection(self.host, timeout=1)
                c.request("GET", "/v2/")
                c.getresponse().read()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("docker-registry did not start")

    def push(self, layout, repo_tag, all_platforms=False, fmt=None, layout_ref=None):
        src = f"oci:{layout}" + (f":{layout_ref}" if layout_ref else "")
        cmd = [SKOPEO, "--insecure-policy", "copy", "-q", "--dest-tls-verify=false"]
        if self.creds:
            cmd += ["--dest-creds", ":".join(self.creds)]
        if all_platforms:
            cmd.append("--all")
        if fmt:
            cmd += ["--format", fmt]
        else:
            cmd.append("--preserve-digests")   # push our blobs as built (plain tar stays plain)
        cmd += [src, f"docker://{self.host}/{repo_tag}"]
        subprocess.run(cmd, check=True, capture_output=True, timeout=120)

    def blob_file(self, digest):
        hexpart = digest.split(":", 1)[1]
        return (self.storage / "docker/registry/v2/blobs/sha256" / hexpart[:2] / hexpart / "data")

    def stop(self):
        proctable.end(self.proc, 5)
        self.log.close()


def write_docker_config(monkeypatch_dir, host, user, password, style="auth"):
    if style == "auth":
        entry = {"auth": base64.b64encode(f"{user}:{password}".encode()).decode()}
    else:
        entry = {"username": user, "password": password}
    (monkeypatch_dir / "config.json").write_text(json.dumps({"auths": {host: entry}}))


# -- a proxy in front of the registry ------------------------------------------------------------

class Proxy(http.server.ThreadingHTTPServer):
    """Forwards to a registry. Options (set as attributes by tests):

    token_auth: demand `Bearer` tokens issued by /token (users: dict of basic creds, or None
                for anonymous tokens)
    cut:        {digest: n} send only n bytes of that blob's body then drop the connection
    cut_times:  how many requests get cut (then the blob is served normally)
    corrupt:    set of digests whose bodies get a flipped byte
    delay:      seconds to sleep per MiB of blob body (to make concurrent pulls overlap)
    manifests:  {reference or digest: (content type, bytes)} answer that manifest request
                with these bytes instead of the registry's (a lying registry)
    fail_next:  answer this many requests with 503 before forwarding again
    """
    daemon_threads = True

    def __init__(self, upstream):
        self.upstream = upstream
        self.requests = []
        self.lock = threading.Lock()
        self.token_auth = False
        self.users = None
        self.tokens = set()
        self.token_requests = 0
        self.cut, self.cut_times, self.corrupt, self.delay = {}, 1, set(), 0.0
        self.fail_next = 0
        self.manifests = {}
        super().__init__(("127.0.0.1", 0), ProxyHandler)
        self.host = f"127.0.0.1:{self.server_address[1]}"
        self.thread = threading.Thread(target=self.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def handle_error(self, request, client_address):
        # Clients that hang up mid-body (killed pulls) are part of the tests, not errors.
        import sys
        if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            super().handle_error(request, client_address)

    def blob_gets(self, digest=None):
        with self.lock:
            return [r for r in self.requests
                    if r[0] == "GET" and "/blobs/" in r[1] and (digest is None or r[1].endswith(digest))
                    and r[3] in (200, 206)]


class ProxyHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        self._handle("GET")

    def do_HEAD(self):
        self._handle("HEAD")

    def _handle(self, method):
        srv = self.server
        if self.path.startswith("/token"):
            return self._token()
        if srv.token_auth and not self._authorised():
            return self._challenge()
        with srv.lock:
            failing = srv.fail_next > 0
            srv.fail_next -= failing
        if failing:
            with srv.lock:
                srv.requests.append((method, self.path, self.headers.get("Range"), 503))
            self.send_response(503)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        forward = ("accept", "range") if srv.token_auth else ("accept", "range", "authorization")
        headers = {k: v for k, v in self.headers.items() if k.lower() in forward}
        conn = http.client.HTTPConnection(srv.upstream, timeout=30)
        conn.request(method, self.path, headers=headers)
        resp = conn.getresponse()
        body = resp.read()
        conn.close()
        with srv.lock:
            srv.requests.append((method, self.path, self.headers.get("Range"), resp.status))
        digest = self.path.rsplit("/", 1)[-1]
        is_blob = "/blobs/" in self.path and method == "GET" and resp.status in (200, 206)
        if is_blob and digest in srv.corrupt and body:
            body = bytes([body[0] ^ 0xFF]) + body[1:]
        swap = srv.manifests.get(digest) if "/manifests/" in self.path else None
        self.send_response(resp.status)
        for k, v in resp.getheaders():
            if k.lower() in ("content-type", "content-length", "docker-content-digest", "content-range",
                             "www-authenticate", "location", "docker-distribution-api-version"):
                if swap and k.lower() in ("content-type", "content-length", "docker-content-digest"):
                    continue
                self.send_header(k, v)
        if swap:
            content_type, body = swap
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if method == "HEAD":
            return
        if is_blob and digest in srv.cut and srv.cut_times > 0:
            with srv.lock:
                srv.cut_times -= 1
            self.wfile.write(body[:srv.cut[digest]])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        if is_blob and srv.delay:
            for off in range(0, len(body), 1 << 20):
                time.sleep(srv.delay)
                self.wfile.write(body[off:off + (1 << 20)])
        else:
            self.wfile.write(body)

    def _authorised(self):
        auth = self.headers.get("Authorization", "")
        return auth.startswith("Bearer ") and auth[7:] in self.server.tokens

    def _challenge(self):
        repo = ""
        if self.path.startswith("/v2/") and ("/manifests/" in self.path or "/blobs/" in self.path):
            repo = self.path[4:].split("/manifests/")[0].split("/blobs/")[0]
        challenge = f'Bearer realm="http://{self.server.host}/token",service="test-registry"'
        if repo:
            challenge += f',scope="repository:{repo}:pull"'
        body = b'{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}'
        self.send_response(401)
        self.send_header("WWW-Authenticate", challenge)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _token(self):
        srv = self.server
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
        ok = query.get("service") == ["test-registry"]
        if srv.users is not None:
            auth = self.headers.get("Authorization", "")
            try:
                user, _, password = base64.b64decode(auth[6:]).decode().partition(":")
            except Exception:
                user, password = None, None
            ok = ok and auth.startswith("Basic ") and srv.users.get(user) == password
        with srv.lock:
            srv.token_requests += 1
        if not ok:
            body = b'{"errors":[{"code":"DENIED","message":"bad credentials"}]}'
            self.send_response(401)
        else:
            token = secrets.token_hex(16)
            srv.tokens.add(token)
            body = json.dumps({"token": token, "expires_in": 300}).encode()
            self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
