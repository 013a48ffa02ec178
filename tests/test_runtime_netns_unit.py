"""vmm-runtime's network namespace rules that a Kubernetes pod depends on, without a VM:
the runtime never takes over the host's own interface (a path naming its own namespace),
an interface another VM already holds is refused by name, and the monitor's thread can join the
namespace (so /proc/<container pid>/ns/net is the container's, as with runc)."""
import os
import subprocess
import threading
import uuid

import pytest

from vmm.errors import ConfigError
from vmm.runtime.netns import attach, enter

root_only = pytest.mark.skipif(os.geteuid() != 0 or not os.path.exists("/usr/sbin/tc")
                               and not os.path.exists("/sbin/tc"),
                               reason="network namespaces need root and tc (iproute2)")


def sh(*argv):
    subprocess.run(argv, check=True, capture_output=True, timeout=30)


@pytest.fixture
def pod_netns():
    """A namespace as CNI leaves a pod's: eth0 (a veth) with an address and a default route."""
    name = f"vmmt-u-{uuid.uuid4().hex[:6]}"
    sh("ip", "netns", "add", name)
    try:
        sh("ip", "-n", name, "link", "add", "eth0", "type", "veth", "peer", "name", "peer0")
        sh("ip", "-n", name, "addr", "add", "10.232.0.2/24", "dev", "eth0")
        sh("ip", "-n", name, "link", "set", "eth0", "up")
        sh("ip", "-n", name, "route", "add", "default", "via", "10.232.0.1")
        yield f"/var/run/netns/{name}"
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


def test_the_runtimes_own_namespace_is_never_taken_over():
    # CRI names a pod's namespace as /proc/<pause pid>/ns/net; were that the host's, the
    # VM would take the host's interface. Refused, naming why.
    with pytest.raises(ConfigError, match="runtime's own"):
        attach("/proc/self/ns/net")
    with pytest.raises(ConfigError, match="runtime's own"):
        attach(f"/proc/{os.getpid()}/ns/net")


@root_only
def test_an_interface_another_vm_holds_is_refused(pod_netns):
    name = os.path.basename(pod_netns)
    sh("ip", "netns", "exec", name, "tc", "qdisc", "add", "dev", "eth0", "ingress")
    with pytest.raises(ConfigError, match="already another VM's NIC"):
        attach(pod_netns)


@root_only
def test_enter_moves_the_calling_thread_only(pod_netns):
    mine = os.stat("/proc/self/ns/net").st_ino
    seen = {}

    def run():
        enter(pod_netns)
        seen["thread"] = os.stat(f"/proc/self/task/{threading.get_native_id()}/ns/net").st_ino
    t = threading.Thread(target=run)
    t.start()
    t.join()
    assert seen["thread"] == os.stat(pod_netns).st_ino != mine
    assert os.stat("/proc/self/ns/net").st_ino == mine


def test_joining_the_runtimes_own_namespace_is_the_host_network(tmp_path, monkeypatch):
    """A host-network pod's containers are given /proc/<pause pid>/ns/net, the host's: the
    VM gets the host's network as a VM can have it (NAT), as a runc container in the host
    namespace has it, and no interface is taken over."""
    import json
    from vmm.net.network import Network
    from vmm.runtime import netns as netns_mod
    from vmm.runtime.bundle import parse_config
    from vmm.runtime.sandbox_boot import boot_sandbox
    from vmm.sandbox import Sandbox
    assert netns_mod.is_own_namespace(f"/proc/{os.getpid()}/ns/net")
    assert not netns_mod.is_own_namespace(str(tmp_path / "no-such-namespace"))
    (tmp_path / "rootfs").mkdir()
    cfg = {"ociVersion": "1.0.2", "root": {"path": "rootfs"},
           "process": {"args": ["true"], "cwd": "/"},
           "linux": {"namespaces": [{"type": "network", "path": f"/proc/{os.getpid()}/ns/net"}]}}
    bundle = parse_config(json.dumps(cfg).encode(), str(tmp_path))
    assert bundle.network == "join"
    seen = {}
    monkeypatch.setattr(netns_mod, "attach", lambda *a, **k: pytest.fail("attach called"))
    monkeypatch.setattr(netns_mod, "enter", lambda *a, **k: pytest.fail("enter called"))
    monkeypatch.setattr(Sandbox, "create", classmethod(lambda cls, **kw: seen.update(kw) or "vm"))
    booted = boot_sandbox(bundle, str(tmp_path), log=None)
    assert booted.sandbox == "vm" and booted.nic is None
    assert type(seen["network"]) is Network
