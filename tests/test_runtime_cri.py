"""The Kubernetes path for real: containerd's CRI plugin driven over its gRPC API as the
kubelet drives it (tests/support/cri_client.py), with pods whose RuntimeClass handler is
"vmm" from docs/containerd-vmm.toml. Images, the pod's pause image included, come from a
registry the test starts on loopback (no internet).

Each container of a pod is a microVM of its own, the pause container too: the test counts
the monitors, checks from inside that a container runs under our guest kernel, and that
after StopPodSandbox + RemovePodSandbox nothing of the pod is left running (no monitor,
shim, VM or virtiofsd)."""
import json
import os
import re
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from support.oci_fixtures import LAYER_MT, Image, Layer, sha256, write_layout
from support.runtime_clients import (Containerd, monitors_of, our_kernel, processes_naming,
                                     runtime_executable)
from support.netns_forward import NamespaceForward
from support.sandbox_image import busybox_layer, have_busybox
from support.test_engine import ENGINE

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not have_busybox(), reason="no /bin/busybox (busybox-static)"),
              pytest.mark.skipif(not shutil.which("qemu-system-x86_64"), reason="no qemu-system-x86_64"),
              pytest.mark.skipif(not os.path.exists("/usr/lib/qemu/virtiofsd"),
                                 reason="no /usr/lib/qemu/virtiofsd (qemu-system-common)"),
              pytest.mark.skipif(not shutil.which("containerd"), reason="no containerd"),
              pytest.mark.skipif(os.geteuid() != 0, reason="containerd's CRI plugin needs root")]

grpc = pytest.importorskip("grpc", reason="no grpcio (pip install -e .[test])")
from support import cri_client as cri_api  # noqa: E402  (needs grpc)
from support.cri_client import CRI, message  # noqa: E402

T = 240


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    from support import regserver
    if not regserver.REGISTRY_BIN or not regserver.SKOPEO:
        pytest.skip("no docker-registry or skopeo")
    d = tmp_path_factory.mktemp("cri-registry")
    reg = regserver.Registry(d / "registry")
    raw = busybox_layer(d / "layer.tar").read_bytes()
    layer = Layer(raw, sha256(raw), LAYER_MT["none"])
    # The pod's pause image: busybox whose entrypoint sleeps for as long as the pod lives.
    for name, image in (("pause", Image(layers=[layer], entrypoint=["/bin/sleep", "2147483647"])),
                        ("busybox", Image(layers=[layer], cmd=["/bin/sh"]))):
        write_layout(d / name, [image], ref_name="1")
        reg.push(d / name, f"vmm-test/{name}:1", layout_ref="1")
    yield reg
    reg.stop()


CNI_BIN = next((d for d in ("/usr/lib/cni", "/opt/cni/bin")
                if os.path.exists(os.path.join(d, "bridge"))), None)
POD_SUBNET = "10.233.0"


def sh(*argv, check=True):
    r = subprocess.run(argv, capture_output=True, text=True, timeout=T)
    assert r.returncode == 0 or not check, (argv, r.stderr)
    return r.stdout


@pytest.fixture(scope="module")
def node_netns():
    """The node's network, for this test: a namespace of its own where containerd runs,
    so the CNI bridge and the pods' veths live (and go) with it, not on this machine."""
    name = f"vmmcri-{uuid.uuid4().hex[:6]}"
    sh("ip", "netns", "add", name)
    sh("ip", "-n", name, "link", "set", "lo", "up")
    yield name
    sh("ip", "netns", "del", name, check=False)


def cni_config(d: Path) -> dict:
    """The CRI plugin's CNI settings: a bridge network with host-local addresses."""
    conf = d / "net.d"
    conf.mkdir()
    (conf / "10-vmm-test.conflist").write_text(json.dumps({
        "cniVersion": "0.4.0", "name": "vmm-cri-test",
        "plugins": [{"type": "bridge", "bridge": "vmmcni0", "isGateway": True, "ipMasq": False,
                     "ipam": {"type": "host-local", "dataDir": str(d / "cni-ipam"),
                              "ranges": [[{"subnet": f"{POD_SUBNET}.0/24"}]],
                              "routes": [{"dst": "0.0.0.0/0"}]}}]}))
    return {"bin_dir": f'"{CNI_BIN}"', "conf_dir": f'"{conf}"'}


