"""A sandbox's network against non-loopback addresses and under load, on real guests.

Everything that reaches a public or private (non-loopback) address runs the sandbox, and
so its passt, inside a network namespace this test makes (support/netns.py): TEST-NET-1
(192.0.2.0/24) stands for the internet, 10.77.0.0/24 for a private net, a DNS server and
HTTP servers of the test's own answer there, and nothing leads out of it. What is checked:
- DNS: a name the namespace's DNS server knows resolves in the guest through passt's
  forwarder (10.0.2.3), and the guest fetches from the address it got under scope public;
- a rule `deny@192.0.2.0/24` refuses that server at once (an RST, not a timeout) and its
  hit counter moves;
- the scope boundary: the private 10.77.0.1 is refused under public, reached under private.

Published ports need no namespace (the host side is 127.0.0.1): a UDP echo through a
published UDP port, and 100 concurrent connections through a published TCP port, each
checked byte for byte; and both under the default scope public, whose denial of the
gateway (the address passt presents a host client as) must not catch the guest's replies
(inbound flows, csrc/virtio/net_flows.c); and a first connection right after READY, which
reaches the guest only because the agent announces eth0 (a gratuitous ARP) before READY.

qemu by default; VMM_TEST_ENGINE=kvm runs the same tests where a Linux guest can boot.
"""
import concurrent.futures
import hashlib
import os
import shutil
import socket
import time

import pytest

from support import netns
from support.netns import NamespaceSandbox
from support.sandbox_image import MARKER, have_busybox
from support.test_engine import ENGINE, engine_marks

import vmm
from vmm.guest.initramfs import compile_static
from vmm.net.network import Network

pytestmark = [pytest.mark.slow, *engine_marks(),
              pytest.mark.skipif(not have_busybox(), reason="no /bin/busybox (busybox-static)"),
              pytest.mark.skipif(not shutil.which("musl-gcc"), reason="no musl-gcc (musl-tools)"),
              pytest.mark.skipif(not shutil.which("passt"), reason="no passt")]

BOOT_TIMEOUT = 60
T = 30
FAST = 10        # seconds: a refused connect must fail well before nc's 20 s timeout
GUEST_SRC = os.path.join(os.path.dirname(__file__), "guest")


@pytest.fixture(scope="module")
def need_netns():
    why = netns.unavailable()
    if why:
        pytest.skip(why)


def ns_sandbox(image, **network):
    return NamespaceSandbox(image, engine=ENGINE, network=network, boot_timeout=BOOT_TIMEOUT)


def ns_run(sb, cmd: str) -> str:
    r, _ = sb.exec(["sh", "-c", cmd], timeout=T)
    assert r.code == 0, (cmd, r, sb.log_tail())
    return r.stdout.decode()


def http_get(address: str, path: str) -> str:
    # nc by address (Debian's static busybox resolves no names itself: static glibc), the
    # request not half-closed (the sleep keeps nc's stdin open): Debian's passt of 2023-03
    # can loop on a connection the guest half-closed before the reply came.
    return f"{{ printf 'GET {path} HTTP/1.0\\r\\n\\r\\n'; sleep 2; }} | nc -w 10 {address} 80"


def refused(sb, address: str, port: int = 80):
    """(nc's exit status, seconds) of a connect to address:port from the guest."""
    r, seconds = sb.exec(["sh", "-c", f"echo x | nc -w 20 {address} {port}; echo rc=$?"],
                         timeout=T)
    return r.stdout.decode().strip().splitlines()[-1], seconds


def rule_hits(stats: dict) -> dict:
    return {row["rule"]: row["hits"] for row in stats["rules"]}


@pytest.fixture(scope="module")
def public_sb(need_netns, kernel_path, image):
    with ns_sandbox(image, scope="public") as sb:
        yield sb


def test_the_namespace_holds_only_the_test_interface(public_sb):
    # The child refused to boot unless isolated and checked passt runs in its namespace;
    # this shows what the namespace holds: lo and the test interface(s), nothing else.
    assert set(public_sb.info["links"]) - {"lo", netns.LINK, netns.PEER} == set()


def test_guest_resolves_a_name_from_the_namespace_dns(public_sb):
    out = ns_run(public_sb, f"nslookup {netns.TEST_NAME}")
    answer = out.split("Name:", 1)[-1]
    assert f"Address: {netns.PUBLIC_HTTP}" in answer, out
    assert (netns.TEST_NAME, 1) in public_sb.dns_queries()   # it came to our server
    r, _ = public_sb.exec(["nslookup", "no-such.test.internal"], timeout=T)
    assert r.code != 0 and netns.PUBLIC_HTTP.encode() not in r.stdout, r


