"""The host side of the guest agent's protocol (guest/agent/PROTOCOL.md): the framing
(protocol.py) and the client that runs commands and file operations over one connection."""
from .client import (DEFAULT_VSOCK_PORT, AgentClient, AgentError, AsyncAgentClient, DirEntry,
                     ExecFailed, ExecResult, FileStat, Fs, FsError, Process, ReadyInfo,
                     SandboxNotRunning, Timeout, vsock_handshake)

__all__ = ["DEFAULT_VSOCK_PORT", "AgentClient", "AgentError", "AsyncAgentClient", "DirEntry",
           "ExecFailed", "ExecResult", "FileStat", "Fs", "FsError", "Process", "ReadyInfo",
           "SandboxNotRunning", "Timeout", "vsock_handshake"]
