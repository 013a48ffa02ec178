"""A hostile guest agent against the host client (issue 12, finding 2): whatever it
sends, the client's memory stays bounded (counted in queued bytes and with tracemalloc,
not RSS timing), a frame that does not fit its session ends that session with a
protocol error, and no wait lasts forever. The agent here is a scripted fake on a
socketpair (support.agent_harness.FakeAgent)."""
import signal
import threading
import time
import tracemalloc

import pytest

from support.agent_harness import FakeAgent, wait_until
from vmm.agent import AgentError, Timeout
from vmm.agent import client as client_mod
from vmm.agent import protocol as P
from vmm.agent import session as session_mod
from vmm.agent.protocol import G, T

MIB = 1 << 20
STARTED_1MIB = P.encode([(G.PID, 42), (G.MESSAGE, b"x" * (MIB - 64))])


def peak_bytes(fn) -> int:
    """Peak Python memory allocated (all threads) while fn() runs."""
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.fixture
def short_waits(monkeypatch):
    """Default deadlines and the kill grace cut down so the tests take no minutes."""
    monkeypatch.setattr(session_mod, "DEFAULT_WAIT_S", 0.5, raising=False)
    monkeypatch.setattr(client_mod, "KILL_GRACE_S", 0.2)


def test_started_flood_to_a_timed_out_exec_is_dropped(short_waits):
    """The finding's reproduction: exec() times out, the agent then streams 1 MiB STARTED
    frames to that session. They must be dropped, not queued (it grew the host by
    over 1 GiB)."""
    flood = 64
    exec_sid = []

    def agent(fake, sid, type_, payload):
        if type_ == T.EXEC:
            exec_sid.append(sid)
            fake.send(sid, T.STARTED, P.encode([(G.PID, 42)]))
        elif type_ == T.PING:  # the flood comes after the timeout, then the answer
            for _ in range(flood):
                fake.send(exec_sid[0], T.STARTED, STARTED_1MIB)
            fake.send(sid, T.DONE, P.encode([(G.NOW_NS, 1)]))
        # SIGNAL (the timeout's kill): ignored, as a hung agent would

    fake = FakeAgent(agent)
    try:
        with pytest.raises(Timeout):
            fake.client.exec(["sleep", "1000"], timeout=0.2)
        # ping returns after every flood frame was read
        peak = peak_bytes(lambda: fake.client.ping(timeout=60))
        assert peak < 16 * MIB, f"{flood} MiB sent to a forgotten session; peak {peak} bytes"
        assert fake.client.queued_bytes() == 0
    finally:
        fake.close()


def test_a_second_started_ends_the_session(short_waits):
    def agent(fake, sid, type_, payload):
        if type_ == T.EXEC:
            fake.send(sid, T.STARTED, P.encode([(G.PID, 42)]))
        elif type_ == T.PING:
            for _ in range(40):
                fake.send(sid - 1, T.STARTED, STARTED_1MIB)
            fake.send(sid, T.DONE)

    fake = FakeAgent(agent)
    try:
        p = fake.client.exec_stream(["x"], timeout=10)
        # Unread, the session holds at most one frame however much the agent sends.
        peak = peak_bytes(lambda: fake.client.ping(timeout=60))
        assert peak < 16 * MIB, f"40 MiB of STARTED frames to an unread session; peak {peak}"
        assert p.ended
        with pytest.raises(AgentError, match="unexpected") as e:
            p.wait(5)
        assert e.value.kind == "bad_frame"
        # The agent was told to kill the process.
        wait_until(lambda: any(t == T.SIGNAL and P.decode(pl)[G.SIGNAL] == signal.SIGKILL
                               for _, t, pl in fake.received), what="SIGKILL sent")
        assert fake.client.queued_bytes() == 0
    finally:
        fake.close()


@pytest.mark.parametrize("request_, bad", [
    ("exec", T.DATA), ("exec", T.DONE), ("exec", T.STAT), ("ping", T.STDOUT),
    ("ping", T.CREDIT), ("stat", T.DATA), ("read", T.STARTED), ("list", T.STDOUT),
])
def test_unexpected_type_is_a_protocol_error(short_waits, request_, bad):
    def agent(fake, sid, type_, payload):
        if type_ == T.EXEC:
            fake.send(sid, T.STARTED, P.encode([(G.PID, 42)]))
        if type_ in (T.EXEC, T.PING, T.FS_STAT, T.FS_READ, T.FS_LIST):
            fake.send(sid, bad, P.encode([(G.BYTES, 1)]))

    fake = FakeAgent(agent)
    try:
        c = fake.client
        with pytest.raises(AgentError, match=f"0x{bad:x}") as e:
            if request_ == "exec":
                c.exec(["x"], timeout=10)
            elif request_ == "ping":
                c.ping(timeout=10)
            elif request_ == "stat":
                c.fs.stat("/x", timeout=10)
            elif request_ == "read":
                c.fs.read("/x", timeout=10)
            else:
                c.fs.list("/x", timeout=10)
        assert e.value.kind == "bad_frame"
        assert c.queued_bytes() == 0
    finally:
        fake.close()


