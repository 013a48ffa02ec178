"""The host's agent client (vmm.agent) against a hostile fake agent on a socketpair.

Usage: python -m support.fuzz_agent_client SECONDS ROUNDS SEED

Each round opens a client on one end of a socketpair; the fake agent on the other end reads
the client's requests and answers with a mix of plausible replies, mutated ones (random
types, sessions and flags, broken TLVs, integers of the wrong width, replies after the
final one), unsolicited frames, floods of frames that do not count against the window,
silence, garbage, oversized headers and hang-ups. Meanwhile worker threads call the public
API (exec, exec_stream + write, ping, configure, fs.*), always with a timeout.

What must hold: every call returns or raises an AgentError (ValueError for our own bad
arguments) within its timeout plus a grace period, never another exception; closing the
client ends its threads; and the process's memory stays bounded while the agent floods.
The fake agent's choices come from Random(seed) per round; the threads' timing does not.
"""
import os
import random
import select
import socket
import sys
import threading
import time

from support.fuzz_run import Budget
from vmm.agent import AgentClient, Capabilities
from vmm.agent import protocol as P
from vmm.agent.errors import AgentError
from vmm.agent.protocol import G, T

GRACE = 5.0 + 5.0          # the client's KILL_GRACE_S after an exec timeout, plus slack for a loaded CI
FLOOD_BYTES = 48 << 20     # what one flood sends: far more than any sane buffer
MEMORY_LIMIT = 256 << 20   # RSS growth allowed over the whole run
TYPES = [v for k, v in vars(T).items() if not k.startswith("_")]
INT_TAGS = sorted(P.INT_TAGS)


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class FakeAgent:
    def __init__(self, sock, rnd):
        self.sock, self.rnd = sock, rnd
        self.sock.settimeout(2.0)
        self.buf = b""
        self.sessions = []
        self.sent = 0

    def out(self, sid, type_, payload=b"", flags=0, length=None):
        hdr = P.HEADER.pack(len(payload) if length is None else length, sid & 0xFFFFFFFF, type_ & 0xFFFF, flags)
        self.sock.sendall(hdr + payload)
        self.sent += len(hdr) + len(payload)

    def fields(self):
        """A TLV payload: mostly well formed, sometimes not."""
        r = self.rnd
        out = b""
        for _ in range(r.randrange(0, 6)):
            tag = r.choice(INT_TAGS + [G.MESSAGE, G.KIND, G.NAME, G.HOSTNAME, r.getrandbits(16)])
            if tag in P.INT_TAGS and r.random() < 0.85:
                out += P.tlv(tag, r.choice([0, 1, 2**63, 2**64 - 1, r.getrandbits(64)]))
            else:
                val = r.choice([b"", b"x" * r.randrange(1, 64), r.randbytes(r.randrange(1, 64)),
                                "\udcff".encode("utf-8", "surrogateescape"), b"\xff\xfe"])
                out += P.TLV_HEAD.pack(tag, len(val)) + val
        k = r.random()
        if k < 0.05:
            out += P.TLV_HEAD.pack(r.getrandbits(16), 1 << 30)          # claims more than is there
        elif k < 0.1:
            out += r.randbytes(r.randrange(1, 6))                          # a truncated header
        elif k < 0.15 and out:
            out = out[:r.randrange(len(out))]
        return out

    def reply(self, sid, type_):
        """Answer one request: plausibly, mutated, or not at all."""
        r = self.rnd
        if r.random() < 0.1:
            return   # silence: the caller's timeout must end its wait
        plausible = {
            T.EXEC: [(T.STARTED, P.encode([(G.PID, 42)])), (T.STDOUT, b"out"), (T.STDERR, b"err"),
                     (T.STDOUT, b""), (T.EXITED, P.encode([(G.CODE, r.randrange(256))]))],
            T.FS_READ: [(T.DATA, r.randbytes(r.randrange(1, 5000))), (T.DONE, b"")],
            T.FS_LIST: [(T.ENTRIES, self.fields()), (T.DONE, b"")],
            T.FS_STAT: [(T.STAT, self.fields())],
            T.FS_WRITE: [(T.CREDIT, P.encode([(G.BYTES, r.choice([1, 4096, P.WINDOW, 2**64 - 1])) ])),
                         (T.DONE, b"")],
        }.get(type_, [(T.DONE, self.fields())])
        if r.random() < 0.15:
            plausible = [(r.choice([T.ERROR, T.FAILED]), self.fields())]
        for t, payload in plausible:
            flags = 0
            if r.random() < 0.2:   # mutate this frame
                k = r.randrange(5)
                if k == 0:
                    t = r.choice(TYPES + [r.getrandbits(16)])
                elif k == 1:
                    payload = self.fields()
                elif k == 2:
                    flags = r.getrandbits(16)
                elif k == 3:
                    sid = r.choice(self.sessions + [0, r.getrandbits(32)])
                else:
                    payload = r.randbytes(r.randrange(0, 300))
            self.out(sid, t, payload, flags)
        if r.random() < 0.1:       # more after the final frame
            self.out(sid, r.choice(TYPES), self.fields())

    def flood(self):
        """Frames the window does not cover, for live and forgotten sessions alike."""
        r = self.rnd
        chunk = r.randbytes(r.choice([1024, 64 * 1024, P.MAX_PAYLOAD]))
        t = r.choice([T.STARTED, T.STAT, T.EXITED, T.CREDIT, 0x7777])
        sids = self.sessions[-4:] or [1]
        while self.sent < FLOOD_BYTES:
            self.out(r.choice(sids), t, chunk)

    def requests(self):
        """The sessions the client opened since the last call, as (sid, first type); SIGNALs
        are mostly answered at once (an exec that timed out waits for its EXITED)."""
        try:
            data = self.sock.recv(1 << 20)
        except (socket.timeout, BlockingIOError):
            return []
        if not data:
            raise EOFError
        self.buf += data
        got = []
        while len(self.buf) >= P.HDR_LEN:
            length, sid, type_, _ = P.HEADER.unpack_from(self.buf)
            if len(self.buf) < P.HDR_LEN + length:
                break
            self.buf = self.buf[P.HDR_LEN + length:]
            if sid not in self.sessions:
                self.sessions.append(sid)
                got.append((sid, type_))
            elif type_ == T.SIGNAL and self.rnd.random() < 0.8:   # a kill after a timeout
                self.out(sid, T.EXITED, P.encode([(G.SIGNAL, 9)]))
        return got

    def run(self, stop):
        r = self.rnd
        try:
            if r.random() < 0.9:
                self.out(0, T.READY, P.encode([(G.VERSION, 1)]) if r.random() < 0.8 else self.fields())
            while not stop.is_set():
                ready, _, _ = select.select([self.sock], [], [], 0.05)
                for sid, type_ in (self.requests() if ready else []):
                    self.reply(sid, type_)
                k = r.random()
                if k < 0.02:
                    self.out(r.choice(self.sessions + [0, 7]), r.choice(TYPES), self.fields())
                elif k < 0.025:
                    self.sock.sendall(r.randbytes(r.randrange(1, 100)))          # garbage
                elif k < 0.027:
                    self.out(1, T.STDOUT, b"", length=P.MAX_PAYLOAD + 1 + r.randrange(1 << 20))
                elif k < 0.03:
                    self.sock.close()                                           # hang up
                    return
                elif k < 0.033 and self.sessions:
                    self.flood()
        except (OSError, EOFError):
            pass


