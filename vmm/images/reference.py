"""Image references as users type them, normalised the way Docker does.

    node                         -> docker.io/library/node:latest
    ghcr.io/org/app@sha256:...   -> registry ghcr.io, repository org/app, digest
    localhost:5000/team/tool:1   -> registry localhost:5000, repository team/tool, tag 1

The grammar follows the distribution project's reference rules: the first path component
is a registry only if it contains '.' or ':', is `localhost`, or has upper-case letters;
repository components are lower-case; tags are at most 128 word characters.
"""
import re
from dataclasses import dataclass
from typing import Optional

from .digest import parse_digest
from .errors import BadReference

DOCKER_HUB = "docker.io"
DOCKER_HUB_API = "registry-1.docker.io"
DEFAULT_TAG = "latest"
MAX_NAME_LENGTH = 255

_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*\Z")
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}\Z")
_HOST = re.compile(
    r"(?:(?:[A-Za-z0-9]|[A-Za-z0-9][A-Za-z0-9-]*[A-Za-z0-9])"
    r"(?:\.(?:[A-Za-z0-9]|[A-Za-z0-9][A-Za-z0-9-]*[A-Za-z0-9]))*"
    r"|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?\Z")
_HUB_ALIASES = {"docker.io", "index.docker.io", "registry-1.docker.io"}


@dataclass(frozen=True)
class Reference:
    registry: str            # host[:port] as written, docker.io for Docker Hub
    repository: str          # path, e.g. library/node
    tag: Optional[str]       # None when only a digest was given
    digest: Optional[str]    # sha256:<hex> or None

    @property
    def name(self) -> str:
        return f"{self.registry}/{self.repository}"

    @property
    def api_host(self) -> str:
        """The host to talk to: Docker Hub's API does not live at docker.io."""
        return DOCKER_HUB_API if self.registry == DOCKER_HUB else self.registry

    @property
    def target(self) -> str:
        """What to ask the registry's manifest endpoint for: the digest wins over the tag."""
        return self.digest or self.tag or DEFAULT_TAG

    def with_digest(self, digest: str) -> "Reference":
        return Reference(self.registry, self.repository, self.tag, digest)

    def __str__(self) -> str:
        out = self.name
        if self.tag:
            out += ":" + self.tag
        if self.digest:
            out += "@" + self.digest
        return out


def parse(text: str) -> Reference:
    """Parse and normalise `text`; raise BadReference naming what is wrong."""
    if not isinstance(text, str) or not text:
        raise BadReference("empty image reference")
    if text != text.strip() or any(c.isspace() for c in text):
        raise BadReference(f"invalid image reference {text!r}: contains whitespace")
    rest, digest = _split_digest(text)
    rest, tag = _split_tag(text, rest)
    registry, path = _split_registry(text, rest)
    _check_path(text, path)
    if registry == DOCKER_HUB and "/" not in path:
        path = "library/" + path
    if len(registry) + 1 + len(path) > MAX_NAME_LENGTH:
        raise BadReference(f"invalid image reference {text!r}: name longer than {MAX_NAME_LENGTH}")
    if tag is None and digest is None:
        tag = DEFAULT_TAG
    return Reference(registry, path, tag, digest)


def _split_digest(text):
    if "@" not in text:
        return text, None
    rest, _, digest = text.partition("@")
    try:
        parse_digest(digest)
    except ValueError as e:
        raise BadReference(f"invalid image reference {text!r}: {e}") from None
    return rest, digest


def _split_tag(text, rest):
    # A ':' after the last '/' starts the tag; one before it belongs to a registry port.
    slash = rest.rfind("/")
    colon = rest.rfind(":")
    if colon <= slash:
        return rest, None
    tag = rest[colon + 1:]
    if not _TAG.match(tag):
        raise BadReference(f"invalid image reference {text!r}: bad tag {tag!r}")
    return rest[:colon], tag


def _split_registry(text, rest):
    first, sep, remainder = rest.partition("/")
    looks_like_host = "." in first or ":" in first or first == "localhost" or first != first.lower()
    if not sep or not looks_like_host:
        return DOCKER_HUB, rest
    if not _HOST.match(first):
        raise BadReference(f"invalid image reference {text!r}: bad registry {first!r}")
    if ":" in first and not first.endswith("]"):
        port = int(first.rsplit(":", 1)[1])
        if not 0 < port < 65536:
            raise BadReference(f"invalid image reference {text!r}: bad port in {first!r}")
    host = first.lower()
    return (DOCKER_HUB if host in _HUB_ALIASES else first), remainder


def _check_path(text, path):
    if not path:
        raise BadReference(f"invalid image reference {text!r}: missing repository name")
    for component in path.split("/"):
        if not _COMPONENT.match(component):
            raise BadReference(
                f"invalid image reference {text!r}: bad repository component {component!r} "
                "(lower-case letters, digits and . _ - separators only)")