def test_frames_after_the_final_one_are_dropped(short_waits):
    """EXITED ends a session: a flood of further frames must not queue."""
    def agent(fake, sid, type_, payload):
        if type_ == T.EXEC:
            fake.send(sid, T.STARTED, P.encode([(G.PID, 42)]))
            fake.send(sid, T.STDOUT, b"out")
            fake.send(sid, T.EXITED, P.encode([(G.CODE, 3)]))
            for _ in range(40):
                fake.send(sid, T.EXITED, STARTED_1MIB)
        elif type_ == T.PING:
            fake.send(sid, T.DONE)

    fake = FakeAgent(agent)
    try:
        p = fake.client.exec_stream(["x"], timeout=10)
        # every flood frame has been read once ping returns
        peak = peak_bytes(lambda: fake.client.ping(timeout=60))
        assert peak < 16 * MIB, f"40 MiB of frames after EXITED; peak {peak}"
        r = p.wait(5)
        assert (r.code, r.stdout) == (3, b"out")
    finally:
        fake.close()


def test_write_without_timeout_does_not_wait_forever_for_credit(short_waits):
    """Process.write() with no timeout: an agent that never grants credit is a Timeout
    after session.DEFAULT_WAIT_S, not a hang."""
    def agent(fake, sid, type_, payload):
        if type_ == T.EXEC:
            fake.send(sid, T.STARTED, P.encode([(G.PID, 42)]))

    fake = FakeAgent(agent)
    try:
        p = fake.client.exec_stream(["x"], timeout=10)
        outcome = []

        def writer():
            try:
                p.write(b"x" * (P.WINDOW + 1))
                outcome.append("returned")
            except Timeout as e:
                outcome.append(e)

        t = threading.Thread(target=writer, daemon=True)
        t.start()
        t.join(10)
        assert outcome and isinstance(outcome[0], Timeout), \
            f"write() without timeout still waiting for credit after 10 s: {outcome}"
    finally:
        fake.close()


@pytest.mark.parametrize("call", ["ping", "stat", "exec_start", "wait_ready"])
def test_requests_without_timeout_have_a_default_deadline(short_waits, call):
    # answers nothing (and for wait_ready, sends no READY)
    fake = FakeAgent(lambda fake, sid, type_, payload: None, ready=call != "wait_ready")
    try:
        c = fake.client
        start = time.monotonic()
        with pytest.raises(Timeout):
            if call == "ping":
                c.ping(timeout=None)
            elif call == "stat":
                c.fs.stat("/x")
            elif call == "exec_start":
                c.exec_stream(["x"], timeout=None)
            else:
                fake.client.wait_ready(None)
        assert time.monotonic() - start < 5
        assert c.queued_bytes() == 0
    finally:
        fake.close()


def test_every_session_queue_is_bounded_while_unread(short_waits):
    """Legal but unread: a full window of output plus the largest opening and final
    frames, never more, however the agent orders them."""
    def agent(fake, sid, type_, payload):
        if type_ == T.EXEC:
            fake.send(sid, T.STARTED, STARTED_1MIB)
            for _ in range(P.WINDOW // P.CHUNK):
                fake.send(sid, T.STDERR, b"e" * P.CHUNK)
            fake.send(sid, T.EXITED, P.encode([(G.CODE, 0), (G.MESSAGE, b"y" * (MIB - 64))]))
        elif type_ == T.PING:
            fake.send(sid, T.DONE)

    fake = FakeAgent(agent)
    try:
        p = fake.client.exec_stream(["x"], timeout=10)
        fake.client.ping(timeout=60)
        assert fake.client.queued_bytes() <= session_mod.QUEUE_LIMIT
        r = p.wait(5)
        assert (r.code, len(r.stderr)) == (0, P.WINDOW)
        assert fake.client.queued_bytes() == 0
    finally:
        fake.close()


def test_read_longer_than_asked_is_a_protocol_error(short_waits):
    def agent(fake, sid, type_, payload):
        if type_ == T.FS_READ:
            fake.send(sid, T.DATA, b"x" * 100)
            fake.send(sid, T.DATA, b"x" * 100)
            fake.send(sid, T.DONE, P.encode([(G.SIZE, 200)]))

    fake = FakeAgent(agent)
    try:
        with pytest.raises(AgentError, match="more than the 150 bytes") as e:
            fake.client.fs.read("/x", length=150, timeout=10)
        assert e.value.kind == "bad_frame"
        assert fake.client.fs.read("/x", timeout=10) == b"x" * 200  # no length: all of it
    finally:
        fake.close()
