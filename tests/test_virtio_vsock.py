"""virtio-vsock against synthetic guest memory: the Unix-socket host protocol, data both
ways, credit in both directions, resets for unknown connections, many connections."""
import os
import socket
import threading
import time

import pytest

from vmm.devices import Vsock
from vmm.engines.virtio_device import open_device
from support.vsock_host import accept_host_conn, host_connect, one, read_line, recv_exact
from support.vsock_guest import (OP_CREDIT_REQUEST, OP_CREDIT_UPDATE, OP_REQUEST, OP_RESPONSE, OP_RST, OP_RW,
                                 OP_SHUTDOWN, Guest)

CID = 42


@pytest.fixture
def vs(tmp_path):
    path = str(tmp_path / "v.sock")
    dev = open_device(Vsock(CID, path))
    g = Guest(dev, cid=CID)
    yield dev, g, path
    dev.close()


def test_config_space_holds_the_cid(vs):
    dev, g, path = vs
    assert int.from_bytes(dev.config(0, 8), "little") == CID


def test_host_initiated_connection_data_both_ways_and_close(vs):
    dev, g, path = vs
    s, hport = accept_host_conn(g, path)
    s.sendall(b"hello guest")
    p = one(g, OP_RW)
    assert p.payload == b"hello guest" and p.dst_port == 1234 and p.src_port == hport
    g.send(OP_RW, 1234, hport, b"hello host")
    assert recv_exact(s, 10) == b"hello host"
    s.shutdown(socket.SHUT_WR)
    p = one(g, OP_SHUTDOWN)
    assert p.flags == 2  # the host sends no more, but may still read
    g.send(OP_RW, 1234, hport, b"after half-close")
    assert recv_exact(s, 16) == b"after half-close"
    s.close()
    p = one(g, OP_RST)  # fully closed host side: the connection is reset
    assert (p.src_port, p.dst_port) == (hport, 1234)
    c = dev.counters()
    assert c["connections"] == 1 and c["bytes_read"] == 11 and c["bytes_written"] == 26


def test_guest_initiated_connection(vs, tmp_path):
    dev, g, path = vs
    lst = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    lst.bind(f"{path}_5000")
    lst.listen(1)
    lst.settimeout(5)
    g.send(OP_REQUEST, 777, 5000)
    p = one(g, OP_RESPONSE)
    assert (p.src_port, p.dst_port) == (5000, 777) and p.buf_alloc > 0
    conn, _ = lst.accept()
    conn.settimeout(5)
    g.send(OP_RW, 777, 5000, b"ping")
    assert recv_exact(conn, 4) == b"ping"
    conn.sendall(b"pong")
    assert one(g, OP_RW).payload == b"pong"
    g.send(OP_SHUTDOWN, 777, 5000, flags=3)
    p = one(g, OP_RST)
    assert (p.src_port, p.dst_port) == (5000, 777)
    assert conn.recv(10) == b""  # host sees EOF


def test_guest_connect_to_nothing_is_reset(vs):
    dev, g, path = vs
    g.send(OP_REQUEST, 778, 5001)
    p = one(g, OP_RST)
    assert (p.src_port, p.dst_port) == (5001, 778)


@pytest.mark.parametrize("op", [OP_RW, OP_RESPONSE, OP_CREDIT_UPDATE, OP_CREDIT_REQUEST, OP_SHUTDOWN, 99])
def test_packets_for_unknown_connections_get_rst(vs, op):
    dev, g, path = vs
    g.send(op, 900, 901, b"x" if op == OP_RW else b"")
    p = one(g, OP_RST)
    assert (p.src_port, p.dst_port) == (901, 900)


def test_rst_for_unknown_connection_is_ignored_and_bad_cids_dropped(vs):
    dev, g, path = vs
    g.send(OP_RST, 900, 901)
    g.send(OP_REQUEST, 900, 901, src_cid=CID + 1)
    g.send(OP_REQUEST, 900, 901, dst_cid=7)
    assert g.poll(0.3) == []
    assert dev.counters()["errors"] == 2


