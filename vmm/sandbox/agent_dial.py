"""The agent's first connection, opened by the agent: the host listens, the guest dials.

Waiting for a guest agent by connecting to it means polling: each attempt before the
agent listens is refused, and the next comes a sleep later (10 ms), so READY reached the
host 5 ms late on average; every refused attempt also costs the booting guest an
interrupt and a reset packet. Instead the sandbox listens on the vsock device's socket
for guest connections to host port P (`<socket_path>_P`, the Firecracker convention),
boots the agent with `vmm.dial=P`, and the agent connects there the moment it listens,
READY first. accept() returns at once: no poll interval, no refused attempts.

An agent that does not dial (an initramfs built from older sources, passed as initrd=)
is still found: every FALLBACK_EVERY seconds the wait also tries the old way (CONNECT to
the agent's listening port).
"""
from __future__ import annotations

import os
import select
import socket
import time
from typing import Callable, Optional

from ..agent import AgentClient, SandboxNotRunning, Timeout

FALLBACK_EVERY = 0.5  # seconds between CONNECT attempts for an agent that does not dial
ALIVE_EVERY = 0.05    # how often the wait asks whether the VM still runs


class AgentDial:
    """A listening socket for the agent's own connection; wait() returns the client.

    socket_path: the vsock device's host socket; port: the host port the agent dials
    (its `vmm.dial=`); agent_port: the port the agent listens on (the fallback's)."""

    def __init__(self, socket_path: str, port: int, agent_port: Optional[int]):
        self.port = port
        self.agent_port = agent_port
        self._agent_socket = socket_path
        self.path = f"{socket_path}_{port}"
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            self._sock.bind(self.path)
            self._sock.listen(1)
        except BaseException:
            self._sock.close()
            raise

    def wait(self, timeout: float, alive: Callable[[], bool]) -> AgentClient:
        """The agent's connection with its READY taken. SandboxNotRunning once alive()
        says the VM ended; Timeout after timeout seconds."""
        deadline = time.monotonic() + timeout
        next_fallback = time.monotonic() + FALLBACK_EVERY
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise Timeout(f"the agent did not connect within {timeout:g}s")
            readable, _, _ = select.select([self._sock], [], [], min(left, ALIVE_EVERY))
            if readable:
                conn, _ = self._sock.accept()
                client = AgentClient(conn)
                try:
                    client.wait_ready(max(0.1, deadline - time.monotonic()))
                except BaseException:
                    client.close()
                    raise
                return client
            if not alive():
                raise SandboxNotRunning("the VM ended before its agent was ready")
            if time.monotonic() >= next_fallback:
                next_fallback = time.monotonic() + FALLBACK_EVERY
                client = self._try_connect(deadline)
                if client is not None:
                    return client

    def _try_connect(self, deadline: float):
        try:
            client = AgentClient.connect(self._agent_socket, self.agent_port, timeout=1.0)
        except (SandboxNotRunning, Timeout, ConnectionError, OSError):
            return None  # not listening yet: the agent's own dial may still come
        try:
            client.wait_ready(max(0.1, min(deadline - time.monotonic(), 5.0)))
        except (SandboxNotRunning, Timeout):
            client.close()
            return None
        return client

    def close(self) -> None:
        """Stop listening: a later dial from the guest is refused. Idempotent."""
        self._sock.close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
