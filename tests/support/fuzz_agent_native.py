"""The guest agent's frame handling against a hostile host: the agent's own sources built
natively with gcc -fsanitize=address,undefined (not the static musl build), run as a host
process and fed random and mutated frames over many connections.

Usage: python -m support.fuzz_agent_native SECONDS ROUNDS SEED DIR

The agent runs as root here, so it is confined: new mount, UTS, network and PID namespaces
(it is PID 2 there: no PID-1 duties), every mount remounted read-only except DIR/work (its
cwd) and DIR/run (its socket), and the requests name only paths under DIR/work and
harmless programs (true, cat); EXEC's ROOT names DIR/work or a root under it whose links
lead out of it, and its MOUNTs and JOINs are sent whole, misshapen and hostile (a child's
mounts are its own namespace's, a slave of the confined one).
What must hold: no sanitizer report and no crash, every frame the agent sends is well
formed, and after the run a clean connection still gets an answer to PING, and SHUTDOWN
(which no random frame may be: it ends the agent) a DONE and a clean exit.
"""
from __future__ import annotations

import hashlib
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from support import sanitized_core
from support.fuzz_run import Budget
from vmm.agent import protocol as P
from vmm.agent.protocol import G, T

SRC = sanitized_core.ROOT / "guest" / "agent"
# musl declares WCOREDUMP in a header glibc does not pull in; the agent sources define
# _GNU_SOURCE themselves, so the prelude does the same first.
PRELUDE = "#define _GNU_SOURCE\n#include <sys/wait.h>\n"
CFLAGS = ["-std=gnu11", "-O1", "-g", "-Wall", "-Wextra", *sanitized_core.SANITIZE]
# Confinement: everything read-only but DIR/work (the agent's cwd, where the requests' paths
# point) and DIR/run (its socket, which no request names), each bind-mounted onto itself
# first so it stays writable; the agent does not start if the root is still writable.
CONFINE = r"""
mount --bind "$1" "$1" && mount --bind "$2" "$2" || exit 90
awk '{print $5}' /proc/self/mountinfo | sort -r | while read -r mp; do
    [ "$mp" = "$1" ] || [ "$mp" = "$2" ] || mount -o remount,bind,ro "$mp" 2>/dev/null
done
if touch /.fuzz-probe 2>/dev/null; then rm -f /.fuzz-probe; echo "root still writable" >&2; exit 91; fi
cd "$1" && "$3" --unix "$2/agent.sock"
"""
ARGV = [b"/bin/true", b"/bin/cat", b"cat", b"true", b"/nonexistent/x", b"", b"\xff"]
REQUESTS = [T.EXEC, T.PING, T.CONFIG, T.FS_READ, T.FS_WRITE, T.FS_STAT, T.FS_LIST, T.FS_MKDIR,
            T.FS_REMOVE]
IN_SESSION = [T.STDIN, T.SIGNAL, T.RESIZE, T.DATA, T.CREDIT]


def build() -> Path:
    """The sanitized agent, cached by its sources and flags next to the sanitized core."""
    h = hashlib.sha256((PRELUDE + " ".join(CFLAGS)).encode())
    sources = sorted(SRC.glob("*.c")) + sorted(SRC.glob("*.h"))
    for f in sources:
        h.update(f.name.encode() + b"\0" + f.read_bytes())
    dest = sanitized_core.cache_root() / f"agent-{h.hexdigest()[:16]}"
    if (dest / "agent").exists():
        return dest / "agent"
    work = Path(str(dest) + f".tmp{os.getpid()}")
    work.mkdir(parents=True, exist_ok=True)
    try:
        (work / "prelude.h").write_text(PRELUDE)
        r = subprocess.run(["gcc", "-include", str(work / "prelude.h"), *CFLAGS, "-o", str(work / "agent"),
                            *[str(f) for f in sources if f.suffix == ".c"]], capture_output=True, text=True)
        if r.returncode != 0:
            raise sanitized_core.BuildError(f"sanitized agent build failed:\n{r.stderr[-4000:]}")
        try:
            os.rename(work, dest)
        except OSError:
            if not (dest / "agent").exists():
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return dest / "agent"