def test_length_beyond_the_buffer_resets(vs):
    dev, g, path = vs
    s, hport = accept_host_conn(g, path)
    g.send(OP_RW, 1234, hport, b"abc", length=4000)
    p = one(g, OP_RST)
    assert p.dst_port == 1234
    assert s.recv(10) == b""


def test_host_to_guest_respects_guest_credit(vs):
    dev, g, path = vs
    s, hport = accept_host_conn(g, path, buf_alloc=8192)
    s.sendall(os.urandom(100_000))
    got = 0
    asked = False
    for p in g.poll(0.5, want=100):
        if p.op == OP_RW:
            got += p.len
        asked |= p.op == OP_CREDIT_REQUEST
    assert got == 8192 and asked
    g.send(OP_CREDIT_UPDATE, 1234, hport, buf_alloc=8192, fwd_cnt=8192)
    more = sum(p.len for p in g.poll(0.5, want=100) if p.op == OP_RW)
    assert more == 8192


def test_host_to_guest_stops_at_a_credit_that_is_not_a_multiple_of_the_buffer(vs):
    # 10000 bytes of credit in 4096-byte rx buffers: the third packet must be cut to 1808
    # bytes. A device that filled whole buffers (or ignored credit) would send 12288.
    dev, g, path = vs
    credit = 10000
    s, hport = accept_host_conn(g, path, buf_alloc=credit)
    data = os.urandom(100_000)
    s.sendall(data)
    got = bytearray()
    for p in g.poll(0.5, want=100):
        if p.op == OP_RW:
            got += p.payload
    assert len(got) == credit, f"{len(got)} bytes sent on {credit} bytes of credit"
    assert bytes(got) == data[:credit]
    g.send(OP_CREDIT_UPDATE, 1234, hport, buf_alloc=credit, fwd_cnt=3000)  # the guest read 3000
    for p in g.poll(0.5, want=100):
        if p.op == OP_RW:
            got += p.payload
    assert bytes(got) == data[:credit + 3000]


def test_guest_exceeding_credit_is_reset(vs):
    dev, g, path = vs
    lst = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    lst.bind(f"{path}_6000")
    lst.listen(1)
    g.send(OP_REQUEST, 779, 6000)
    p = one(g, OP_RESPONSE)
    buf_alloc = p.buf_alloc
    conn, _ = lst.accept()  # ... and never read from it
    chunk = os.urandom(65536)
    reset = None
    for i in range(64):  # 4 MiB, far beyond socket buffers plus our buffer
        g.send(OP_RW, 779, 6000, chunk)
        pkts = [q for q in g.poll(0.0, want=0) if q.op == OP_RST]
        if pkts:
            reset = i
            break
    assert reset is not None, "guest ignoring credit was never reset"
    # What the device holds never exceeded what it advertised; the rest is in the socket.
    conn.setblocking(False)
    total = 0
    try:
        while True:
            d = conn.recv(1 << 20)
            if not d:
                break
            total += len(d)
    except BlockingIOError:
        pass
    assert total <= (reset + 1) * 65536
    assert dev.counters()["resets"] >= 1


def test_many_connections_both_directions(vs):
    dev, g, path = vs
    n = 40
    socks = {}
    for i in range(n):
        s = host_connect(path, 2000 + i)
        req = one(g, OP_REQUEST)
        g.send(OP_RESPONSE, req.dst_port, req.src_port)
        assert read_line(s) == f"OK {req.src_port}\n".encode()
        socks[req.dst_port] = (s, req.src_port)
    for gport, (s, hport) in socks.items():
        s.sendall(f"from host to {gport}".encode())
    seen = {}
    for p in g.poll(3.0, want=n):
        assert p.op == OP_RW
        seen[p.dst_port] = seen.get(p.dst_port, b"") + p.payload
    assert seen == {gp: f"from host to {gp}".encode() for gp in socks}
    for gport, (s, hport) in socks.items():
        g.send(OP_RW, gport, hport, f"from guest {gport}".encode())
    for gport, (s, hport) in socks.items():
        assert recv_exact(s, len(f"from guest {gport}")) == f"from guest {gport}".encode()
    assert dev.counters()["connections"] == n


