"""Where the nested tier keeps its downloads and builds: under the project's cache root
(beside the guest kernel, outside the checkout), one entry per key."""
from pathlib import Path

from vmm.guest.cache import cache_root


def nested_cache() -> Path:
    path = cache_root() / "nested"
    path.mkdir(parents=True, exist_ok=True)
    return path
