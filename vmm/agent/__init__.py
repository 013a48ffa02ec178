"""The host side of the guest agent's protocol (guest/agent/PROTOCOL.md).

Layers, each importing only those above it in this list: protocol (the framing), errors,
capabilities, privileges and container_root (what an exec may be given), results, session (one request's frames and credit windows), connection (the socket and
its reader thread), process and fs (what exec and file sessions mean), handshake (the
vsock CONNECT), client (AgentClient), aio (AsyncAgentClient).
"""
from .capabilities import Capabilities
from .client import DEFAULT_VSOCK_PORT, AgentClient
from .errors import (AgentError, ExecFailed, FsError, OutputTooLarge, SandboxNotRunning,
                     Timeout)
from .fs import Fs
from .handshake import vsock_handshake
from .privileges import ExecPrivileges
from .process import DEFAULT_MAX_OUTPUT, Process
from .results import DirEntry, ExecResult, FileStat, ReadyInfo

__all__ = ["DEFAULT_MAX_OUTPUT", "DEFAULT_VSOCK_PORT", "AgentClient", "AgentError", "AsyncAgentClient", "Capabilities", "ContainerRoot", "DirEntry",
           "ExecFailed", "ExecResult", "FileStat", "Fs", "FsError", "OutputTooLarge", "ExecPrivileges", "Process",
           "ReadyInfo", "RootMount",
           "SandboxNotRunning", "Timeout", "vsock_handshake"]


def __getattr__(name):
    # asyncio loads only for the asyncio client: a short-lived `msb exec` never needs it.
    if name == "AsyncAgentClient":
        from .aio import AsyncAgentClient
        return AsyncAgentClient
    # and dataclasses only for a process with its own root (a pod member's)
    if name in ("ContainerRoot", "RootMount"):
        from . import container_root
        return getattr(container_root, name)
    raise AttributeError(f"module 'vmm.agent' has no attribute {name!r}")
