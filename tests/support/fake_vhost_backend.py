"""A vhost-user back end in Python that answers like a real one, except where told to
misbehave: for tests of the C core's vhost-user front end (csrc/virtio/vhost_user_front.c).

FakeBackend(path, misbehave) listens on path; each connection is served on a thread of its
own. misbehave(n, request, reply) is called for the n-th request of a connection (0-based)
with the reply a correct back end would send (bytes, or None for a request that gets
none) and returns what to do instead: ("reply", bytes) sends those bytes (with "fds": a
list of fds to attach), ("silence",) sends nothing, ("close",) hangs up,
("unasked", bytes) sends bytes now without being asked. None keeps the correct reply.
Each request seen is recorded in .requests as (request code, flags, payload, nfds).
"""
from __future__ import annotations

import array
import os
import socket
import struct
import threading

GET_FEATURES, SET_FEATURES, SET_OWNER = 1, 2, 3
SET_MEM_TABLE, SET_VRING_NUM, SET_VRING_ADDR, SET_VRING_BASE, GET_VRING_BASE = 5, 8, 9, 10, 11
SET_VRING_KICK, SET_VRING_CALL = 12, 13
GET_PROTOCOL_FEATURES, SET_PROTOCOL_FEATURES, SET_VRING_ENABLE = 15, 16, 18
NEED_REPLY, REPLY, VERSION = 1 << 3, 1 << 2, 1
VERSION_1, PROTOCOL_FEATURES = 1 << 32, 1 << 30
REPLY_ACK = 1 << 3
HDR = struct.Struct("<III")


def header(request: int, size: int, flags: int = VERSION | REPLY) -> bytes:
    return HDR.pack(request, flags, size)


class FakeBackend:
    def __init__(self, path, misbehave=None, features=VERSION_1 | PROTOCOL_FEATURES,
                 protocol=REPLY_ACK):
        self.path = os.fspath(path)
        self.misbehave = misbehave or (lambda n, request, reply: None)
        self.features, self.protocol = features, protocol
        self.requests = []
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(self.path)
        self.listener.listen(8)
        self._conns = []
        self._serving = []
        self._stopping = False
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self):
        while not self._stopping:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self._conns.append(conn)
            t = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self._serving.append(t)
            t.start()

    @staticmethod
    def _recv(conn, n):
        """n bytes (None at EOF); every fd that came along is closed (the front end's are
        dups in this very process: a test counts them)."""
        data = b""
        while len(data) < n:
            msg, anc, _, _ = conn.recvmsg(n - len(data), socket.CMSG_SPACE(8 * 4))
            nfds = 0
            for level, kind, raw in anc:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    a = array.array("i")
                    a.frombytes(raw[:len(raw) - len(raw) % a.itemsize])
                    for fd in a:
                        os.close(fd)
                    nfds += len(a)
            if not msg:
                return None, nfds
            data += msg
        return data, nfds

    def _correct_reply(self, request, flags, payload):
        if request == GET_FEATURES:
            return header(request, 8) + struct.pack("<Q", self.features)
        if request == GET_PROTOCOL_FEATURES:
            return header(request, 8) + struct.pack("<Q", self.protocol)
        if request == GET_VRING_BASE:
            return header(request, 8) + payload[:4] + struct.pack("<I", 0)
        if flags & NEED_REPLY:
            return header(request, 8) + struct.pack("<Q", 0)
        return None

    def _serve(self, conn):
        n = 0
        try:
            while True:
                head, nfds = self._recv(conn, HDR.size)
                if head is None:
                    return
                request, flags, size = HDR.unpack(head)
                payload, more = self._recv(conn, size) if size else (b"", 0)
                if payload is None:
                    return
                self.requests.append((request, flags, payload, nfds + more))
                reply = self._correct_reply(request, flags, payload)
                action = self.misbehave(n, request, reply)
                n += 1
                if action is None:
                    if reply is not None:
                        conn.sendall(reply)
                elif action[0] == "reply":
                    extra = action[2] if len(action) > 2 else []
                    anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", extra))] if extra else []
                    conn.sendmsg([action[1]], anc)
                elif action[0] == "close":
                    conn.shutdown(socket.SHUT_RDWR)
                    return
                elif action[0] == "unasked":  # in one send with the reply: no race with the next request
                    conn.sendall((reply or b"") + action[1])
                # "silence": nothing
        except OSError:
            return

    def close(self):
        self._stopping = True
        try:
            self.listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.listener.close()
        for c in self._conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            c.close()
        self._thread.join(5)
        for t in self._serving:
            t.join(5)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
