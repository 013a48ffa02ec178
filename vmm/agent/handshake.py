"""The host side of virtio-vsock's Unix-socket bridge: before the agent's own protocol
starts, the host asks the VMM to connect it to a guest port (Firecracker's convention,
which our vsock device and its vhost-user back end both follow)."""
from __future__ import annotations

import socket
from typing import Optional

from .errors import AgentError, SandboxNotRunning, Timeout

MAX_REPLY = 64  # "OK <host port>\n" is far shorter: a longer line is not our VMM


def vsock_handshake(sock: socket.socket, port: int, timeout: Optional[float] = 10.0) -> None:
    """Firecracker-style host side of virtio-vsock: `CONNECT <port>\\n`, expect `OK ...\\n`.

    Reads one byte at a time so no agent bytes after the reply line are consumed.
    """
    old = sock.gettimeout()
    sock.settimeout(timeout)
    try:
        sock.sendall(f"CONNECT {int(port)}\n".encode())
        line = b""
        while not line.endswith(b"\n"):
            b = sock.recv(1)
            if not b:
                raise SandboxNotRunning(f"vsock: connection closed before the reply to "
                                        f"CONNECT {port} (got {line!r})")
            line += b
            if len(line) > MAX_REPLY:
                raise AgentError(f"vsock: reply to CONNECT {port} too long: {line[:MAX_REPLY]!r}")
    except socket.timeout:
        raise Timeout(f"vsock: no reply to CONNECT {port} within {timeout}s") from None
    finally:
        sock.settimeout(old)
    if not line.startswith(b"OK"):
        raise SandboxNotRunning(f"vsock: CONNECT {port} refused: {line.strip()!r}")