def test_bulk_host_to_guest_with_credit_updates(vs):
    dev, g, path = vs
    s, hport = accept_host_conn(g, path, buf_alloc=64 * 1024)
    data = os.urandom(1 << 20)
    t = threading.Thread(target=s.sendall, args=(data,))
    t.start()
    got = bytearray()
    end = time.monotonic() + 20
    while len(got) < len(data) and time.monotonic() < end:
        pkts = g.poll(0.5, want=1)
        for p in pkts:
            if p.op == OP_RW:
                got += p.payload
        # The guest "reads" everything at once and says so.
        if pkts:
            g.send(OP_CREDIT_UPDATE, 1234, hport, buf_alloc=64 * 1024, fwd_cnt=len(got) & 0xFFFFFFFF)
    t.join()
    assert bytes(got) == data


def test_bad_connect_lines_are_closed(vs):
    dev, g, path = vs
    for line in (b"HELLO 5\n", b"CONNECT x\n", b"CONNECT 99999999999\n", b"A" * 100):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(5)
        s.connect(path)
        s.sendall(line)
        try:
            assert s.recv(10) == b""
        except ConnectionResetError:
            pass  # closed with our junk unread: also a close
    assert g.poll(0.2) == []


def test_guest_close_delivers_buffered_data_before_rst(vs):
    dev, g, path = vs
    lst = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    lst.bind(f"{path}_6001")
    lst.listen(1)
    g.send(OP_REQUEST, 780, 6001)
    buf_alloc = one(g, OP_RESPONSE).buf_alloc
    conn, _ = lst.accept()  # not reading yet: the socket fills, the device buffers the rest
    data = os.urandom(buf_alloc)
    for i in range(0, len(data), 65536):
        g.send(OP_RW, 780, 6001, data[i:i + 65536])
    g.send(OP_SHUTDOWN, 780, 6001, flags=3)
    conn.settimeout(5)
    got = bytearray()
    while True:
        d = conn.recv(1 << 16)
        if not d:
            break
        got += d
    assert bytes(got) == data  # all of it, then EOF
    # poll() returns at the first packet; a credit update may come before the RST
    seen, end = [], time.monotonic() + 10
    while not any(p.op == OP_RST for p in seen) and time.monotonic() < end:
        seen += g.poll(end - time.monotonic())
    assert any(p.op == OP_RST for p in seen), [p.op for p in seen]


def test_host_hangup_without_guest_credit_neither_spins_nor_loses_data(vs):
    import resource
    dev, g, path = vs
    lst = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    lst.bind(f"{path}_6002")
    lst.listen(1)
    g.send(OP_REQUEST, 781, 6002, buf_alloc=0)  # no room for data yet
    one(g, OP_RESPONSE)
    conn, _ = lst.accept()
    conn.sendall(b"last words")
    conn.close()  # the host is gone both ways while data waits for credit
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    time.sleep(0.5)
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    used = (cpu1.ru_utime + cpu1.ru_stime) - (cpu0.ru_utime + cpu0.ru_stime)
    assert used < 0.25, f"device thread spun on a hang-up ({used:.2f}s CPU in 0.5s)"
    g.send(OP_CREDIT_UPDATE, 781, 6002, buf_alloc=65536)
    pkts = g.poll(2.0, want=2)
    pkts += g.poll(0.3, want=100)
    data = b"".join(p.payload for p in pkts if p.op == OP_RW)
    assert data == b"last words"
    assert pkts[-1].op == OP_RST


def test_bad_vsock_config_is_a_clear_error(tmp_path):
    from vmm.errors import ConfigError
    with pytest.raises(ConfigError, match="too long"):
        open_device(Vsock(3, str(tmp_path / ("x" * 120))))
    with pytest.raises(ConfigError, match="CID 2"):
        open_device(Vsock(2, str(tmp_path / "v.sock")))
