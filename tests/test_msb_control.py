"""The supervisor's control socket (no VM): requests and errors, and the exec-activity
count that --idle-timeout relies on, which must drop when a client dies however it dies."""
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from vmm.sandbox.control import ControlClient, ControlError, ControlServer, request

ROOT = Path(__file__).resolve().parents[1]


class Counter:
    def __init__(self):
        self.active = 0
        self.lock = threading.Lock()

    def start(self):
        with self.lock:
            self.active += 1

    def end(self):
        with self.lock:
            self.active -= 1


def handler(op, args):
    if op == "status":
        return {"status": "running", "echo": args.get("x")}
    raise ValueError(f"unknown control request {op!r}")


@pytest.fixture
def server(tmp_path):
    c = Counter()
    s = ControlServer(str(tmp_path / "control.sock"), handler, c.start, c.end)
    yield s, c
    s.close()


def wait_for(pred, timeout=10):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.01)
    return False


def test_requests_and_errors(server):
    s, _ = server
    assert request(s.path, "status", x=5) == {"ok": True, "status": "running", "echo": 5}
    with pytest.raises(ControlError, match="unknown control request 'nope'"):
        request(s.path, "nope")
    with ControlClient(s.path) as c:   # several requests on one connection
        assert c.request("status")["ok"] and c.request("status", x=1)["echo"] == 1


def test_no_server_is_a_clear_error(tmp_path):
    with pytest.raises(ControlError, match="cannot reach the sandbox's supervisor"):
        request(str(tmp_path / "missing.sock"), "status")


def test_exec_sessions_counted_until_the_connection_closes(server):
    s, c = server
    a, b = ControlClient(s.path), ControlClient(s.path)
    a.request("exec")
    b.request("exec")
    assert wait_for(lambda: c.active == 2)
    a.close()
    assert wait_for(lambda: c.active == 1)
    b.close()
    assert wait_for(lambda: c.active == 0)


def test_a_killed_client_ends_its_session(server):
    s, c = server
    code = textwrap.dedent(f"""
        import time
        from vmm.sandbox.control import ControlClient
        held = ControlClient({s.path!r})   # kept referenced: its socket is the session
        held.request("exec")
        print("held", flush=True)
        time.sleep(600)
    """)
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                         env=dict(os.environ, PYTHONPATH=str(ROOT)))
    try:
        assert p.stdout.readline() == "held\n"
        assert wait_for(lambda: c.active == 1)
        p.send_signal(signal.SIGKILL)
        p.wait(10)
        assert wait_for(lambda: c.active == 0)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def test_stale_socket_replaced(tmp_path):
    path = tmp_path / "control.sock"
    path.write_bytes(b"")   # what a crashed run leaves
    c = Counter()
    s = ControlServer(str(path), handler, c.start, c.end)
    try:
        assert request(str(path), "status")["status"] == "running"
        assert oct(path.stat().st_mode & 0o777) == "0o600"
    finally:
        s.close()
    assert not path.exists()
