"""vmm: a microVM monitor for sandboxes.

    import vmm
    with vmm.Machine("vmlinux", initrd="initramfs.cpio.gz", cmdline="quiet") as m:
        m.start()
        status = m.wait(timeout=30)
        print(m.console, status, m.timeline, m.exit_stats)
"""
from ._version import __version__
from .errors import VmmError, ConfigError, EngineUnavailable, GuestError
from .machine import Machine, ExitStatus

__all__ = ["__version__", "Machine", "ExitStatus", "VmmError", "ConfigError",
           "EngineUnavailable", "GuestError"]
