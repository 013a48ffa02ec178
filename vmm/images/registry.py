"""An OCI distribution (v2) client: manifests and blobs of one registry.

Every request goes through `_open`, which adds credentials, answers 401 challenges once,
and turns 5xx / resets into retries. Blob bodies are streamed into a sink that hashes as
it writes; the sink decides what a verified blob becomes (see store.py).
"""
import logging

from . import auth as _auth
from .digest import parse_digest
from .errors import AuthError, ImageNotFound, RegistryError
from .limits import Limits
from .manifest import ACCEPT
from .transport import TRANSIENT_ERRORS, Transport, TransientError, transient_status

log = logging.getLogger("vmm.images")
CHUNK = 1 << 20


class RegistryClient:
    def __init__(self, registry, api_host, *, insecure=False, credentials=None, limits=None,
                 transport=None, timeout=30.0):
        self.registry = registry
        self.base = f"{'http' if insecure else 'https'}://{api_host}"
        self.insecure = insecure
        self.credentials = credentials
        self.limits = limits or Limits()
        self.transport = transport or Transport(timeout=timeout)
        self.tokens = _auth.TokenCache()
        self._challenge = None      # the last challenge seen, reused to pre-authorise

    # -- auth ---------------------------------------------------------------------------

    def _auth_header(self, scope):
        ch = self._challenge
        if ch is None:
            return None
        if ch.scheme == "basic":
            return self.credentials.basic_header() if self.credentials else None
        token = self.tokens.get((ch.params.get("realm"), ch.params.get("service"), scope))
        return f"Bearer {token}" if token else None

    def _authenticate(self, resp, scope, what):
        challenge = _auth.parse_challenge(resp.getheader("WWW-Authenticate", ""))
        self.transport.release(resp)
        if challenge is None:
            raise AuthError(f"{what}: registry {self.registry} answered 401 without a usable challenge")
        if challenge.scheme == "basic" and not self.credentials:
            raise AuthError(f"{what}: registry {self.registry} needs a login "
                            "(add credentials to ~/.docker/config.json)")
        self._challenge = challenge
        if challenge.scheme == "bearer":
            self._fetch_token(challenge, scope, what)

    def _fetch_token(self, challenge, scope, what):
        url = _auth.token_url(challenge, scope)
        headers = {}
        if self.credentials:
            if url.startswith("http:") and not self.insecure:
                raise AuthError(f"{what}: refusing to send credentials to plain-HTTP token realm {url}")
            headers["Authorization"] = self.credentials.basic_header()

        def attempt():
            resp = self.transport.request_once("GET", url, headers)
            if resp.status >= 500 or resp.status == 429:
                raise transient_status(resp, what)
            data = resp.read(self.limits.token_bytes + 1)
            self.transport.release(resp)
            if resp.status in (401, 403):
                raise AuthError(f"{what}: token server refused {'the stored credentials' if self.credentials else 'anonymous access'} "
                                f"for {challenge.params.get('scope') or scope} (HTTP {resp.status})")
            if resp.status != 200:
                raise AuthError(f"{what}: token server answered HTTP {resp.status}")
            if len(data) > self.limits.token_bytes:
                raise AuthError(f"{what}: token reply over {self.limits.token_bytes} bytes")
            return data

        data = self.transport.with_retries(f"token for {what}", attempt)
        token, lifetime = _auth.parse_token_reply(data, challenge.params.get("realm"))
        self.tokens.put((challenge.params.get("realm"), challenge.params.get("service"), scope), token, lifetime)

    def _open(self, method, path, scope, what, headers=None, ok=(200,)):
        """A response with a status in `ok` (body unread), after auth; raises otherwise."""
        for round_ in range(2):
            h = dict(headers or {})
            header = self._auth_header(scope)
            if header:
                h["Authorization"] = header
            resp = self.transport.request_once(method, self.base + path, h)
            if resp.status == 401 and round_ == 0:
                self._authenticate(resp, scope, what)
                continue
            if resp.status in ok:
                return resp
            self._raise_for(resp, what)
        raise AuthError(f"{what}: registry {self.registry} refused our credentials (HTTP 401)")

    def _raise_for(self, resp, what):
        if resp.status >= 500 or resp.status == 429:
            raise transient_status(resp, what)
        body = resp.read(4096)
        self.transport.release(resp)
        detail = _error_detail(body)
        if resp.status == 404:
            raise ImageNotFound(f"{what}: not found in {self.registry}{detail}")
        if resp.status in (401, 403):
            raise AuthError(f"{what}: access denied by {self.registry} (HTTP {resp.status}){detail}")
        raise RegistryError(f"{what}: registry {self.registry} answered HTTP {resp.status}{detail}")

    # -- manifests ----------------------------------------------------------------------

    def get_manifest(self, repository, target, accept=ACCEPT):
        """(bytes, content type) of the manifest or index named by tag or digest."""
        what = f"manifest {self.registry}/{repository}:{target}" if ":" not in target \
            else f"manifest {self.registry}/{repository}@{target}"
        scope = f"repository:{repository}:pull"
        limit = self.limits.manifest_bytes

        def attempt():
            resp = self._open("GET", f"/v2/{repository}/manifests/{target}", scope, what,
                              {"Accept": accept})
            length = resp.getheader("Content-Length")
            if length and length.isdigit() and int(length) > limit:
                self.transport.release(resp, drain=0)
                raise RegistryError(f"{what} is {length} bytes, over the {limit}-byte limit")
            try:
                data = resp.read(limit + 1)
            except TRANSIENT_ERRORS as e:
                self.transport.release(resp, drain=0)
                raise TransientError(f"{what}: {e}") from None
            self.transport.release(resp)
            if len(data) > limit:
                raise RegistryError(f"{what} is over the {limit}-byte limit")
            return data, resp.getheader("Content-Type", "")

        return self.transport.with_retries(what, attempt)

    # -- blobs --------------------------------------------------------------------------

    def fetch_blob(self, repository, digest, size, sink, progress=None):
        """Stream blob `digest` of `size` bytes into `sink`, resuming from sink.offset.

        `sink` has .offset, .write(bytes), .restart(); the caller verifies the hash.
        """
        parse_digest(digest)
        what = f"blob {digest}"
        scope = f"repository:{repository}:pull"

        def attempt():
            if sink.offset == size:
                return
            headers = {"Range": f"bytes={sink.offset}-"} if sink.offset else {}
            resp = self._open("GET", f"/v2/{repository}/blobs/{digest}", scope, what, headers,
                              ok=(200, 206, 416))
            try:
                self._stream(resp, digest, size, sink, progress, what)
            finally:
                self.transport.release(resp, drain=0)

        self.transport.with_retries(what, attempt)

    def _stream(self, resp, digest, size, sink, progress, what):
        if resp.status == 416:
            raise RegistryError(f"{what} is shorter than the {size} bytes the manifest declares "
                                f"(registry has no bytes from offset {sink.offset})")
        if resp.status == 200 and sink.offset:
            sink.restart()          # the server ignored our Range: start over
        length = resp.getheader("Content-Length")
        if length and length.isdigit() and sink.offset + int(length) > size:
            raise RegistryError(f"{what} is {sink.offset + int(length)} bytes but the manifest says {size}")
        while sink.offset < size:
            try:
                chunk = resp.read(min(CHUNK, size - sink.offset))
            except TRANSIENT_ERRORS as e:
                raise TransientError(f"{what}: connection failed at byte {sink.offset} of {size}: {e}") from None
            if not chunk:
                raise TransientError(f"{what}: body ended at byte {sink.offset} of {size}")
            sink.write(chunk)
            if progress:
                progress(len(chunk))
        if resp.read(1):
            raise RegistryError(f"{what} is longer than the {size} bytes the manifest declares")


def _error_detail(body):
    """The first message of a distribution error body, if any."""
    import json
    try:
        errors = json.loads(body).get("errors")
        msg = errors[0].get("message")
        return f": {msg}" if isinstance(msg, str) else ""
    except Exception:
        return ""
