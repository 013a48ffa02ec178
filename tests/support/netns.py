"""A network namespace of the test's own, for sandbox tests that reach non-loopback
addresses: the sandbox (and so its passt) runs in a child process inside new network and
mount namespaces, where the only "internet" is a test interface carrying test addresses.
Whatever the guest's egress policy lets through, passt can only NAT it into that
namespace: a policy bug cannot send a packet off the machine.

    with NamespaceSandbox(image, engine="qemu", network={"scope": "public"}) as sb:
        r, seconds = sb.exec(["nslookup", TEST_NAME])
        sb.stats(); sb.requests()

Inside (tests/support/netns_child.py sets it up, `setup()` below):
- `vmmtest0` (a dummy interface, or one end of a veth pair where the kernel has no dummy
  driver, the peer left without addresses) carries 192.0.2.1/24 (TEST-NET-1, the
  "public internet"), 192.0.2.53 (a DNS server, support/dns_server.py), 192.0.2.80 (an
  HTTP server) and 10.77.0.1/24 (a "private" net with an HTTP server); the default route
  points into 192.0.2.0/24, so passt finds a routable interface. Forwarding is off and
  nothing connects the namespace to the host's: a packet to any other address dies here.
- /etc/resolv.conf is bind-mounted (in the private mount namespace only) to name
  192.0.2.53, so passt's DNS forwarding (the guest's 10.0.2.3) asks the test's server.
The child checks that it is in a namespace of its own before it starts anything, and
after boot that every passt it started is in that namespace; otherwise it refuses.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Optional

from support import proctable

LINK = "vmmtest0"
PEER = "vmmtest1"
NS_ADDRESS = "192.0.2.1"
PUBLIC_NET = "192.0.2.0/24"
DNS_ADDRESS = "192.0.2.53"
PUBLIC_HTTP = "192.0.2.80"
PRIVATE_NET = "10.77.0.0/24"
PRIVATE_HTTP = "10.77.0.1"
DEFAULT_VIA = "192.0.2.254"   # on-link, nobody: the default route only has to exist
TEST_NAME = "pkg.test.internal"
BODIES = {PUBLIC_HTTP: b"served-from-test-net-1\n", PRIVATE_HTTP: b"served-from-the-private-net\n"}

HERE = Path(__file__).resolve().parent
_REPLY_TIMEOUT = 180   # a boot under TCG on a loaded machine, with margin


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


def netns_id(pid="self") -> str:
    return os.readlink(f"/proc/{pid}/ns/net")


def setup(resolv_dir: str) -> None:
    """Make the namespace described above. Run only inside a fresh network and mount
    namespace (the child checks that first)."""
    _ip("link", "set", "lo", "up")
    try:
        _ip("link", "add", LINK, "type", "dummy")
    except subprocess.CalledProcessError:   # no dummy driver: a veth pair, both ends here
        _ip("link", "add", LINK, "type", "veth", "peer", "name", PEER)
        _ip("link", "set", PEER, "up")
    _ip("link", "set", LINK, "up")
    _ip("addr", "add", f"{NS_ADDRESS}/24", "dev", LINK)
    for a in (DNS_ADDRESS, PUBLIC_HTTP):
        _ip("addr", "add", f"{a}/32", "dev", LINK)
    _ip("addr", "add", f"{PRIVATE_HTTP}/24", "dev", LINK)
    _ip("route", "add", "default", "via", DEFAULT_VIA, "dev", LINK)
    with open("/proc/sys/net/ipv4/ip_forward", "w") as f:
        f.write("0\n")
    resolv = os.path.join(resolv_dir, "resolv.conf")
    with open(resolv, "w") as f:
        f.write(f"nameserver {DNS_ADDRESS}\n")
    subprocess.run(["mount", "--bind", resolv, "/etc/resolv.conf"], check=True,
                   capture_output=True, text=True)


def links() -> list:
    """This network namespace's interface names (asked over netlink: /sys/class/net still
    shows the namespace /sys was mounted in)."""
    out = subprocess.run(["ip", "-o", "link", "show"], check=True, capture_output=True,
                         text=True).stdout
    return sorted(line.split(":")[1].strip().split("@")[0] for line in out.splitlines())


def descendants(pid: int) -> list:
    """(pid, comm) of every live process below pid."""
    table = proctable.processes()
    return [(p, table[p].comm) for p in proctable.children(pid, recursive=True) if p in table]


def unavailable() -> Optional[str]:
    """Why this machine cannot make the test namespace, or None."""
    for tool in ("unshare", "ip", "mount"):
        if not shutil.which(tool):
            return f"no {tool} program (util-linux / iproute2)"
    if os.geteuid() != 0:
        return "network namespaces with test interfaces need root"
    probe = subprocess.run(["unshare", "--net", "sh", "-c",
                            f"ip link add {LINK} type dummy || "
                            f"ip link add {LINK} type veth peer name {PEER}"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        return f"cannot make a test interface in a network namespace: {probe.stderr.strip()}"
    return None


class NamespaceError(Exception):
    """The child failed: its traceback and the tail of its log."""


class NamespaceSandbox:
    """A vmm.Sandbox booted by a child process inside its own network and mount
    namespaces (setup() above), driven over a socket. network: Network(...)'s keyword
    arguments."""

    def __init__(self, image, *, engine: str, network: dict, boot_timeout: float = 60):
        ours, theirs = socket.socketpair()
        self._log = tempfile.NamedTemporaryFile(prefix="vmm-netns-", suffix=".log")
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(HERE.parent.parent), str(HERE.parent),
                                                        env.get("PYTHONPATH", "")) if p)
        try:
            self._proc = subprocess.Popen(
                ["unshare", "--net", "--mount", "--propagation", "private", sys.executable,
                 "-m", "support.netns_child", str(theirs.fileno())],
                pass_fds=[theirs.fileno()], env=env, stdin=subprocess.DEVNULL,
                stdout=self._log, stderr=subprocess.STDOUT)
        finally:
            theirs.close()
        self._conn = Connection(ours.detach())
        try:
            self._conn.send({"image": str(image), "engine": engine, "network": network,
                             "boot_timeout": boot_timeout, "outer_netns": netns_id()})
            self.info = self._reply()
        except BaseException:
            self.close()
            raise

    def _reply(self):
        if not self._conn.poll(_REPLY_TIMEOUT):
            raise NamespaceError(f"the namespace child did not answer in {_REPLY_TIMEOUT} s"
                                 f"\n{self.log_tail()}")
        try:
            status, value = self._conn.recv()
        except EOFError:
            self._proc.wait(10)
            raise NamespaceError(f"the namespace child ended (exit {self._proc.returncode})"
                                 f"\n{self.log_tail()}") from None
        if status != "ok":
            raise NamespaceError(f"{value}\n{self.log_tail()}")
        return value

    def _call(self, *command):
        self._conn.send(command)
        return self._reply()

    def exec(self, argv, timeout: float = 30):
        """(ExecResult, seconds the exec took, timed in the child)."""
        return self._call("exec", list(argv), timeout)

    def stats(self) -> dict:
        return self._call("stats")

    def requests(self) -> list:
        """(server address, path) of every request the namespace's HTTP servers got."""
        return self._call("requests")

    def dns_queries(self) -> list:
        """(name, qtype) of every query the namespace's DNS server got."""
        return self._call("dns_queries")

    def log_tail(self, n: int = 4000) -> str:
        try:
            return Path(self._log.name).read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def close(self) -> None:
        if self._proc.poll() is None:
            try:
                self._call("stop")
            except (NamespaceError, OSError, EOFError):
                pass
            try:
                self._proc.wait(30)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._conn.close()
        self._log.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