def operation(client, rnd):
    """One random API call, with its timeout; returns (name, fn, timeout)."""
    t = rnd.choice([0.05, 0.2, 0.5])
    path = rnd.choice(["/tmp/f", "/", "x" * 300])

    def streaming():
        with client.exec_stream(["cat"], timeout=t) as p:
            p.write(b"z" * rnd.choice([10, 300 * 1024]), timeout=t)
            p.wait(timeout=t)

    def privileged():   # the EXEC privilege fields, some values the client must refuse
        caps = rnd.choice([None, Capabilities(), Capabilities(bounding=["CAP_KILL"], ambient=[40])])
        client.exec(["true"], timeout=t, groups=rnd.choice([None, [], [1, 2], [-1], list(range(1025))]),
                    umask=rnd.choice([None, 0o22, 0o1000]), no_new_privileges=rnd.random() < 0.5,
                    capabilities=caps)

    return rnd.choice([
        ("exec", lambda: client.exec(["true"], timeout=t, stdin=rnd.choice([None, b"in"]))),
        ("exec privileged", privileged),
        ("exec_stream", streaming),
        ("ping", lambda: client.ping(timeout=t)),
        ("configure", lambda: client.configure(env={"A": "b"}, read_only_root=rnd.random() < 0.3,
                                                timeout=t)),
        ("fs.read", lambda: client.fs.read(path, timeout=t)),
        ("fs.write", lambda: client.fs.write(path, b"d" * rnd.choice([1, 70000]), timeout=t)),
        ("fs.stat", lambda: client.fs.stat(path, timeout=t)),
        ("fs.list", lambda: client.fs.list(path, timeout=t)),
        ("fs.mkdir", lambda: client.fs.mkdir(path, timeout=t)),
        ("fs.remove", lambda: client.fs.remove(path, timeout=t)),
    ]), t


