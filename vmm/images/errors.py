"""Errors raised while resolving, pulling, storing and building images.

Every message names the bad value (the reference, the digest, the registry) so a user can
act on the one line `msb` prints.
"""
from ..errors import VmmError


class ImageError(VmmError):
    """Base of every image error."""


class BadReference(ImageError, ValueError):
    """A malformed image reference (`Node:latest`, `a@sha256:zz`, ...)."""


class RegistryError(ImageError):
    """The registry refused, failed, or answered something we cannot use."""


class AuthError(RegistryError):
    """The registry rejected our credentials or anonymous access."""


class DigestMismatch(ImageError):
    """A blob or manifest did not hash to the digest it was asked for."""


class ImageNotFound(ImageError, LookupError):
    """No such image in the registry or in the local store."""


class PlatformNotFound(ImageError):
    """An image index has no manifest for the requested platform."""


class HostileImage(ImageError):
    """Image content that tries to escape, lie about sizes, or break the builder."""


class ImageTooLarge(HostileImage):
    """Image content beyond a configured limit (manifest size, layer count, unpacked size)."""


class ImageInUse(ImageError):
    """An image cannot be removed because something still needs it (use force)."""
