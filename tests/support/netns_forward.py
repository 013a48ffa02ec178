"""A TCP forwarder from inside a network namespace to a server in this process's own: it
listens on host:port in the namespace (a socket stays in the namespace it was made in,
so a short-lived thread that joined the namespace makes it) and relays each connection
to the same host:port here. Lets a daemon the test runs in a namespace of its own reach a
loopback server of the test (the local registry) at the address the test knows it by.

    fwd = NamespaceForward("/var/run/netns/x", "127.0.0.1", 5000)
    ...
    fwd.close()
"""
import socket
import threading

from vmm.runtime.netns import enter

CHUNK = 1 << 16


class NamespaceForward:
    def __init__(self, netns: str, host: str, port: int):
        self.target = (host, port)
        made = {}

        def make():
            try:
                enter(netns)     # this thread only; it ends with the socket made
                s = socket.socket()
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind((host, port))
                s.listen(64)
                made["sock"] = s
            except BaseException as e:
                made["error"] = e
        t = threading.Thread(target=make)
        t.start()
        t.join()
        if "error" in made:
            raise made["error"]
        self.sock = made["sock"]
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self._closed:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=10)
                upstream.settimeout(None)
            except OSError:
                conn.close()
                continue
            for a, b in ((conn, upstream), (upstream, conn)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src, dst):
        try:
            while True:
                data = src.recv(CHUNK)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            try:
                dst.shutdown(socket.SHUT_WR)
            except OSError:
                pass

    def close(self):
        self._closed = True
        self.sock.close()
