"""The host program's side of the vsock device in tests: a client of its Unix listener
("CONNECT <port>\n", then "OK <port>\n" and the stream) and blocking reads."""
import socket

from support.vsock_guest import HOST_CID, OP_CREDIT_UPDATE, OP_REQUEST, OP_RESPONSE


def host_connect(path, port, timeout=5):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.connect(path)
    s.sendall(f"CONNECT {port}\n".encode())
    return s


def read_line(s):
    buf = b""
    while not buf.endswith(b"\n"):
        c = s.recv(1)
        if not c:
            break
        buf += c
    return buf


def recv_exact(s, n):
    buf = b""
    while len(buf) < n:
        c = s.recv(n - len(buf))
        if not c:
            break
        buf += c
    return buf


def one(g, op=None, timeout=2.0):
    """The first packet from the device (credit updates aside), of op if given."""
    pkts = [p for p in g.poll(timeout) if p.op != OP_CREDIT_UPDATE or op == OP_CREDIT_UPDATE]
    assert len(pkts) >= 1, "no packet from the device"
    assert op is None or pkts[0].op == op, pkts
    return pkts[0]


def accept_host_conn(g, path, guest_port=1234, buf_alloc=1 << 20):
    """A host client's connection to guest_port, accepted by the guest g: (socket, host port)."""
    s = host_connect(path, guest_port)
    req = one(g, OP_REQUEST)
    assert (req.src_cid, req.dst_cid, req.dst_port) == (HOST_CID, g.cid, guest_port)
    g.send(OP_RESPONSE, guest_port, req.src_port, buf_alloc=buf_alloc)
    line = read_line(s)
    assert line == f"OK {req.src_port}\n".encode()
    return s, req.src_port
