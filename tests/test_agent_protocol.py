"""Hostile and malformed frames against the agent, over a raw socket; and the client's
framing helpers. A bad frame must cost at most its session (or, over the size limit, the
connection), never the agent."""
import errno
import os
import random
import socket
import struct
import threading

import pytest

from support.agent_harness import agent, client, needs_musl, wait_until  # noqa: F401
from vmm.agent import protocol as P
from vmm.agent import AgentClient, SandboxNotRunning, vsock_handshake
from vmm.agent.protocol import G, T

pytestmark = needs_musl


class Raw:
    """Frames by hand over a plain socket."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.buf = b""
        ready = self.recv()
        assert ready[1] == T.READY

    def send(self, sid, type_, payload=b""):
        self.sock.sendall(P.HEADER.pack(len(payload), sid, type_, 0) + payload)

    def _fill(self, n):
        while len(self.buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError
            self.buf += chunk

    def recv(self):
        self._fill(P.HDR_LEN)
        length, sid, type_, _ = P.HEADER.unpack(self.buf[:P.HDR_LEN])
        self._fill(P.HDR_LEN + length)
        payload = self.buf[P.HDR_LEN:P.HDR_LEN + length]
        self.buf = self.buf[P.HDR_LEN + length:]
        return sid, type_, payload

    def recv_until(self, sid, types):
        while True:
            s, t, p = self.recv()
            if s == sid and t in types:
                return t, P.decode(p) if t not in (T.STDOUT, T.STDERR, T.DATA) else p

    def ping(self, sid):
        self.send(sid, T.PING)
        assert self.recv_until(sid, {T.DONE, T.ERROR})[0] == T.DONE


@pytest.fixture
def raw(agent):
    s = agent.raw()
    yield Raw(s)
    s.close()
    assert agent.alive(), agent.log.read_text()[-2000:]


def test_unknown_type_on_new_session(raw):
    raw.send(5, 0x7777, b"junk")
    t, f = raw.recv_until(5, {T.ERROR})
    assert P.text(f[G.KIND]) == "bad_session"
    raw.ping(6)


def test_unknown_type_on_running_session_closes_it(raw):
    raw.send(7, T.EXEC, P.encode([(G.ARGV, "cat")]))
    t, f = raw.recv_until(7, {T.STARTED, T.FAILED})
    assert t == T.STARTED
    pid = f[G.PID]
    raw.send(7, 0x7777, b"junk")
    t, f = raw.recv_until(7, {T.ERROR, T.EXITED})
    assert t == T.ERROR and P.text(f[G.KIND]) == "bad_frame"
    # The session is gone (its process killed); the connection still serves.
    raw.send(7, T.STDIN, b"late")  # a late frame for a dead session is dropped quietly
    raw.ping(8)
    wait_until(lambda: not os.path.exists(f"/proc/{pid}"), timeout=5, what="process killed")


def test_truncated_tlv_payload(raw):
    bad = struct.pack("<HI", G.ARGV, 100) + b"only-a-few"
    raw.send(9, T.EXEC, bad)
    t, f = raw.recv_until(9, {T.ERROR, T.FAILED, T.STARTED})
    assert t == T.ERROR and P.text(f[G.KIND]) == "bad_request"
    raw.send(10, T.FS_STAT, b"\x01")  # shorter than a TLV header
    t, f = raw.recv_until(10, {T.ERROR})
    assert f[G.ERRNO] == errno.EINVAL
    raw.send(11, T.EXEC, P.encode([(G.ARGV, "a\0b")]))  # NUL inside a string
    assert raw.recv_until(11, {T.ERROR, T.STARTED})[0] == T.ERROR
    raw.send(12, T.EXEC, P.encode([(G.TTY, b"\x01")]))  # integer of the wrong size
    assert raw.recv_until(12, {T.ERROR, T.STARTED})[0] == T.ERROR
    raw.ping(13)


def test_frames_for_unknown_sessions(raw):
    raw.send(99, T.DATA, b"x")
    t, f = raw.recv_until(99, {T.ERROR})
    assert P.text(f[G.KIND]) == "bad_session"
    raw.send(0, T.EXEC, P.encode([(G.ARGV, "true")]))
    t, f = raw.recv_until(0, {T.ERROR})
    assert P.text(f[G.KIND]) == "bad_session"
    raw.ping(100)


def test_duplicate_session_id(raw):
    raw.send(20, T.EXEC, P.encode([(G.ARGV, "cat")]))
    assert raw.recv_until(20, {T.STARTED})[0] == T.STARTED
    raw.send(20, T.EXEC, P.encode([(G.ARGV, "true")]))
    assert raw.recv_until(20, {T.ERROR})[0] == T.ERROR
    raw.ping(21)


def test_stdin_beyond_window_closes_session(raw):
    raw.send(30, T.EXEC, P.encode([(G.ARGV, "sleep"), (G.ARGV, "30")]))
    assert raw.recv_until(30, {T.STARTED})[0] == T.STARTED
    # sleep never reads: after the pipe's own buffer fills, the window overflows
    # (we ignore the agent's CREDIT frames, as a broken host would).
    for _ in range((1 << 20) // P.CHUNK + P.WINDOW // P.CHUNK + 1):
        raw.send(30, T.STDIN, b"x" * P.CHUNK)
    t, f = raw.recv_until(30, {T.ERROR, T.EXITED})
    assert t == T.ERROR and "window" in P.text(f[G.MESSAGE])
    raw.ping(31)


def test_oversized_frame_closes_connection_only(agent, raw):
    raw.sock.sendall(P.HEADER.pack(P.MAX_PAYLOAD + 1, 40, T.EXEC, 0))
    t, f = raw.recv_until(40, {T.ERROR})
    assert P.text(f[G.KIND]) == "frame_too_large"
    with pytest.raises((EOFError, ConnectionResetError)):
        raw.recv()
    # The agent lives on and serves new connections.
    c = agent.client()
    c.wait_ready(5)
    assert c.exec(["echo", "still here"]).stdout == b"still here\n"
    c.close()


def test_half_frame_then_disconnect(agent):
    s = agent.raw()
    Raw(s)
    s.sendall(P.HEADER.pack(100, 1, T.EXEC, 0)[:7])
    s.close()
    c = agent.client()
    c.wait_ready(5)
    assert c.exec(["true"]).code == 0
    c.close()


def test_disconnect_kills_running_commands(agent):
    c = agent.client()
    c.wait_ready(5)
    p = c.exec_stream(["sleep", "27.18"])
    c.close()
    wait_until(lambda: not os.path.exists(f"/proc/{p.pid}"), timeout=5, what="process killed")


def test_random_frames_do_not_kill_the_agent(agent, raw):
    rng = random.Random(1234)
    types = [0x01, 0x10, 0x12, 0x13, 0x17, 0x18, 0x20, 0x21, 0x22, 0x23, 0x26, 0x30, 0x40,
             0x41, 0x42, 0x99]
    for i in range(300):
        payload = bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 64)))
        t = rng.choice(types)
        if t == 0x10:
            continue  # random EXECs could run random programs; covered above
        raw.send(rng.randrange(1, 50), t, payload)
    raw.ping(1000)
    assert agent.alive()


def test_client_sees_sandbox_not_running(tmp_path):
    from support.agent_harness import AgentProcess
    a = AgentProcess(tmp_path)
    try:
        c = a.client()
        c.wait_ready(5)
        c.shutdown(timeout=5)
        assert a.proc.wait(5) == 0  # not PID 1: shutdown ends the process
        with pytest.raises(SandboxNotRunning):
            c.exec(["true"])
        with pytest.raises(SandboxNotRunning):
            AgentClient.connect_unix(str(a.sock))
    finally:
        a.stop()


def test_vsock_handshake():
    host, guest = socket.socketpair()

    def fake_vsock_device():
        line = b""
        while not line.endswith(b"\n"):
            line += guest.recv(1)
        assert line == b"CONNECT 1024\n"
        guest.sendall(b"OK 1073741824\n" + P.frame(0, T.READY, P.encode([(G.VERSION, 1)])))

    t = threading.Thread(target=fake_vsock_device)
    t.start()
    vsock_handshake(host, 1024, timeout=5)
    t.join()
    c = AgentClient(host)  # the bytes after the OK line are still there for the client
    assert c.wait_ready(5).version == 1
    c.close()
    guest.close()


def test_vsock_handshake_refused():
    host, guest = socket.socketpair()
    guest.sendall(b"NO\n")
    with pytest.raises(SandboxNotRunning):
        vsock_handshake(host, 5, timeout=5)
    host.close()
    guest.close()


def test_tlv_roundtrip_and_limits():
    fields = [(G.ARGV, "ls"), (G.ARGV, "-l"), (G.ROWS, 50), (G.PATH, b"\xff")]
    assert list(P.iter_fields(P.encode(fields))) == [(G.ARGV, b"ls"), (G.ARGV, b"-l"),
                                                     (G.ROWS, 50), (G.PATH, b"\xff")]
    with pytest.raises(P.ProtocolError):
        list(P.iter_fields(struct.pack("<HI", G.ARGV, 10) + b"abc"))
    with pytest.raises(P.ProtocolError):
        list(P.iter_fields(struct.pack("<HI", G.ROWS, 4) + b"abcd"))
    with pytest.raises(ValueError):
        P.frame(1, T.STDIN, b"x" * (P.MAX_PAYLOAD + 1))


def test_connect_when_ready_waits_for_the_agent(tmp_path):
    import time
    from support.agent_harness import AgentProcess
    from vmm.agent import Timeout
    with pytest.raises(Timeout):
        AgentClient.connect_when_ready(str(tmp_path / "none.sock"), port=None, timeout=0.3)
    with pytest.raises(SandboxNotRunning):
        AgentClient.connect_when_ready(str(tmp_path / "none.sock"), port=None, timeout=5,
                                       alive=lambda: False)
    result = {}
    done = threading.Event()

    def later():
        time.sleep(0.3)
        result["agent"] = AgentProcess(tmp_path)
        # The agent dies with the thread that started it (PR_SET_PDEATHSIG): stay.
        done.wait(30)

    t = threading.Thread(target=later)
    t.start()
    try:
        c = AgentClient.connect_when_ready(str(tmp_path / "agent.sock"), port=None, timeout=10)
        assert c.exec(["echo", "up"]).stdout == b"up\n"
        c.close()
    finally:
        done.set()
        t.join()
        result["agent"].stop()


def test_client_rejects_a_guest_ignoring_flow_control():
    """A hostile guest that streams past the window must not fill host memory."""
    import time
    from vmm.agent import AgentError
    host, guest = socket.socketpair()
    guest.sendall(P.frame(0, T.READY, P.encode([(G.VERSION, 1)])))
    c = AgentClient(host)
    c.wait_ready(5)

    def fake_agent():
        hdr = guest.recv(P.HDR_LEN, socket.MSG_WAITALL)
        length, sid, _, _ = P.HEADER.unpack(hdr)
        guest.recv(length, socket.MSG_WAITALL)
        guest.sendall(P.frame(sid, T.STARTED, P.encode([(G.PID, 42)])))
        for _ in range(P.WINDOW // P.CHUNK + 2):
            guest.sendall(P.frame(sid, T.STDOUT, b"x" * P.CHUNK))

    t = threading.Thread(target=fake_agent)
    t.start()
    p = c.exec_stream(["flood"])
    t.join()
    # Consume nothing until the client has judged the flood (consuming returns credit,
    # which would make the extra bytes legitimate).
    wait_until(lambda: p.ended, what="the client ending the flooded session")
    with pytest.raises(AgentError, match="window"):
        while p.next_event(time.monotonic() + 10) is not None:
            pass
    c.close()
    guest.close()


def _exec_cat(raw, sid):
    raw.send(sid, T.EXEC, P.encode([(G.ARGV, "cat")]))
    assert raw.recv_until(sid, {T.STARTED, T.FAILED})[0] == T.STARTED


BAD_CREDITS = {
    "zero": P.encode([(G.BYTES, 0)]),
    "no-bytes-field": b"",
    "over-a-window": P.encode([(G.BYTES, P.WINDOW + 1)]),
    "never-sent": P.encode([(G.BYTES, 1)]),  # a fresh session: window + 1 in all
    "huge": P.encode([(G.BYTES, 1 << 63)]),
    "4-byte-int": struct.pack("<HI", G.BYTES, 4) + b"\x01\x00\x00\x00",
}


@pytest.mark.parametrize("why", sorted(BAD_CREDITS))
def test_credit_out_of_bounds_ends_the_session(raw, why):
    """guest/agent/session.c: a CREDIT the host cannot honestly send (BYTES outside
    1..WINDOW, or acknowledging output the agent never sent) is a bad_frame; the
    session's process is killed, the connection goes on."""
    _exec_cat(raw, 60)
    raw.send(60, T.CREDIT, BAD_CREDITS[why])
    t, f = raw.recv_until(60, {T.ERROR, T.EXITED})
    assert t == T.ERROR and P.text(f[G.KIND]) == "bad_frame", why
    assert "CREDIT" in P.text(f[G.MESSAGE])
    raw.ping(61)


