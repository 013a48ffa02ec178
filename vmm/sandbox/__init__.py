"""Sandboxes: one VM running the guest agent, with an image disk and a writable disk.

sandbox.py is the Sandbox (with errors.py, console.py, checks.py, disk_lock.py,
runtime_dir.py and agent_cmdline.py, the pieces it is made of); aio.py its asyncio
flavour; writable_disk.py formats the disk that keeps a sandbox's changes; volumes.py
(mounts of ext4 disks and of host directories) and volume_store.py (named volumes under
MSB_HOME) are its volumes.
Named sandboxes (`msb run --name`): config.py, state.py, supervisor.py, control.py,
metrics.py and manager.py (docs/lifecycle.md).

The names below load on first use: a short-lived `msb exec` imports this package for
manager.py and should not pay for the VM side (machine, engines, asyncio) it never uses.
"""
_EXPORTS = {"Sandbox": ".sandbox", "AsyncSandbox": ".aio", "AsyncProcess": ".aio",
            "BootFailed": ".errors", "ExecFailed": "..agent", "ExecResult": "..agent",
            "SandboxNotRunning": "..agent", "Timeout": "..agent"}

__all__ = ["Sandbox", "AsyncSandbox", "AsyncProcess", "BootFailed", "ExecFailed", "ExecResult",
           "SandboxNotRunning", "Timeout"]


def __getattr__(name):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'vmm.sandbox' has no attribute {name!r}")
    from importlib import import_module
    return getattr(import_module(module, __name__), name)
