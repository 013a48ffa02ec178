"""vmm-runtime in a container's network namespace, as CNI leaves it: the VM takes the
namespace's interface (address, MAC, gateway), so a peer reaches the guest at the
container's address and the guest reaches the peer through the namespace's route.

Everything happens in two network namespaces the test makes (a container side with a
veth `eth0` at 10.231.0.2/24, a peer side at 10.231.0.1 running a small server); no
traffic leaves this machine's namespaces."""
import json
import os
import shutil
import subprocess
import sys
import time
import uuid

import pytest

from support.rootfs_dir import unpack_busybox_rootfs
from support.sandbox_image import have_busybox
from support.test_engine import ENGINE

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root"),
              pytest.mark.skipif(not have_busybox(), reason="no /bin/busybox (busybox-static)"),
              pytest.mark.skipif(not shutil.which("tc") or not shutil.which("nsenter"),
                                 reason="no tc (iproute2) or nsenter (util-linux)"),
              pytest.mark.skipif(not os.path.exists("/usr/lib/qemu/virtiofsd"),
                                 reason="no /usr/lib/qemu/virtiofsd (qemu-system-common)")]

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
T = 120
PEER_SERVER = """
import socket
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("10.231.0.1", 7777))
s.listen(8)
print("listening", flush=True)
while True:
    c, _ = s.accept()
    c.recv(100)
    c.sendall(b"pong-from-peer\\n")
    c.close()
"""


def sh(*argv, check=True):
    r = subprocess.run(argv, capture_output=True, text=True, timeout=T)
    if check:
        assert r.returncode == 0, (argv, r.stderr)
    return r.stdout


@pytest.fixture
def namespaces():
    tag = uuid.uuid4().hex[:6]
    ctr, peer = f"vmmt-c-{tag}", f"vmmt-p-{tag}"
    sh("ip", "netns", "add", ctr)
    sh("ip", "netns", "add", peer)
    try:
        sh("ip", "-n", ctr, "link", "add", "eth0", "type", "veth", "peer", "name", "peer0",
           "netns", peer)
        sh("ip", "-n", ctr, "addr", "add", "10.231.0.2/24", "dev", "eth0")
        sh("ip", "-n", ctr, "link", "set", "eth0", "up")
        sh("ip", "-n", ctr, "link", "set", "lo", "up")
        sh("ip", "-n", ctr, "route", "add", "default", "via", "10.231.0.1")
        sh("ip", "-n", peer, "addr", "add", "10.231.0.1/24", "dev", "peer0")
        sh("ip", "-n", peer, "link", "set", "peer0", "up")
        sh("ip", "-n", peer, "link", "set", "lo", "up")
        server = subprocess.Popen(["ip", "netns", "exec", peer, sys.executable, "-c", PEER_SERVER],
                                  stdout=subprocess.PIPE, text=True)
        assert server.stdout.readline().strip() == "listening"
        yield ctr, peer
        server.kill()
        server.wait()
    finally:
        sh("ip", "netns", "del", ctr, check=False)
        sh("ip", "netns", "del", peer, check=False)


def rt(root, *args, check=True):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.path.join(ROOT, "tests")]))
    r = subprocess.run([sys.executable, "-m", "vmm.runtime", "--root", str(root), *args],
                       capture_output=True, text=True, timeout=T, env=env,
                       stdin=subprocess.DEVNULL)
    if check:
        assert r.returncode == 0, (args, r.stderr)
    return r


def test_vm_takes_over_the_namespace_interface(tmp_path, namespaces):
    ctr, peer = namespaces
    rootfs = unpack_busybox_rootfs(tmp_path / "rootfs-dir")
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    os.symlink(rootfs, bundle / "rootfs")
    (bundle / "config.json").write_text(json.dumps({
        "ociVersion": "1.0.2", "root": {"path": "rootfs"},
        "process": {"args": ["sleep", "1000"], "cwd": "/", "env": ["PATH=/bin:/sbin"]},
        "linux": {"namespaces": [{"type": "network", "path": f"/var/run/netns/{ctr}"}]},
        "annotations": {"vmm.engine": ENGINE}}))
    ns_mac = json.loads(sh("ip", "-n", ctr, "-j", "link", "show", "eth0"))[0]["address"]
    root = tmp_path / "state"
    # create's stdio is the container's: give it files, as a shim gives pipes
    # (files, not pipes we wait on: the container keeps them open after create returns)
    with open(tmp_path / "out", "wb") as out, open(tmp_path / "err", "wb") as err:
        r = subprocess.run([sys.executable, "-m", "vmm.runtime", "--root", str(root), "create",
                            "--bundle", str(bundle), "c-net"], stdin=subprocess.DEVNULL,
                           stdout=out, stderr=err, timeout=T, env=dict(os.environ, PYTHONPATH=ROOT))
    assert r.returncode == 0, (tmp_path / "err").read_text()
    try:
        rt(root, "start", "c-net")
        addr = rt(root, "exec", "c-net", "ip", "-4", "addr", "show", "eth0").stdout
        assert "10.231.0.2/24" in addr
        link = rt(root, "exec", "c-net", "ip", "link", "show", "eth0").stdout
        assert ns_mac in link                      # the namespace interface's MAC
        # out: the guest reaches the peer through the namespace's route
        got = rt(root, "exec", "c-net", "sh", "-c", "echo ping | nc 10.231.0.1 7777").stdout
        assert got.strip() == "pong-from-peer"
        # in: the peer reaches a server in the guest at the container's address
        # detached: its exec monitor keeps our stdio, so give it none to wait on
        env = dict(os.environ, PYTHONPATH=ROOT)
        assert subprocess.run([sys.executable, "-m", "vmm.runtime", "--root", str(root), "exec",
                               "--detach", "c-net", "sh", "-c",
                               "echo inbound-ok > /tmp/r; nc -l -p 8080 < /tmp/r"],
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, timeout=T, env=env).returncode == 0
        reply, deadline = "", time.monotonic() + 30
        while "inbound-ok" not in reply and time.monotonic() < deadline:
            reply = sh("ip", "netns", "exec", peer, sys.executable, "-c",
                       "import socket\ntry:\n s = socket.create_connection(('10.231.0.2', 8080), 3)\n"
                       " print(s.recv(100).decode())\nexcept OSError as e:\n print(e)", check=False)
            time.sleep(0.5)
        assert "inbound-ok" in reply
        qdiscs = sh("ip", "netns", "exec", ctr, "tc", "qdisc", "show", "dev", "eth0")
        assert "ingress" in qdiscs
    finally:
        rt(root, "delete", "--force", "c-net", check=False)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        left = sh("ip", "netns", "exec", ctr, "tc", "qdisc", "show", "dev", "eth0")
        links = sh("ip", "-n", ctr, "link", "show")
        if "ingress" not in left and "vmmtap0" not in links:
            break
        time.sleep(0.5)
    assert "ingress" not in left and "vmmtap0" not in links   # the namespace is as CNI left it


def test_namespace_with_only_loopback_gives_no_nic(tmp_path):
    """podman --network none: a namespace path with nothing but lo; the VM gets no NIC."""
    from vmm.runtime.netns import attach
    name = f"vmmt-lo-{uuid.uuid4().hex[:6]}"
    sh("ip", "netns", "add", name)
    try:
        assert attach(f"/var/run/netns/{name}") is None
    finally:
        sh("ip", "netns", "del", name)
