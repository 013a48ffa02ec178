"""Domain rules on a real guest: the guest resolves names through a DNS server the test
runs, our virtio-net device learns the answers, and `allow@name` opens exactly those
addresses under a catch-all deny.

Everything runs inside a network namespace this test creates (`unshare -n`): a veth
interface carries the test's addresses (a DNS server on 192.0.2.53, web servers on
198.51.100.10 and .11, documentation ranges), passt and the VMM live in the namespace
too, so no packet can leave the machine and neither the internet nor the host's resolver
is ever asked. The test re-runs this file as the namespace's child (`__main__` below).

qemu by default; VMM_TEST_ENGINE=kvm runs it where a Linux guest boots under /dev/kvm.
"""
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time

import pytest

TESTS = os.path.dirname(os.path.abspath(__file__))
if __name__ == "__main__":  # the child: import our checkout and tests/support like pytest does
    sys.path[:0] = [TESTS, os.path.dirname(TESTS)]

from support.dns_frames import a, response  # noqa: E402
from support.sandbox_image import have_busybox  # noqa: E402
from support.test_engine import ENGINE, engine_marks  # noqa: E402

RESOLVER = "192.0.2.53"
ALLOWED, BLOCKED = "198.51.100.10", "198.51.100.11"
NAMES = {"allowed.test.example": ALLOWED, "blocked.test.example": BLOCKED}
RULE = "allow@allowed.test.example:tcp:8080"
T = 30

pytestmark = [pytest.mark.slow, *engine_marks(),
              pytest.mark.skipif(not have_busybox(), reason="no /bin/busybox (busybox-static)"),
              pytest.mark.skipif(not shutil.which("musl-gcc"), reason="no musl-gcc (musl-tools)"),
              pytest.mark.skipif(not shutil.which("passt"), reason="no passt"),
              pytest.mark.skipif(not shutil.which("unshare") or not shutil.which("ip"),
                                 reason="no unshare or ip (util-linux, iproute2)")]


def test_allow_domain_rule_opens_only_the_resolved_address(kernel_path, image):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        p for p in [TESTS, os.path.dirname(TESTS), os.environ.get("PYTHONPATH", "")] if p))
    r = subprocess.run(["unshare", "-n", sys.executable, os.path.abspath(__file__), str(image)],
                       capture_output=True, text=True, timeout=300, env=env)
    if r.returncode == 77:
        pytest.skip(r.stdout.strip() or r.stderr.strip())
    assert r.returncode == 0, f"rc {r.returncode}\n{r.stdout}\n{r.stderr[-4000:]}"
    got = json.loads(r.stdout.strip().splitlines()[-1])
    assert got["before"] == "refused", got                 # the address alone is not allowed
    assert ALLOWED in got["lookup_allowed"], got            # the guest's resolver answered ...
    assert got["fetch_allowed"].endswith("hello from 198.51.100.10\n"), got   # ... and it opened
    assert BLOCKED in got["lookup_blocked"], got
    assert got["fetch_blocked"] == "refused", got           # a name no rule allows
    assert got["hits"] >= 1 and got["deny_hits"] >= 2 and got["dns_learned"] >= 1, got
    assert got["queries"] >= 2, got


# ---- the child, inside the namespace --------------------------------------------------

def _sh(*cmd):
    subprocess.run(cmd, check=True, capture_output=True)


def _network():
    _sh("ip", "link", "set", "lo", "up")
    # A veth pair, both ends here (the dummy driver is not in every kernel): v0 carries
    # the test's addresses and the default route passt wants for an outward interface.
    _sh("ip", "link", "add", "v0", "type", "veth", "peer", "name", "v1")
    for addr in (RESOLVER + "/24", ALLOWED + "/24", BLOCKED + "/32"):
        _sh("ip", "addr", "add", addr, "dev", "v0")
    _sh("ip", "link", "set", "v1", "up")
    _sh("ip", "link", "set", "v0", "up")
    _sh("ip", "route", "add", "default", "dev", "v0")


def _dns_server(counter):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((RESOLVER, 53))

    def serve():
        while True:
            q, peer = s.recvfrom(512)
            ident, = struct.unpack("!H", q[:2])
            labels, i = [], 12
            while i < len(q) and q[i]:
                labels.append(q[i + 1:i + 1 + q[i]].decode())
                i += 1 + q[i]
            qname, qtype = ".".join(labels), struct.unpack("!H", q[i + 1:i + 3])[0]
            counter.append(qname)
            answers = [a(qname, NAMES[qname], ttl=60)] if qname in NAMES and qtype == 1 else []
            msg = bytearray(response(qname, answers, qtype=qtype,
                                     flags=0x8180 if qname in NAMES else 0x8183))
            msg[0:2] = struct.pack("!H", ident)
            s.sendto(bytes(msg), peer)

    threading.Thread(target=serve, daemon=True).start()


def _web_server(addr):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((addr, 8080))
    s.listen(8)

    def serve():
        while True:
            c, _ = s.accept()
            with c:
                c.recv(1024)
                c.sendall(f"HTTP/1.0 200 OK\r\n\r\nhello from {addr}\n".encode())

    threading.Thread(target=serve, daemon=True).start()


def _child(image):
    import vmm
    from vmm.net.network import Network
    try:
        _network()
    except subprocess.CalledProcessError as e:
        print(f"cannot set up the test namespace: {e.stderr.decode().strip()}")
        sys.exit(77)
    queries = []
    _dns_server(queries)
    _web_server(ALLOWED)
    _web_server(BLOCKED)
    net = Network(scope="public", rules=[RULE, "deny@0.0.0.0/0"], dns=RESOLVER)
    out = {}
    with vmm.Sandbox.create(image, engine=ENGINE, boot_timeout=60, network=net) as sb:
        def sh(cmd):
            return sb.exec(["sh", "-c", cmd], timeout=T).stdout.decode()

        def fetch(addr):
            # nc by address (static glibc's resolver is not usable in this busybox); the
            # request is not half-closed (see tests/test_sandbox_net.py). A refusal must be
            # the policy's RST, at once, not nc giving up after its 10 s.
            t0 = time.monotonic()
            r = sh(f"{{ printf 'GET / HTTP/1.0\\r\\n\\r\\n'; sleep 2; }} | nc -w 10 {addr} 8080 "
                   "|| echo refused")
            if r.strip().endswith("refused"):
                return "refused" if time.monotonic() - t0 < 5 else "timed out"
            return r

        out["before"] = fetch(ALLOWED)
        out["lookup_allowed"] = sh("nslookup allowed.test.example 2>&1")   # busybox's own resolver
        out["fetch_allowed"] = fetch(ALLOWED)
        out["lookup_blocked"] = sh("nslookup blocked.test.example 2>&1")
        out["fetch_blocked"] = fetch(BLOCKED)
        stats = sb.network.stats()
        hits = {r["rule"]: r["hits"] for r in stats["rules"]}
        out["hits"], out["deny_hits"] = hits[RULE], hits["deny@0.0.0.0/0"]
        out["dns_learned"] = stats["dns_learned"]
    out["queries"] = len(queries)
    print(json.dumps(out))


if __name__ == "__main__":
    _child(sys.argv[1])
