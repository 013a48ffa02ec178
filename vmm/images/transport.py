"""A small HTTP client for registries: kept-alive connections, redirects, retries.

Standard library only (http.client): imports in a few milliseconds, which matters for
`msb` start-up, and gives exact control over what follows a redirect. Blob downloads are
often redirected to a storage host (S3, a CDN); credentials must not follow them there,
so the Authorization header is dropped whenever a redirect leaves the original host.
"""
import http.client
import logging
import random
import socket
import ssl
import threading
import time
import urllib.parse
from dataclasses import dataclass

from .errors import RegistryError

log = logging.getLogger("vmm.images")

TRANSIENT_STATUS = {408, 429, 500, 502, 503, 504}
TRANSIENT_ERRORS = (ConnectionError, TimeoutError, socket.timeout, http.client.RemoteDisconnected,
                    http.client.IncompleteRead, http.client.BadStatusLine,
                    http.client.ImproperConnectionState, ssl.SSLError, OSError)
USER_AGENT = "vmm-msb/0.1"


class TransientError(RegistryError):
    """A failure worth retrying (5xx, reset, timeout, short body)."""


@dataclass
class RetryPolicy:
    attempts: int = 5
    base_delay: float = 0.2
    max_delay: float = 5.0

    def delay(self, attempt, retry_after=None):
        if retry_after is not None:
            return min(retry_after, self.max_delay)
        # Exponential backoff with jitter, so parallel layer fetches do not retry in step.
        return min(self.max_delay, self.base_delay * (2 ** attempt)) * (0.5 + random.random() / 2)


class Transport:
    def __init__(self, timeout=30.0, retry=None):
        self.timeout = timeout
        self.retry = retry or RetryPolicy()
        self._local = threading.local()

    def _connection(self, scheme, netloc):
        pool = self._local.__dict__.setdefault("pool", {})
        key = (scheme, netloc)
        conn = pool.get(key)
        if conn is None:
            if scheme == "https":
                conn = http.client.HTTPSConnection(netloc, timeout=self.timeout,
                                                   context=ssl.create_default_context())
            else:
                conn = http.client.HTTPConnection(netloc, timeout=self.timeout)
            pool[key] = conn
        return conn

    def _drop(self, scheme, netloc):
        conn = self._local.__dict__.get("pool", {}).pop((scheme, netloc), None)
        if conn is not None:
            conn.close()

    def close(self):
        for conn in self._local.__dict__.get("pool", {}).values():
            conn.close()
        self._local.__dict__["pool"] = {}

    def request_once(self, method, url, headers=None, max_redirects=5):
        """One request, following redirects; returns the open response (caller reads it).

        Raises TransientError for connection failures so callers can retry.
        """
        headers = dict(headers or {})
        headers.setdefault("User-Agent", USER_AGENT)
        origin = urllib.parse.urlsplit(url).netloc
        for _ in range(max_redirects + 1):
            parts = urllib.parse.urlsplit(url)
            if parts.scheme not in ("http", "https"):
                raise RegistryError(f"refusing URL with scheme {parts.scheme!r}: {url}")
            path = parts.path or "/"
            if parts.query:
                path += "?" + parts.query
            resp = self._send(parts.scheme, parts.netloc, method, path, headers)
            if resp.status in (301, 302, 303, 307, 308):
                location = resp.getheader("Location")
                resp.read()
                if not location:
                    raise RegistryError(f"redirect without Location from {url}")
                url = urllib.parse.urljoin(url, location)
                if urllib.parse.urlsplit(url).netloc != origin:
                    headers.pop("Authorization", None)
                continue
            return resp
        raise RegistryError(f"too many redirects fetching {url}")

    def _send(self, scheme, netloc, method, path, headers):
        # A kept-alive connection may have been closed by the server since last use:
        # one silent reconnect, then report the failure as transient.
        for attempt in range(2):
            conn = self._connection(scheme, netloc)
            reused = conn.sock is not None
            try:
                conn.request(method, path, headers=headers)
                resp = conn.getresponse()
                resp.vmm_pool_key = (scheme, netloc)
                return resp
            except TRANSIENT_ERRORS as e:
                self._drop(scheme, netloc)
                stale = reused and isinstance(e, (ConnectionError, http.client.RemoteDisconnected,
                                                  http.client.ImproperConnectionState))
                if attempt == 1 or not stale:
                    raise TransientError(f"{method} {scheme}://{netloc}{path}: {e}") from None
            except Exception:
                self._drop(scheme, netloc)
                raise

    def release(self, resp, drain=65536):
        """Finish with a response: drain a small rest to keep the connection, else drop it."""
        try:
            if not resp.isclosed():
                resp.read(drain)
            if resp.isclosed():
                return
        except TRANSIENT_ERRORS:
            pass
        resp.close()
        self._drop(*resp.vmm_pool_key)

    def with_retries(self, what, fn):
        """Run fn(); retry TransientError with backoff; return its result."""
        for attempt in range(self.retry.attempts):
            try:
                return fn()
            except TransientError as e:
                if attempt + 1 == self.retry.attempts:
                    raise RegistryError(f"{what}: {e} (gave up after {self.retry.attempts} attempts)") from None
                delay = self.retry.delay(attempt, getattr(e, "retry_after", None))
                log.info("%s: %s; retrying in %.1fs", what, e, delay)
                time.sleep(delay)


def transient_status(resp, what):
    """Turn a 5xx/429 response into a TransientError carrying Retry-After."""
    err = TransientError(f"{what}: HTTP {resp.status} {resp.reason}")
    try:
        err.retry_after = float(resp.getheader("Retry-After", ""))
    except ValueError:
        err.retry_after = None
    resp.read(65536)
    return err
