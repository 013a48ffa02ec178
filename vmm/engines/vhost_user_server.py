"""Serving one Device over vhost-user: the qemu engine's transport for our own devices.

The server is the C core's (its own thread, a Unix socket at `path`); QEMU, or any other
vhost-user front end, connects as the client and maps guest RAM into our process.
"""
from __future__ import annotations

import os
from typing import Optional

from .. import _binding
from ..errors import VmmError


class VhostUserServer:
    def __init__(self, device, path: str):
        path = os.fspath(path)
        if os.path.exists(path):
            os.unlink(path)
        self._p = _binding.check(_binding.lib.vmm_vhost_user_start, device.ptr, path.encode(),
                                 error=VmmError)
        self.device = device
        self.path = path
        device.add_server()

    @property
    def connected(self) -> bool:
        return self._p is not None and bool(_binding.lib.vmm_vhost_user_connected(self._p))

    @property
    def error(self) -> Optional[str]:
        if self._p is None:
            return None
        return _binding.string(_binding.lib.vmm_vhost_user_error(self._p))

    def stop(self) -> None:
        if self._p is None:
            return
        _binding.lib.vmm_vhost_user_stop(self._p)
        self._p = None
        self.device.remove_server()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()
