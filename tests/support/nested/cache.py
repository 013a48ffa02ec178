"""Where the nested tier keeps its downloads and builds: beside the guest kernel cache,
outside the checkout, one directory per key."""
import os
from pathlib import Path


def nested_cache() -> Path:
    root = Path(os.environ.get("VMM_CACHE") or Path.home() / ".cache" / "vmm")
    path = root / "nested"
    path.mkdir(parents=True, exist_ok=True)
    return path
