"""Run the guest agent as an ordinary host process on a Unix socket, for the agent tests.

The agent binary is the same static musl build that becomes /init in the guest; with a
PID other than 1 it skips the PID-1 duties (mounts, pivot, power-off).
"""
from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from vmm.agent import AgentClient

needs_musl = pytest.mark.skipif(
    subprocess.run(["sh", "-c", "command -v musl-gcc"], capture_output=True).returncode != 0,
    reason="musl-gcc not installed (apt-get install musl-tools)")


def _die_with_parent() -> None:
    """In the child: SIGKILL when pytest dies, so a killed run leaves no agent behind.
    (PR_SET_PDEATHSIG follows the starting *thread*: start agents from long-lived ones.)"""
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


class AgentProcess:
    def __init__(self, workdir: Path):
        from vmm.guest.agent import agent_binary
        self.binary = agent_binary()
        self.sock = workdir / "agent.sock"
        self.log = workdir / "agent.log"
        self._log = open(self.log, "wb")
        self.proc = subprocess.Popen([str(self.binary), "--unix", str(self.sock)],
                                     stdin=subprocess.DEVNULL, stdout=self._log,
                                     stderr=subprocess.STDOUT, cwd=workdir,
                                     preexec_fn=_die_with_parent)
        deadline = time.monotonic() + 10
        while not self._listening():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"agent did not start: {self.log.read_text()}")
            time.sleep(0.01)

    def _listening(self) -> bool:
        # The socket file appears at bind(), before listen(): probe with a connect.
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            try:
                s.connect(str(self.sock))
                return True
            except OSError:
                return False

    def client(self) -> AgentClient:
        return AgentClient.connect_unix(str(self.sock))

    def raw(self) -> socket.socket:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(10)
        s.connect(str(self.sock))
        return s

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        self._log.close()


@pytest.fixture(scope="module")
def agent(tmp_path_factory):
    a = AgentProcess(tmp_path_factory.mktemp("agent"))
    yield a
    a.stop()


@pytest.fixture
def client(agent):
    c = agent.client()
    c.wait_ready(10)
    yield c
    c.close()
    assert agent.alive(), f"the agent died: {agent.log.read_text()[-2000:]}"


def process_alive(marker: str) -> bool:
    """Is any process's command line holding marker?"""
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        if marker.encode() in cmd and ") Z " not in stat:
            return True
    return False


class FakeAgent:
    """A scripted, possibly hostile agent on the other end of a socketpair: READY, then
    each frame from the client goes to on_frame(fake, sid, type, payload), which answers
    with fake.send(). For testing what the host client does with a guest that lies."""

    def __init__(self, on_frame, ready: bool = True):
        from vmm.agent import protocol as P
        from vmm.agent.protocol import G, T
        self._P = P
        self.host, self.guest = socket.socketpair()
        self.on_frame = on_frame
        self.received = []  # (sid, type, payload) in arrival order
        if ready:
            self.guest.sendall(P.frame(0, T.READY, P.encode([(G.VERSION, 1)])))
        self.client = AgentClient(self.host)
        self._thread = threading.Thread(target=self._loop, name="fake-agent", daemon=True)
        self._thread.start()

    def send(self, sid: int, type_: int, payload: bytes = b"") -> None:
        self.guest.sendall(self._P.frame(sid, type_, payload))

    def _loop(self) -> None:
        P = self._P
        try:
            while True:
                hdr = self.guest.recv(P.HDR_LEN, socket.MSG_WAITALL)
                if len(hdr) < P.HDR_LEN:
                    return
                length, sid, type_, _ = P.HEADER.unpack(hdr)
                payload = self.guest.recv(length, socket.MSG_WAITALL) if length else b""
                self.received.append((sid, type_, payload))
                self.on_frame(self, sid, type_, payload)
        except OSError:
            return

    def close(self) -> None:
        self.client.close()
        self.guest.close()
        self._thread.join(10)


def wait_until(condition, timeout: float = 10.0, what: str = "condition") -> None:
    """Poll condition() until true; fail the test naming what did not happen in time."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not true within {timeout}s")
        time.sleep(0.01)


def first_frame(sock: socket.socket, sid: int):
    """(type, fields) of the first frame the agent sends for session sid over a raw
    socket (READY and other sessions' frames skipped): hostile-request tests send bytes
    the client would refuse to encode."""
    from vmm.agent import protocol as P
    buf = b""
    while True:
        while len(buf) < P.HDR_LEN or len(buf) < P.HDR_LEN + P.HEADER.unpack_from(buf)[0]:
            more = sock.recv(65536)
            assert more, "the agent closed the connection"
            buf += more
        length, got_sid, type_, _ = P.HEADER.unpack_from(buf)
        payload, buf = buf[P.HDR_LEN:P.HDR_LEN + length], buf[P.HDR_LEN + length:]
        if got_sid == sid:
            return type_, P.decode(payload)
