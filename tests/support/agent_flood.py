"""A fake agent that floods one session with frames the window does not cover (finding 2 of
issue 12): the host client must stay bounded in memory.

Usage: python -m support.agent_flood live|timed_out MIB
  live       exec_stream() got its Process, whose owner is not reading yet
  timed_out  exec() timed out (the agent never sends EXITED), so the session is abandoned
Prints `grew_mib=<n>`: how much the process's RSS grew while MIB MiB of STARTED frames
arrived for that session (then a PING round trip, so the reader has taken them all)."""
import os
import socket
import sys
import threading

from vmm.agent import AgentClient
from vmm.agent import protocol as P
from vmm.agent.errors import AgentError
from vmm.agent.protocol import G, T


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def read_frame(sock):
    def exact(n):
        data = b""
        while len(data) < n:
            more = sock.recv(n - len(data))
            if not more:
                raise EOFError
            data += more
        return data
    length, sid, type_, _ = P.HEADER.unpack(exact(P.HDR_LEN))
    return sid, type_, exact(length)


def agent(sock, mib, flooded):
    sock.sendall(P.frame(0, T.READY, P.encode([(G.VERSION, 1)])))
    try:
        sid, type_, _ = read_frame(sock)
        assert type_ == T.EXEC
        sock.sendall(P.frame(sid, T.STARTED, P.encode([(G.PID, 7)])))
        flooded.wait()       # until the client side is in the state under test
        chunk = P.frame(sid, T.STARTED, bytes(P.MAX_PAYLOAD))
        for _ in range(mib):
            sock.sendall(chunk)
        while True:          # answer the PING; ignore the rest (SIGNAL, CREDIT)
            s, type_, _ = read_frame(sock)
            if type_ == T.PING:
                sock.sendall(P.frame(s, T.DONE, P.encode([(G.NOW_NS, 1)])))
    except (OSError, EOFError):
        pass


def main(mode, mib):
    a, b = socket.socketpair()
    go = threading.Event()
    threading.Thread(target=agent, args=(b, mib, go), daemon=True).start()
    client = AgentClient(a)
    client.wait_ready(10)
    if mode == "live":
        client.exec_stream(["sleep", "100"], timeout=10)   # its Process is never read
    else:
        try:
            client.exec(["sleep", "100"], timeout=0.1)
            raise SystemExit("exec did not time out")
        except AgentError:
            pass
    base = rss()
    go.set()
    try:
        client.ping(timeout=120)
    except AgentError:
        pass     # a client that gave up on the flooding connection is fine too
    grew = (rss() - base) >> 20
    print(f"grew_mib={grew}")
    client.close()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