class Fuzzer:
    def __init__(self, rnd, d):
        self.rnd, self.dir = rnd, d
        self.sent = self.frames_in = 0

    def path(self):
        r = self.rnd
        return r.choice([str(self.dir / "f"), str(self.dir / "d" / "g"), "f", "d", "d/../f",
                         str(self.dir / ("x" * r.randrange(1, 300))), "", "\x00", str(self.dir)])

    def value(self, tag):
        r = self.rnd
        if tag in P.INT_TAGS and r.random() < 0.8:
            return P.U64.pack(r.choice([0, 1, 24, 80, 0o755, 2**31, 2**63, 2**64 - 1, r.getrandbits(64)]))
        if tag == G.PATH or tag == G.CWD or tag == G.WORKDIR:
            return self.path().encode()
        if tag == G.ARGV:
            return r.choice(ARGV)
        if tag == G.RLIMIT:
            return P.RLIMIT.pack(r.randrange(-2, 20) & 0xFFFFFFFF, r.getrandbits(64), r.getrandbits(64)) \
                if r.random() < 0.8 else r.randbytes(r.randrange(0, 30))
        if tag == G.GROUPS:   # u32 gids: sometimes ragged, too many, or (gid_t)-1
            n = r.choice([0, 1, 3, 1024, 1025])
            raw = b"".join(P.U64.pack(r.choice([0, 10, 65534, 2**32 - 1, r.getrandbits(32)]))[:4]
                           for _ in range(n))
            return raw if r.random() < 0.9 else raw + b"\x01"
        if tag == G.CAPS:     # five masks: mostly valid bits, sometimes above 40 or short
            if r.random() < 0.15:
                return r.randbytes(r.randrange(0, 48))
            return P.CAPS.pack(*(r.choice([0, 1 << 10, (1 << 41) - 1, r.getrandbits(41),
                                           r.getrandbits(64)]) for _ in range(5)))
        if tag == G.ROOT:     # a process's own root: mostly real dirs (one with hostile links)
            return r.choice([str(self.dir / "root"), str(self.dir), str(self.dir / "f"),
                             str(self.dir / "nonexistent"), "relative", "", "/a\x00b",
                             "/" + "x" * 4100]).encode()
        if tag == G.MOUNT:    # u32 flags, SOURCE, NUL, DESTINATION: sometimes misshapen
            raw = P.U64.pack(r.choice([0, 1, 2, 3, 4, r.getrandbits(32)]))[:4]
            raw += r.choice([b"", b"size=1m,mode=700", b"nr_inodes=x", str(self.dir).encode(),
                             str(self.dir / "f").encode(), b"/nonexistent", b"relative",
                             b"x" * 5000])
            if r.random() < 0.9:
                raw += b"\0" + r.choice([b"/m", b"/up/m", b"/etc/m", b"/../../m", b"/etc",
                                          b"/", b"/a/b/c/../../d", b"", b"rel", b"/d\0e",
                                          b"/" + b"y" * 5000])
            return raw if r.random() < 0.9 else raw[:r.randrange(0, 6)]
        if tag == G.JOIN and r.random() < 0.9:   # pids of this PID namespace, and nonsense
            return P.U64.pack(r.choice([0, 1, 2, 3, 4, 5, 2**22, 2**22 + 1, 2**64 - 1]))
        if tag in (G.UMASK, G.NO_NEW_PRIVS, G.READONLY_ROOT, G.ROOT_READONLY) and r.random() < 0.9:
            return P.U64.pack(r.choice([0, 1, 2, 0o22, 0o777, 0o1000, 2**64 - 1]))
        if tag == G.ENV:
            return r.choice([b"A=b", b"noequals", b"=", b"PATH=/bin:/usr/bin", b"X=" + b"y" * 1000])
        return r.choice([b"", b"fuzz", b"root", b"0", b"65534", b"nobody", r.randbytes(r.randrange(1, 20))])

    def fields(self, type_):
        r = self.rnd
        tags = {T.EXEC: [G.ARGV, G.ARGV, G.ENV, G.CWD, G.USER, G.TTY, G.ROWS, G.COLS, G.RLIMIT,
                         G.GROUPS, G.UMASK, G.NO_NEW_PRIVS, G.CAPS, G.ROOT, G.MOUNT, G.MOUNT,
                         G.ROOT_READONLY, G.JOIN],
                # READONLY_ROOT: refused, the agent being PID 2 here (and the root is
                # read-only already)
                T.CONFIG: [G.ENV, G.WORKDIR, G.HOSTNAME, G.RLIMIT, G.READONLY_ROOT],
                T.SIGNAL: [G.SIGNAL], T.RESIZE: [G.ROWS, G.COLS], T.CREDIT: [G.BYTES]}.get(
                    type_, [G.PATH, G.OFFSET, G.LENGTH, G.MODE, G.PARENTS, G.RECURSIVE, G.APPEND])
        out = b""
        if type_ == T.EXEC and r.random() < 0.9:
            out += P.TLV_HEAD.pack(G.ARGV, 9) + b"/bin/true"
        for _ in range(r.randrange(0, 8)):
            tag = r.choice(tags) if r.random() < 0.9 else r.getrandbits(16)
            v = self.value(tag)
            out += P.TLV_HEAD.pack(tag, len(v)) + v
        if type_ == T.EXEC and r.random() < 0.02:   # more argv entries than the agent takes
            out += (P.TLV_HEAD.pack(G.ARGV, 1) + b"x") * 4100
        k = r.random()
        if k < 0.05:
            out += P.TLV_HEAD.pack(r.choice(tags), r.choice([1 << 20, 2**32 - 1]))
        elif k < 0.1 and out:
            out = out[:r.randrange(len(out))]
        elif k < 0.13:
            out += r.randbytes(r.randrange(1, 6))
        return out

    def frames(self):
        """One connection's worth of hostile frames."""
        r = self.rnd
        sids = []
        out = []
        for _ in range(r.randrange(1, 40)):
            k = r.random()
            if k < 0.4 or not sids:
                sid = r.choice([r.randrange(1, 50), 0, 2**32 - 1]) if r.random() < 0.95 else r.getrandbits(32)
                type_ = r.choice(REQUESTS)
                sids.append(sid)
                out.append(P.HEADER.pack(0, sid, type_, 0) + self.fields(type_))
            elif k < 0.85:
                type_ = r.choice(IN_SESSION)
                payload = r.randbytes(r.choice([0, 1, 100, 65536])) if type_ in (T.STDIN, T.DATA) \
                    else self.fields(type_)
                out.append(P.HEADER.pack(0, r.choice(sids), type_, 0) + payload)
            elif k < 0.95:
                type_ = r.getrandbits(16)
                type_ = 0x7777 if type_ == T.SHUTDOWN else type_   # that one ends the agent: last
                out.append(P.HEADER.pack(0, r.choice(sids + [7]), type_, r.getrandbits(16))
                           + r.randbytes(r.randrange(0, 64)))
            else:   # a header that lies about its length, then garbage
                out.append(P.HEADER.pack(0, 1, T.PING, 0)[:r.randrange(1, 12)] + r.randbytes(r.randrange(0, 64)))
                break
        # Fix up lengths (the header's first field) unless this frame is the liar.
        fixed = []
        for f in out:
            if len(f) >= P.HDR_LEN and r.random() < 0.97:
                f = P.U64.pack(len(f) - P.HDR_LEN)[:4] + f[4:]
            fixed.append(f)
        return fixed


