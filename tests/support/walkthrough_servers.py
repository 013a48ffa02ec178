"""The servers the msb walkthrough reaches, all on the host's loopback with ephemeral ports
(a sandbox with network scope `host` reaches them at its gateway, 10.0.2.2):

- a docker-registry holding the walkthrough image (regserver.Registry, pushed by skopeo);
- the apt repository of walkthrough_image (git, curl and their dependencies), as files;
- a minimal npm registry serving pnpm to corepack: the package document, the version
  document and the tarball. corepack checks a downloaded package manager's signature
  against the keys it trusts; this registry signs with a key of its own, made per run,
  which the guest is told to trust (corepack_env), so the check stays on.

    with walkthrough_servers(built, tmp_path) as s:
        s.image_ref              # 127.0.0.1:PORT/node:22.22.3-slim, for `msb pull --insecure`
        s.apt_sources()          # write to walkthrough_image.APT_SOURCES_PATH in the guest
        s.corepack_env()         # write to <project>/.corepack.env in the guest
        s.apt.requests, s.npm.requests   # (file name or path, status) served
"""
import base64
import contextlib
import hashlib
import http.server
import json
import subprocess
import threading
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from support.regserver import Registry
from support.walkthrough_image import GATEWAY, IMAGE_NAME, IMAGE_TAG, PNPM, apt_sources


class _Server(http.server.ThreadingHTTPServer):
    """A loopback HTTP server on an ephemeral port that records the paths it served."""
    daemon_threads = True

    def __init__(self, handler):
        super().__init__(("127.0.0.1", 0), handler)
        self.port = self.server_address[1]
        self.requests = []
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def record(self, path, status):
        with self.lock:
            self.requests.append((path, status))

    def stop(self):
        self.shutdown()
        self.server_close()


class _Quiet(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def reply(self, status, body, content_type="application/octet-stream", head=False,
              record=None):
        self.server.record(record or self.path, status)
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)


class AptRepository(_Server):
    """Serves the files of a flat apt repository directory, nothing else."""

    def __init__(self, directory):
        self.directory = Path(directory)
        self.files = {p.name for p in self.directory.iterdir() if p.is_file()}
        super().__init__(_AptHandler)


class _AptHandler(_Quiet):
    def do_GET(self, head=False):
        # apt quotes file names ('%3a' of an epoch arrives as '%253a', '+' as '%2b')
        name = urllib.parse.unquote(self.path.split("?", 1)[0]).lstrip("/")
        if name.startswith("./"):
            name = name[2:]
        if name not in self.server.files:   # InRelease among others: apt then takes Release
            return self.reply(404, b"not here\n", "text/plain", head, name)
        self.reply(200, (self.server.directory / name).read_bytes(), head=head, record=name)

    def do_HEAD(self):
        self.do_GET(head=True)


class NpmRegistry(_Server):
    """pnpm at one pinned version, marked latest, signed with a per-run key."""

    def __init__(self, directory, workdir):
        self.tarball = (Path(directory) / PNPM.filename).read_bytes()
        self.shasum = hashlib.sha1(self.tarball).hexdigest()
        self.key_der, self.signature = _sign(f"{PNPM.name}@{PNPM.version}:{PNPM.integrity}".encode(),
                                             Path(workdir))
        self.keyid = "SHA256:" + base64.b64encode(hashlib.sha256(self.key_der).digest()).decode().rstrip("=")
        super().__init__(_NpmHandler)

    def integrity_keys(self):
        """COREPACK_INTEGRITY_KEYS's value: this registry's key as the one npm key."""
        return json.dumps({"npm": [{"expires": None, "keyid": self.keyid,
                                    "keytype": "ecdsa-sha2-nistp256", "scheme": "ecdsa-sha2-nistp256",
                                    "key": base64.b64encode(self.key_der).decode()}]},
                          separators=(",", ":"))

    def version_doc(self, host):
        name, version = PNPM.name, PNPM.version
        return {"name": name, "version": version,
                "bin": {"pnpm": "bin/pnpm.cjs", "pnpx": "bin/pnpx.cjs"},
                "engines": {"node": ">=18.12"},
                "dist": {"integrity": PNPM.integrity, "shasum": self.shasum,
                         "tarball": f"http://{host}/{name}/-/{PNPM.filename}",
                         "signatures": [{"keyid": self.keyid, "sig": self.signature}]}}


class _NpmHandler(_Quiet):
    def do_GET(self):
        srv = self.server
        path = self.path.split("?", 1)[0]
        host = self.headers.get("Host") or f"127.0.0.1:{srv.port}"
        name, version = PNPM.name, PNPM.version
        if path == f"/{name}/-/{PNPM.filename}":
            return self.reply(200, srv.tarball)
        doc = srv.version_doc(host)
        if path in (f"/{name}/latest", f"/{name}/{version}"):
            return self.reply(200, json.dumps(doc).encode(), "application/json")
        if path == f"/{name}":
            packument = {"name": name, "dist-tags": {"latest": version}, "versions": {version: doc}}
            return self.reply(200, json.dumps(packument).encode(), "application/json")
        self.reply(404, b'{"error":"Not found"}', "application/json")


def _sign(message, workdir):
    """An ECDSA P-256 key made now (openssl), its public half as DER, and message's
    signature as npm signs a package: SHA-256, DER-encoded, base64."""
    key = workdir / "npm-signing-key.pem"
    subprocess.run(["openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout",
                    "-out", str(key)], check=True, capture_output=True)
    der = subprocess.run(["openssl", "pkey", "-in", str(key), "-pubout", "-outform", "DER"],
                         check=True, capture_output=True).stdout
    sig = subprocess.run(["openssl", "dgst", "-sha256", "-sign", str(key)], input=message,
                         check=True, capture_output=True).stdout
    return der, base64.b64encode(sig).decode()


@dataclass
class Servers:
    registry: Registry
    apt: AptRepository
    npm: NpmRegistry

    @property
    def image_ref(self):
        return f"{self.registry.host}/{IMAGE_NAME}:{IMAGE_TAG}"

    def apt_sources(self):
        """The image's apt source, pointed at this run's repository."""
        return apt_sources(self.apt.port)

    def corepack_env(self):
        """A project's .corepack.env sending corepack to this run's npm registry."""
        return (f"COREPACK_NPM_REGISTRY=http://{GATEWAY}:{self.npm.port}\n"
                f"COREPACK_INTEGRITY_KEYS='{self.npm.integrity_keys()}'\n")


@contextlib.contextmanager
def walkthrough_servers(built, workdir):
    """Start the three servers (the image pushed to the registry); stop them on exit."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        registry = Registry(workdir / "registry")
        stack.callback(registry.stop)
        registry.push(built.layout, f"{IMAGE_NAME}:{IMAGE_TAG}", layout_ref=built.ref_name)
        apt = AptRepository(built.apt_dir)
        stack.callback(apt.stop)
        npm = NpmRegistry(built.npm_dir, workdir)
        stack.callback(npm.stop)
        yield Servers(registry, apt, npm)
