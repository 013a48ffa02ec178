"""vmm: a microVM monitor for sandboxes.

    import vmm
    with vmm.Machine("vmlinux", initrd="initramfs.cpio.gz", cmdline="quiet") as m:
        m.start()
        status = m.wait(timeout=30)
        print(m.console, status, m.timeline, m.exit_stats)

    with vmm.Sandbox.create("image.erofs") as sb:      # a VM running the guest agent
        print(sb.exec(["uname", "-a"]).stdout)
"""
from ._version import __version__
from .errors import VmmError, ConfigError, EngineUnavailable, GuestError

__all__ = ["__version__", "Machine", "ExitStatus", "Inspection", "KvmOptions", "QemuOptions",
           "PythonDevice", "VmmError", "ConfigError",
           "EngineUnavailable", "GuestError", "Sandbox", "AsyncSandbox", "BootFailed",
           "ExecFailed", "SandboxNotRunning", "Timeout", "ExecResult"]

# Machine brings the engines and the kernel loader (~5 ms): loaded on first use, so that a
# short-lived `msb exec`, which only talks to a running sandbox's agent, never pays for it.
_MACHINE = ("Machine", "ExitStatus")
# The sandbox runtime pulls in the agent client, threads and asyncio: loaded on first
# use so that `import vmm` for a bare Machine stays quick. So are the engine options and
# Machine.inspect()'s result (a few dataclasses, a millisecond or two at import).
_RUNTIME = ("Sandbox", "AsyncSandbox", "BootFailed", "ExecFailed", "SandboxNotRunning",
            "Timeout", "ExecResult")
_OPTIONS = ("KvmOptions", "QemuOptions", "PythonDevice")


def __getattr__(name):
    if name in _MACHINE:
        from . import machine
        return getattr(machine, name)
    if name in _RUNTIME:
        from . import sandbox
        return getattr(sandbox, name)
    if name in _OPTIONS:
        from .engines import options
        return getattr(options, name)
    if name == "Inspection":
        from .engines.inspection import Inspection
        return Inspection
    raise AttributeError(f"module 'vmm' has no attribute {name!r}")
