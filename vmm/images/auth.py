"""Registry authentication: credentials from ~/.docker/config.json, challenges, tokens.

The flow is the one Docker Hub uses (distribution's token auth spec): a request answered
401 carries `WWW-Authenticate: Bearer realm=...,service=...,scope=...`; we ask the realm
for a token (sending basic credentials if we have them), then repeat the request with
`Authorization: Bearer <token>`. A `Basic` challenge gets the stored credentials directly.
"""
import base64
import json
import os
import re
import subprocess
import threading
import time
import urllib.parse
from dataclasses import dataclass
from typing import Optional

from .errors import AuthError

_PARAM = re.compile(r'\s*([A-Za-z_][A-Za-z0-9_-]*)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]*))\s*,?')
_HUB_KEYS = ("https://index.docker.io/v1/", "index.docker.io", "docker.io", "registry-1.docker.io")


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str

    def basic_header(self):
        raw = f"{self.username}:{self.password}".encode()
        return "Basic " + base64.b64encode(raw).decode()


@dataclass
class Challenge:
    scheme: str              # "bearer" or "basic"
    params: dict


def parse_challenge(header: str) -> Optional[Challenge]:
    """Parse one WWW-Authenticate value; None if it is not Basic or Bearer."""
    if not header:
        return None
    scheme, _, rest = header.strip().partition(" ")
    scheme = scheme.lower()
    if scheme not in ("bearer", "basic"):
        return None
    params = {}
    pos = 0
    while pos < len(rest):
        m = _PARAM.match(rest, pos)
        if not m or m.end() == pos:
            break
        value = m.group(2) if m.group(2) is not None else m.group(3)
        params[m.group(1).lower()] = re.sub(r"\\(.)", r"\1", value)
        pos = m.end()
    return Challenge(scheme, params)


def docker_config_path():
    base = os.environ.get("DOCKER_CONFIG") or os.path.join(os.path.expanduser("~"), ".docker")
    return os.path.join(base, "config.json")


def _host_of(key):
    """Config keys appear as `host`, `host:port`, or `https://host/v1/`."""
    if "://" in key:
        key = urllib.parse.urlsplit(key).netloc
    return key.rstrip("/").split("/")[0].lower()


def load_credentials(registry: str, path=None) -> Optional[Credentials]:
    """Credentials for `registry` (host[:port]) from the Docker config, or None."""
    path = path or docker_config_path()
    try:
        with open(path, "rb") as f:
            doc = json.loads(f.read(1 << 20))
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict):
        return None
    wanted = {registry.lower()} | (set(_HUB_KEYS) if registry == "docker.io" else set())
    wanted = {_host_of(k) for k in wanted}
    helper = _helper_for(doc, wanted)
    if helper:
        creds = _from_helper(helper, registry)
        if creds:
            return creds
    auths = doc.get("auths") if isinstance(doc.get("auths"), dict) else {}
    for key, entry in auths.items():
        if isinstance(key, str) and _host_of(key) in wanted and isinstance(entry, dict):
            creds = _from_entry(entry)
            if creds:
                return creds
    return None


def _from_entry(entry):
    if isinstance(entry.get("auth"), str) and entry["auth"]:
        try:
            user, sep, password = base64.b64decode(entry["auth"], validate=True).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            raise AuthError("~/.docker/config.json has a malformed 'auth' value (not base64 user:password)") from None
        if sep:
            return Credentials(user, password)
    if isinstance(entry.get("username"), str) and isinstance(entry.get("password"), str):
        return Credentials(entry["username"], entry["password"])
    if isinstance(entry.get("identitytoken"), str):
        return Credentials("<token>", entry["identitytoken"])
    return None


def _helper_for(doc, wanted):
    helpers = doc.get("credHelpers") if isinstance(doc.get("credHelpers"), dict) else {}
    for key, name in helpers.items():
        if isinstance(key, str) and _host_of(key) in wanted and isinstance(name, str):
            return name
    store = doc.get("credsStore")
    return store if isinstance(store, str) and store else None


def _from_helper(name, registry):
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        return None
    server = "https://index.docker.io/v1/" if registry == "docker.io" else registry
    try:
        out = subprocess.run([f"docker-credential-{name}", "get"], input=server.encode(),
                             capture_output=True, timeout=30, check=True).stdout
        doc = json.loads(out)
    except (OSError, subprocess.SubprocessError, ValueError):
        return None
    if isinstance(doc, dict) and isinstance(doc.get("Username"), str) and isinstance(doc.get("Secret"), str):
        return Credentials(doc["Username"], doc["Secret"])
    return None


class TokenCache:
    """Bearer tokens by (realm, service, scope), shared by the threads of one pull."""

    def __init__(self):
        self._lock = threading.Lock()
        self._tokens = {}

    def get(self, key):
        with self._lock:
            token, expires = self._tokens.get(key, (None, 0))
            return token if token and expires > time.monotonic() else None

    def put(self, key, token, lifetime):
        # Refresh a little early so a token does not expire in the middle of a request.
        with self._lock:
            self._tokens[key] = (token, time.monotonic() + max(lifetime - 10, 10))


def token_url(challenge: Challenge, scope: str) -> str:
    realm = challenge.params.get("realm")
    if not realm:
        raise AuthError("registry sent a Bearer challenge without a realm")
    parts = urllib.parse.urlsplit(realm)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise AuthError(f"registry sent a bad token realm {realm!r}")
    query = []
    if challenge.params.get("service"):
        query.append(("service", challenge.params["service"]))
    query.append(("scope", challenge.params.get("scope") or scope))
    sep = "&" if parts.query else "?"
    return realm + sep + urllib.parse.urlencode(query)


def parse_token_reply(data: bytes, realm: str):
    """(token, lifetime seconds) from a token server's JSON reply."""
    try:
        doc = json.loads(data)
    except ValueError:
        raise AuthError(f"token server {realm} answered something that is not JSON") from None
    if not isinstance(doc, dict):
        raise AuthError(f"token server {realm} answered a non-object")
    token = doc.get("token") or doc.get("access_token")
    if not isinstance(token, str) or not token or len(token) > 65536:
        raise AuthError(f"token server {realm} gave no token")
    lifetime = doc.get("expires_in")
    lifetime = lifetime if isinstance(lifetime, int) and lifetime > 0 else 60
    return token, lifetime