def test_exact_credit_is_accepted(raw):
    """The other side of the bound: acknowledging exactly what arrived, more than a
    window in all, is fine."""
    total = 3 * P.WINDOW + 12345
    raw.send(62, T.EXEC, P.encode([(G.ARGV, "head"), (G.ARGV, "-c"), (G.ARGV, str(total)),
                                   (G.ARGV, "/dev/zero")]))
    got = 0
    while True:
        sid, t, p = raw.recv()
        if sid != 62:
            continue
        if t == T.STDOUT and p:
            got += len(p)
            raw.send(62, T.CREDIT, P.encode([(G.BYTES, len(p))]))
        elif t in (T.EXITED, T.ERROR):
            break
    assert (t, got) == (T.EXITED, total), P.decode(p)


def _fionread(sock) -> int:
    import fcntl
    import termios
    return struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0\0\0\0"))[0]


def test_file_data_beyond_the_window_is_refused(raw, tmp_path):
    """PROTOCOL.md: a host sending more than a window of file DATA beyond what the
    agent has acknowledged is a bad_frame. The agent's CREDIT counts once it has left the
    agent: here the connection back to the host is full (reads nobody takes), so the
    CREDITs stay queued and the fifth 64 KiB chunk is over the window. (The old code
    reset its count every quarter window whether or not the CREDIT could be read.)"""
    src = tmp_path / "big"
    src.write_bytes(b"r" * (512 << 10))
    for sid in range(70, 78):  # 8 windows of reads: more than the socket holds
        raw.send(sid, T.FS_READ, P.encode([(G.PATH, str(src))]))
    wait_until(lambda: _fionread(raw.sock) >= 100_000, what="the connection to us filled")
    dst = tmp_path / "out"
    raw.send(80, T.FS_WRITE, P.encode([(G.PATH, str(dst))]))
    for _ in range(P.WINDOW // P.CHUNK + 1):
        raw.send(80, T.DATA, b"w" * P.CHUNK)
    raw.send(80, T.DATA, b"")
    t, f = raw.recv_until(80, {T.ERROR, T.DONE})
    assert t == T.ERROR and P.text(f[G.KIND]) == "bad_frame", f
    assert "window" in P.text(f[G.MESSAGE])
    assert dst.stat().st_size <= P.WINDOW
    raw.ping(81)


def test_write_on_a_congested_connection_completes(client, tmp_path):
    """A host that waits for CREDIT is never refused, even when the CREDITs queue behind
    a read it has not consumed yet."""
    src = tmp_path / "big"
    src.write_bytes(b"r" * (2 << 20))
    reads = [client.fs.read_iter(str(src)) for _ in range(4)]
    first = [next(r) for r in reads]  # started, then left unconsumed
    data = os.urandom(3 << 20)
    assert client.fs.write(str(tmp_path / "out"), data, timeout=60) == len(data)
    assert (tmp_path / "out").read_bytes() == data
    for r, chunk in zip(reads, first):
        assert len(chunk) + sum(map(len, r)) == 2 << 20
