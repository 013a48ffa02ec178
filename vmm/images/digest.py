"""Content digests (`sha256:<hex>`): parsing, hashing, and verifying streams.

A digest string from a manifest or a registry is untrusted: it becomes part of a file
path in the store, so only the exact algorithm:hex shapes below are accepted.
"""
import hashlib
import re

from .errors import DigestMismatch

_HEX_LEN = {"sha256": 64, "sha512": 128}
_DIGEST = re.compile(r"(sha256|sha512):([0-9a-f]+)\Z")


def parse_digest(digest):
    """Return (algorithm, hex) or raise ValueError naming the bad digest."""
    m = _DIGEST.match(digest) if isinstance(digest, str) else None
    if not m or len(m.group(2)) != _HEX_LEN[m.group(1)]:
        raise ValueError(f"bad digest {digest!r} (want sha256:<64 hex> or sha512:<128 hex>)")
    return m.group(1), m.group(2)


def is_digest(text):
    try:
        parse_digest(text)
        return True
    except ValueError:
        return False


def hasher(digest):
    """A fresh hash object of the digest's algorithm."""
    algorithm, _ = parse_digest(digest)
    return hashlib.new(algorithm)


def digest_of(data, algorithm="sha256"):
    return f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}"


def verify_bytes(data, digest, what="content"):
    """Raise DigestMismatch unless `data` hashes to `digest`."""
    algorithm, expected = parse_digest(digest)
    actual = hashlib.new(algorithm, data).hexdigest()
    if actual != expected:
        raise DigestMismatch(f"{what} should be {digest} but hashes to {algorithm}:{actual}")


def check_hash(h, digest, what="blob"):
    """Compare a finished hash object to `digest`."""
    algorithm, expected = parse_digest(digest)
    if h.hexdigest() != expected:
        raise DigestMismatch(f"{what} {digest} hashes to {algorithm}:{h.hexdigest()}; refusing it")