@pytest.fixture(scope="module")
def cri(tmp_path_factory, registry, node_netns):
    d = tmp_path_factory.mktemp("cri")
    runtime = runtime_executable(d, ENGINE)
    # The registry speaks plain HTTP: a hosts.toml for it, where containerd looks for one.
    hosts = d / "certs.d" / registry.host
    hosts.mkdir(parents=True)
    (hosts / "hosts.toml").write_text(
        f'server = "http://{registry.host}"\n\n[host."http://{registry.host}"]\n'
        '  capabilities = ["pull", "resolve"]\n')
    settings = {"sandbox_image": f'"{registry.host}/vmm-test/pause:1"',
                "config_path": f'"{d / "certs.d"}"'}
    if CNI_BIN:
        settings.update(cni_config(d))
    # containerd pulls from the node's namespace: the registry is reached there at the
    # loopback address it has here.
    netns = f"/var/run/netns/{node_netns}"
    forward = NamespaceForward(netns, "127.0.0.1", registry.port)
    daemon = Containerd(d / "containerd", runtime, cri=settings, netns=netns)
    client = CRI(daemon.socket)
    try:
        client.version()
        yield client, d, registry.host
    finally:
        client.close()
        daemon.stop()
        forward.close()


def sandbox_config(name, log_dir: Path, network=cri_api.NODE):
    """A pod's PodSandboxConfig as the kubelet fills it for a pod of one namespace: each
    container its own pid namespace, the pod's ipc namespace shared."""
    uid = uuid.uuid4().hex
    log_dir.mkdir(parents=True, exist_ok=True)
    ns = message("NamespaceOption")(network=network, pid=cri_api.CONTAINER, ipc=cri_api.POD)
    return message("PodSandboxConfig")(
        metadata=message("PodSandboxMetadata")(name=name, uid=uid, namespace="default"),
        hostname=name, log_directory=str(log_dir),
        labels={"app": name, "io.kubernetes.pod.name": name},
        linux=message("LinuxPodSandboxConfig")(
            security_context=message("LinuxSandboxSecurityContext")(namespace_options=ns)))


def container_config(name, image, command, log_path, sandbox):
    """A ContainerConfig as the kubelet fills it: the pod's namespace options repeated in
    the container's security context (containerd reads the container's own)."""
    ns = sandbox.linux.security_context.namespace_options
    return message("ContainerConfig")(
        metadata=message("ContainerMetadata")(name=name), image=message("ImageSpec")(image=image),
        command=command, log_path=log_path,
        envs=[message("KeyValue")(key="FROM_POD", value="hello")],
        labels={"io.kubernetes.container.name": name},
        linux=message("LinuxContainerConfig")(
            security_context=message("LinuxContainerSecurityContext")(namespace_options=ns)))


def wait_exited(client, cid, timeout=T):
    deadline = time.monotonic() + timeout
    while True:
        status = client.container_status(cid)
        if status.state == cri_api.CONTAINER_EXITED:
            return status
        assert time.monotonic() < deadline, (status.state, status.reason, status.message)
        time.sleep(0.5)


def log_lines(path: Path):
    """The lines a container wrote, from its CRI log ("<time> <stream> <F|P> <text>")."""
    lines = []
    for line in path.read_text().splitlines():
        _, stream, tag, text = (line.split(" ", 3) + [""])[:4]
        assert stream in ("stdout", "stderr") and tag in ("F", "P"), line
        lines.append(text)
    return lines


def wait_gone(ids, timeout=60):
    deadline = time.monotonic() + timeout
    while processes_naming(*ids) and time.monotonic() < deadline:
        time.sleep(0.5)
    return processes_naming(*ids)


