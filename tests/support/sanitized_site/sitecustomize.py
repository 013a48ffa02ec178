"""Loaded by every Python process that has this directory on PYTHONPATH (the fuzz tier's
environment, tests/support/sanitized_core.env()): `import vmm._core` loads the sanitized
build named by $VMM_SANITIZED_CORE instead of the checkout's. Only that one module is
redirected; the rest of vmm is the checkout's own code."""
import importlib.abc
import importlib.util
import os
import sys

_SO = os.environ.get("VMM_SANITIZED_CORE")


class _SanitizedCore(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        if fullname != "vmm._core":
            return None
        return importlib.util.spec_from_file_location(fullname, _SO)


if _SO:
    if not os.path.isfile(_SO):
        sys.exit(f"error: VMM_SANITIZED_CORE={_SO} does not exist")
    sys.meta_path.insert(0, _SanitizedCore())