def round_(rnd, counts, failures):
    a, b = socket.socketpair()
    stop = threading.Event()
    agent = FakeAgent(b, random.Random(rnd.getrandbits(64)))
    at = threading.Thread(target=agent.run, args=(stop,), daemon=True)
    at.start()
    client = AgentClient(a)
    workers = []
    for _ in range(rnd.randrange(1, 6)):
        (name, fn), t = operation(client, rnd)
        box = {}

        def call(fn=fn, box=box):
            try:
                fn()
                box["ok"] = True
            except (AgentError, ValueError) as e:
                box["err"] = type(e).__name__
            except BaseException as e:   # anything else is a finding
                box["bad"] = f"{type(e).__name__}: {e}"

        th = threading.Thread(target=call, daemon=True)
        th.start()
        workers.append((name, t, th, box, time.monotonic()))
    for name, t, th, box, started in workers:
        th.join(max(0.0, started + t + GRACE - time.monotonic()))
        if th.is_alive():
            failures.append(f"{name} (timeout {t}s) still running after {t + GRACE:.1f} s")
        elif "bad" in box:
            failures.append(f"{name} raised {box['bad']}")
        else:
            key = "ok" if "ok" in box else box["err"]
            counts[key] = counts.get(key, 0) + 1
    client.close()
    stop.set()
    at.join(5)
    b.close()
    counts["agent_bytes"] = counts.get("agent_bytes", 0) + agent.sent


def main(budget, seed):
    rnd = random.Random(seed)
    counts, failures = {}, []
    base = rss()
    threads = threading.active_count()
    peak = 0
    while budget.more() and not failures:
        round_(rnd, counts, failures)
        peak = max(peak, rss() - base)
    assert not failures, f"round {budget.rounds}: " + "; ".join(failures)
    # Closed clients leave no reader threads behind (a few may still be finishing).
    deadline = time.monotonic() + 10
    while threading.active_count() > threads + 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert threading.active_count() <= threads + 2, f"{threading.active_count() - threads} threads left"
    assert peak < MEMORY_LIMIT, f"the client grew by {peak >> 20} MiB while the agent flooded it"
    summary = " ".join(f"{k}={v}" for k, v in sorted(counts.items()))
    print(f"rounds={budget.rounds} peak_mib={peak >> 20} {summary}")


if __name__ == "__main__":
    main(Budget.from_argv(sys.argv[1:3]), int(sys.argv[3]))