def test_pod_on_host_network_runs_containers_as_microvms(cri, node_netns):
    client, d, host = cri
    pause, busybox = f"{host}/vmm-test/pause:1", f"{host}/vmm-test/busybox:1"
    # As the kubelet: the images first (the pause image is the sandbox_image we configured).
    assert client.pull_image(pause) != client.pull_image(busybox)
    config = sandbox_config("pod-host", d / "pods" / "pod-host")
    pod = client.run_pod_sandbox(config, "vmm")
    ids, removed = [pod], False
    try:
        status = client.pod_sandbox_status(pod)
        assert status.state == cri_api.SANDBOX_READY and status.runtime_handler == "vmm"
        assert [p.id for p in client.list_pod_sandbox(pod)] == [pod]
        # The pause container is a microVM of its own: one monitor holds the pod's id.
        assert len(monitors_of(pod)) == 1

        # A command to its exit: its output and exit code come back through CRI.
        once = client.create_container(pod, container_config(
            "once", busybox, ["sh", "-c", "uname -r; echo $FROM_POD; hostname; exit 3"],
            "once.log", config), config)
        ids.append(once)
        client.start_container(once)
        st = wait_exited(client, once)
        assert st.exit_code == 3, (st.reason, st.message)
        release, env, hostname = log_lines(d / "pods" / "pod-host" / "once.log")
        assert our_kernel(release), release
        assert env == "hello"
        assert hostname   # a host-network pod gets the node's hostname, as with runc
        assert not monitors_of(once)

        # A long-running container, and ExecSync into it, as probes and `kubectl exec` do.
        sleeper = client.create_container(pod, container_config(
            "sleeper", busybox, ["sleep", "1000"], "sleeper.log", config), config)
        ids.append(sleeper)
        client.start_container(sleeper)
        assert client.container_status(sleeper).state == cri_api.CONTAINER_RUNNING
        code, out, err = client.exec_sync(sleeper, ["uname", "-r"])
        assert code == 0 and our_kernel(out.decode()), (code, out, err)
        # Host network as a VM can have it (NAT): a NIC with an address; the node's own
        # interfaces are not taken over (CRI named the node's namespace, by the pause's pid).
        code, out, err = client.exec_sync(sleeper, ["busybox", "ip", "-4", "addr", "show", "dev", "eth0"])
        assert code == 0 and re.search(r"inet \d+\.\d+\.\d+\.\d+/", out.decode()), (out, err)
        assert "vmmtap0" not in sh("ip", "-n", node_netns, "link", "show")
        code, out, err = client.exec_sync(sleeper, ["sh", "-c", "echo to-err >&2; exit 7"])
        assert (code, out, err) == (7, b"", b"to-err\n")
        # Two microVMs run now: the pause container's and the sleeper's.
        assert len(monitors_of(pod)) == 1 and len(monitors_of(sleeper)) == 1

        client.stop_container(sleeper, timeout=2)
        st = client.container_status(sleeper)
        assert st.state == cri_api.CONTAINER_EXITED and st.exit_code in (137, 143), st
        client.stop_pod_sandbox(pod)
        assert client.pod_sandbox_status(pod).state == cri_api.SANDBOX_NOTREADY
        client.stop_pod_sandbox(pod)   # idempotent, as the kubelet expects
        client.remove_pod_sandbox(pod)
        removed = True
        assert client.list_pod_sandbox(pod) == []
    finally:
        if not removed:   # a failed test still takes its pod away
            client.stop_pod_sandbox(pod)
            client.remove_pod_sandbox(pod)
    # Nothing of the pod is left: no monitor, shim, VM or virtiofsd.
    assert wait_gone(ids) == {}


@pytest.mark.skipif(not CNI_BIN, reason="no CNI plugins (apt-get install containernetworking-plugins)")
def test_pod_network_from_cni_is_the_guests(cri, node_netns):
    """A pod with its own network: CNI's address (PodSandboxStatus) is the guest's eth0
    address, and a server in the guest is reached at it from the node's side of the pod
    network (the bridge)."""
    client, d, host = cri
    busybox = f"{host}/vmm-test/busybox:1"
    client.pull_image(busybox)
    config = sandbox_config("pod-net", d / "pods" / "pod-net", network=cri_api.POD)
    pod = client.run_pod_sandbox(config, "vmm")
    ids, removed = [pod], False
    try:
        ip = client.pod_sandbox_status(pod).network.ip
        assert re.fullmatch(rf"{re.escape(POD_SUBNET)}\.\d+", ip), ip
        web = client.create_container(pod, container_config(
            "web", busybox, ["sh", "-c", "uname -r > /tmp/index.html; exec busybox httpd -f -p 8080 -h /tmp"],
            "web.log", config), config)
        ids.append(web)
        client.start_container(web)
        code, out, err = client.exec_sync(web, ["busybox", "ip", "-4", "addr", "show", "dev", "eth0"])
        assert code == 0, (out, err)
        assert re.findall(r"inet (\d+\.\d+\.\d+\.\d+)/", out.decode()) == [ip], out
        # The pause container holds the namespace; the web container's VM has the NIC.
        assert len(monitors_of(pod)) == 1 and len(monitors_of(web)) == 1
        page, deadline = "", time.monotonic() + 60
        while not our_kernel(page) and time.monotonic() < deadline:
            page = sh("ip", "netns", "exec", node_netns, "curl", "-s", "--max-time", "5",
                      f"http://{ip}:8080/index.html", check=False)
            time.sleep(0.5)
        assert our_kernel(page), page
        # A second running container cannot also have the pod's interface: refused, saying so.
        second = client.create_container(pod, container_config(
            "second", busybox, ["sleep", "1000"], "second.log", config), config)
        ids.append(second)
        with pytest.raises(cri_api.CRIError, match="already another VM's NIC"):
            client.start_container(second)
        assert len(monitors_of(web)) == 1 and not monitors_of(second)
        client.stop_pod_sandbox(pod)
        client.remove_pod_sandbox(pod)
        removed = True
    finally:
        if not removed:
            client.stop_pod_sandbox(pod)
            client.remove_pod_sandbox(pod)
    assert wait_gone(ids) == {}
    # CNI took its veth back: nothing of the pod is left on the node's bridge.
    assert "veth" not in sh("ip", "-n", node_netns, "link", "show", "type", "veth")
