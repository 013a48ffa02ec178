"""Sandboxes: one VM running the guest agent, with an image disk and a writable disk.

sandbox.py is the Sandbox (with errors.py, console.py, checks.py, disk_lock.py,
runtime_dir.py and agent_cmdline.py, the pieces it is made of); aio.py its asyncio
flavour; writable_disk.py formats the disk that keeps a sandbox's changes; volumes.py
(mounts of ext4 disks) and volume_store.py (named volumes under MSB_HOME) are its volumes.
"""
from ..agent import ExecFailed, ExecResult, SandboxNotRunning, Timeout
from .aio import AsyncProcess, AsyncSandbox
from .errors import BootFailed
from .sandbox import Sandbox

__all__ = ["Sandbox", "AsyncSandbox", "AsyncProcess", "BootFailed", "ExecFailed", "ExecResult",
           "SandboxNotRunning", "Timeout"]