def test_guest_fetches_by_name_under_scope_public(public_sb):
    out = ns_run(public_sb, f"a=$(nslookup {netns.TEST_NAME} | sed -n '/^Name:/,$ s/^Address: *//p');"
                            f" echo \"addr=$a\"; {http_get('$a', '/pkg.tar')}")
    assert out.startswith(f"addr={netns.PUBLIC_HTTP}\n"), out
    assert "HTTP/1.0 200" in out and out.endswith(netns.BODIES[netns.PUBLIC_HTTP].decode()), out
    assert (netns.PUBLIC_HTTP, "/pkg.tar") in public_sb.requests()


def test_private_address_is_refused_under_scope_public(public_sb):
    before = public_sb.stats()
    status, seconds = refused(public_sb, netns.PRIVATE_HTTP)
    assert status == "rc=1" and seconds < FAST, (status, seconds)
    after = public_sb.stats()
    assert after["resets"] > before["resets"], after
    assert rule_hits(after)["deny@10.0.0.0/8"] > rule_hits(before)["deny@10.0.0.0/8"], after
    assert not [r for r in public_sb.requests() if r[0] == netns.PRIVATE_HTTP]


def test_deny_rule_refuses_test_net_at_once_and_counts(need_netns, kernel_path, image):
    rule = "deny@192.0.2.0/24"
    with ns_sandbox(image, scope="public", rules=[rule]) as sb:
        assert rule_hits(sb.stats())[rule] == 0
        status, seconds = refused(sb, netns.PUBLIC_HTTP)
        assert status == "rc=1" and seconds < FAST, (status, seconds, sb.log_tail())
        stats = sb.stats()
        assert rule_hits(stats)[rule] > 0 and stats["resets"] >= 1, stats
        assert sb.requests() == []   # nothing reached the server
        # The rule covers the namespace's DNS server too, but the guest asks passt's
        # forwarder (10.0.2.3), which the policy allows: names still resolve.
        assert f"Address: {netns.PUBLIC_HTTP}" in ns_run(sb, f"nslookup {netns.TEST_NAME}")


def test_private_address_is_reached_under_scope_private(need_netns, kernel_path, image):
    with ns_sandbox(image, scope="private") as sb:
        out = ns_run(sb, http_get(netns.PRIVATE_HTTP, "/private"))
        assert "HTTP/1.0 200" in out and out.endswith(netns.BODIES[netns.PRIVATE_HTTP].decode()), out
        assert (netns.PRIVATE_HTTP, "/private") in sb.requests()
        hits = rule_hits(sb.stats())
        assert hits["allow@10.0.0.0/8"] > 0, hits
        # The metadata address stays refused under private.
        status, seconds = refused(sb, "169.254.169.254")
        assert status == "rc=1" and seconds < FAST, (status, seconds)


# --- published ports (loopback only: no namespace needed) --------------------------------

@pytest.fixture(scope="module")
def ports_sb(kernel_path, image):
    """Scope host, as tests/test_sandbox_net.py uses (the default scope public has its own
    test below)."""
    s = vmm.Sandbox.create(image, engine=ENGINE, boot_timeout=BOOT_TIMEOUT,
                           network=Network(scope="host", ports=["0:8080", "0:7777/udp"]))
    yield s
    s.stop()


def run(sb, cmd: str) -> str:
    r = sb.exec(["sh", "-c", cmd], timeout=T)
    assert r.code == 0, (cmd, r)
    return r.stdout.decode()


def wait_listening(sb, port: int, proto: str) -> None:
    for _ in range(100):
        if f":{port} " in run(sb, f"netstat -ln{proto}"):
            return
        time.sleep(0.1)
    raise AssertionError(f"nothing listens on {port}/{'udp' if proto == 'u' else 'tcp'} in the guest")


def start_udp_echo(sb, tmp_path, port: int):
    """tests/guest/udp_echo.c, compiled here and written into the guest, serving port."""
    exe = compile_static(os.path.join(GUEST_SRC, "udp_echo.c"), tmp_path / "udp_echo")
    sb.fs.write("/tmp/udp_echo", exe.read_bytes(), mode=0o755)
    server = sb.exec_stream(["/tmp/udp_echo", str(port)])
    wait_listening(sb, port, "u")
    return server