def read_frames(sock, bad, counter):
    """Drain what the agent sends; record any malformed frame."""
    buf = b""
    while True:
        try:
            data = sock.recv(1 << 20)
        except OSError:
            return
        if not data:
            return
        buf += data
        while len(buf) >= P.HDR_LEN:
            length, sid, type_, flags = P.HEADER.unpack_from(buf)
            if length > P.MAX_PAYLOAD:
                bad.append(f"agent sent a frame of {length} bytes (type 0x{type_:x})")
                return
            if len(buf) < P.HDR_LEN + length:
                break
            buf = buf[P.HDR_LEN + length:]
            counter[0] += 1


def connect(path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(path)
    return s


def listening(path):
    try:
        connect(path).close()
        return True
    except OSError:
        return False


def main(budget, seed, d):
    d = Path(d).resolve()
    work, run = d / "work", d / "run"
    work.mkdir()
    run.mkdir()
    # a root for EXEC's ROOT with links that lead out of it (the child's mounts must not)
    (work / "root" / "dir").mkdir(parents=True)
    os.symlink("/", work / "root" / "etc")
    os.symlink("../../../..", work / "root" / "up")
    agent = build()
    log = open(d / "agent.log", "w+")
    proc = subprocess.Popen(["unshare", "-m", "-u", "-n", "-p", "-f", "--mount-proc", "sh", "-c", CONFINE,
                             "sh", str(work), str(run), str(agent)], stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                            env=dict(os.environ, ASAN_OPTIONS=sanitized_core.ASAN_OPTIONS,
                                     UBSAN_OPTIONS=sanitized_core.UBSAN_OPTIONS),
                            start_new_session=True)
    sock_path = str(run / "agent.sock")
    try:
        deadline = time.monotonic() + 20
        while not listening(sock_path):   # the file appears at bind(), before listen()
            if proc.poll() is not None or time.monotonic() > deadline:
                log.seek(0)
                raise SystemExit(f"the sanitized agent did not start (rc {proc.poll()}):\n{log.read()[-3000:]}")
            time.sleep(0.02)
        rnd = random.Random(seed)
        fz = Fuzzer(rnd, work)
        bad, counter = [], [0]
        while budget.more():
            try:
                s = connect(sock_path)
            except OSError as e:
                raise AssertionError(f"round {budget.rounds}: cannot connect to the agent: {e}")
            reader = threading.Thread(target=read_frames, args=(s, bad, counter), daemon=True)
            reader.start()
            try:
                for f in fz.frames():
                    s.sendall(f)
                    fz.sent += 1
                if rnd.random() < 0.5:
                    time.sleep(0.01)
            except OSError:
                pass   # the agent may drop a connection that broke the protocol
            try:
                if rnd.random() < 0.3:   # a half-close first: the agent answers, then EOF
                    s.shutdown(socket.SHUT_WR)
                    reader.join(0.2)
                s.shutdown(socket.SHUT_RDWR)   # wakes the reader (close() alone would not)
            except OSError:
                pass
            reader.join(5)
            s.close()
            assert proc.poll() is None, f"round {budget.rounds}: the agent died (rc {proc.returncode})"
        assert not bad, bad[0]
        # Still serving: a clean PING on a fresh connection.
        s = connect(sock_path)
        s.sendall(P.frame(0x5eed, T.PING))
        got, done = b"", P.HEADER.pack(0, 0x5eed, T.DONE, 0)[4:10]   # session and type
        while done not in got:
            more = s.recv(65536)
            assert more, "the agent closed a clean connection instead of answering PING"
            got += more
        # SHUTDOWN: DONE, then the agent ends everything and exits 0.
        s.sendall(P.frame(0x5eee, T.SHUTDOWN))
        got, done = b"", P.HEADER.pack(0, 0x5eee, T.DONE, 0)[4:10]
        while done not in got:
            more = s.recv(65536)
            assert more, "the agent closed the connection instead of answering SHUTDOWN"
            got += more
        s.close()
        assert proc.wait(20) == 0, f"the agent exited with {proc.returncode} after SHUTDOWN"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
        log.seek(0)
        # The agent's report explains whatever failed above (a refused connection, a death):
        # it goes first.
        found = sanitized_core.report(log.read())
        if found:
            print(f"sanitizer report from the agent:\n{found}", file=sys.stderr, flush=True)
            os._exit(1)
    print(f"rounds={budget.rounds} frames_sent={fz.sent} frames_received={counter[0]}")


if __name__ == "__main__":
    main(Budget.from_argv(sys.argv[1:3]), int(sys.argv[3]), sys.argv[4])
