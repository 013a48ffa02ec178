"""Sandboxes: one VM running the guest agent, with an image disk and a writable disk."""
from .sandbox import (AsyncSandbox, BootFailed, ExecFailed, ExecResult, Sandbox, SandboxNotRunning,
                      Timeout)

__all__ = ["Sandbox", "AsyncSandbox", "BootFailed", "ExecFailed", "ExecResult", "SandboxNotRunning",
           "Timeout"]