def udp_echo(host_port: int, payload: bytes, within: float = T) -> None:
    """Send payload to 127.0.0.1:host_port until the same bytes come back from there."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
        u.settimeout(1)
        deadline = time.monotonic() + within
        while True:   # UDP: a datagram may be lost, so resend until the echo comes
            u.sendto(payload, ("127.0.0.1", host_port))
            try:
                data, peer = u.recvfrom(65536)
            except socket.timeout:
                assert time.monotonic() < deadline, f"no echo of {payload[:20]!r}"
                continue
            if data == payload:
                assert peer == ("127.0.0.1", host_port), peer
                return


def test_udp_echo_through_a_published_port(ports_sb, tmp_path):
    (udp,) = [p for p in ports_sb.network.ports if p.protocol == "udp"]
    server = start_udp_echo(ports_sb, tmp_path, udp.guest)
    try:
        for i in range(20):
            udp_echo(udp.host, f"datagram {i} from the host ".encode() * 10)
    finally:
        server.signal(9)


BODY = hashlib.sha256(b"seed").digest() * 2048   # 64 KiB, not a repeating byte


def start_http_body(sb, tmp_path, port: int):
    """tests/guest/http_body.c serving BODY on port (a backlog of 1024, as real servers
    have: busybox httpd's 9 loses connections when many arrive at once, see the C file)."""
    exe = compile_static(os.path.join(GUEST_SRC, "http_body.c"), tmp_path / "http_body")
    sb.fs.write("/tmp/http_body", exe.read_bytes(), mode=0o755)
    sb.fs.write("/tmp/body.bin", BODY)
    server = sb.exec_stream(["/tmp/http_body", str(port), "/tmp/body.bin"])
    wait_listening(sb, port, "t")
    return server


def _fetch(port: int, i: int, timeout: float = 120, path: str = "/body.bin") -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as c:
        c.settimeout(timeout)
        # The client speaks first, as HTTP does: this passt completes a forwarded
        # connection's handshake with its first data frame.
        c.sendall(f"GET {path}?client={i} HTTP/1.0\r\n\r\n".encode())
        reply = b""
        while chunk := c.recv(65536):
            reply += chunk
    return reply


def test_100_concurrent_connections_through_a_published_port(ports_sb, tmp_path):
    (tcp,) = [p for p in ports_sb.network.ports if p.protocol == "tcp"]
    server = start_http_body(ports_sb, tmp_path, tcp.guest)
    try:
        with concurrent.futures.ThreadPoolExecutor(100) as pool:
            replies = list(pool.map(lambda i: _fetch(tcp.host, i), range(100)))
        bad = []
        for i, reply in enumerate(replies):
            head, _, body = reply.partition(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.0 200 ") or body != BODY:
                bad.append((i, head[:80], len(body)))
        assert not bad, f"{len(bad)} of 100 connections failed: {bad[:5]}"
    finally:
        server.signal(9)


def test_first_connection_after_boot_reaches_the_guest(kernel_path, image):
    with vmm.Sandbox.create(image, engine=ENGINE, boot_timeout=BOOT_TIMEOUT,
                            network=Network(scope="host", ports=["0:8080"])) as sb:
        server = sb.exec_stream(["httpd", "-f", "-p", "8080", "-h", "/etc"])
        try:
            wait_listening(sb, 8080, "t")
            # No guest traffic yet but the agent's ARP announcement of eth0: passt learns
            # the guest's MAC from it (before it, this connection was lost: passt sent the
            # SYN to a MAC the NIC dropped and never resent it).
            reply = _fetch(sb.network.ports[0].host, 0, timeout=20, path="/image-marker")
            assert reply.startswith(b"HTTP/1.") and b" 200 " in reply.split(b"\r\n")[0], reply
            assert reply.endswith(MARKER), reply
        finally:
            server.signal(9)


def test_published_ports_work_under_the_default_scope(kernel_path, image, tmp_path):
    with vmm.Sandbox.create(image, engine=ENGINE, boot_timeout=BOOT_TIMEOUT,
                            network=Network(ports=["0:8080", "0:7777/udp"])) as sb:
        assert sb.network.scope == "public"
        tcp, udp = sb.network.ports
        server = start_udp_echo(sb, tmp_path, udp.guest)
        try:
            udp_echo(udp.host, b"one datagram", within=10)
        finally:
            server.signal(9)
        server = start_http_body(sb, tmp_path, tcp.guest)
        try:
            assert _fetch(tcp.host, 0, timeout=20).endswith(BODY)
        finally:
            server.signal(9)
