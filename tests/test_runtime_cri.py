"""The Kubernetes path for real: containerd's CRI plugin driven over its gRPC API as the
kubelet drives it (tests/support/cri_client.py), with pods whose RuntimeClass handler is
"vmm" from docs/containerd-vmm.toml. Images, the pod's pause image included, come from a
registry the test starts on loopback (no internet).

A pod is one microVM (vmm/runtime/pod.py): its sandbox (pause) container boots it, and each
of the pod's containers runs in it with a root of its own. The tests check from inside
that the containers run under our guest kernel, in one VM (one boot id), each in its own
root, sharing localhost and the pod IP; and that after StopPodSandbox + RemovePodSandbox
nothing of the pod is left: no monitor, shim, VM or virtiofsd, no mount, no state
directory, and a host directory bound into a container keeps all its files."""
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
# StopContainer's grace before SIGKILL. containerd 1.6 handles the container's exit (task
# delete, the shim connection closed) while its SIGKILL for a grace that ran out may still
# be in flight: that call then fails ("failed to kill container: ttrpc: closed"). With 2 s
# it did, now and then, under nested TCG, where `vmm-runtime kill` alone takes ~1-2 s.
# The kubelet's default grace is 30 s; these containers end on SIGTERM at once.
STOP_GRACE_S = 10


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


def sandbox_config(name, log_dir: Path, network=cri_api.NODE, annotations=None):
    """A pod's PodSandboxConfig as the kubelet fills it for a pod of one namespace: each
    container its own pid namespace, the pod's ipc namespace shared."""
    uid = uuid.uuid4().hex
    log_dir.mkdir(parents=True, exist_ok=True)
    ns = message("NamespaceOption")(network=network, pid=cri_api.CONTAINER, ipc=cri_api.POD)
    return message("PodSandboxConfig")(
        metadata=message("PodSandboxMetadata")(name=name, uid=uid, namespace="default"),
        hostname=name, log_directory=str(log_dir),
        labels={"app": name, "io.kubernetes.pod.name": name}, annotations=annotations or {},
        linux=message("LinuxPodSandboxConfig")(
            security_context=message("LinuxSandboxSecurityContext")(namespace_options=ns)))


def container_config(name, image, command, log_path, sandbox, mounts=()):
    """A ContainerConfig as the kubelet fills it: the pod's namespace options repeated in
    the container's security context (containerd reads the container's own). mounts:
    (host path, container path) pairs, bound read-write."""
    ns = sandbox.linux.security_context.namespace_options
    return message("ContainerConfig")(
        metadata=message("ContainerMetadata")(name=name), image=message("ImageSpec")(image=image),
        command=command, log_path=log_path,
        mounts=[message("Mount")(host_path=str(h), container_path=c) for h, c in mounts],
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


# Where containerd's runc shim keeps the runtime's state (--root) for CRI's namespace.
RUNTIME_ROOT = Path("/run/containerd/runc/k8s.io")


def runtime_state(cid):
    """The runtime's state.json of a container (vmm/runtime/state.py)."""
    return json.loads((RUNTIME_ROOT / cid / "state.json").read_text())


def left_on_host(ids):
    """What the containers ids still hold on the host: mounts naming them (the pod share,
    a member's binds; containerd shares this mount namespace) and state directories."""
    mounts = [line for line in Path("/proc/self/mountinfo").read_text().splitlines()
              if any(i in line for i in ids)]
    return mounts + [str(RUNTIME_ROOT / i) for i in ids if (RUNTIME_ROOT / i).exists()]


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
        # The pause container boots the pod VM: one monitor holds the pod's id.
        assert len(monitors_of(pod)) == 1

        # A command to its exit: its output and exit code come back through CRI.
        once = client.create_container(pod, container_config(
            "once", busybox, ["sh", "-c", "uname -r; echo $FROM_POD; hostname; "
                              "cat /proc/sys/kernel/random/boot_id; exit 3"],
            "once.log", config), config)
        ids.append(once)
        client.start_container(once)
        st = wait_exited(client, once)
        assert st.exit_code == 3, (st.reason, st.message)
        release, env, hostname, boot_id = log_lines(d / "pods" / "pod-host" / "once.log")
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
        # One VM runs: the pod's. Both containers ran in it (one boot id), as members.
        code, out, err = client.exec_sync(sleeper, ["cat", "/proc/sys/kernel/random/boot_id"])
        assert (code, out.decode().strip()) == (0, boot_id), (out, err)
        assert runtime_state(sleeper)["pod_sandbox"] == pod
        assert runtime_state(sleeper)["agent_socket"] == runtime_state(pod)["agent_socket"]
        assert len(monitors_of(pod)) == 1 and len(monitors_of(sleeper)) == 1

        client.stop_container(sleeper, timeout=STOP_GRACE_S)
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
    # Nothing of the pod is left: no monitor, shim, VM or virtiofsd, mount or state.
    assert wait_gone(ids) == {}
    assert left_on_host(ids) == []


@pytest.mark.skipif(not CNI_BIN, reason="no CNI plugins (apt-get install containernetworking-plugins)")
def test_pod_network_from_cni_is_the_guests(cri, node_netns, tmp_path):
    """A pod with its own network, as one microVM: CNI's address (PodSandboxStatus) is the
    guest's eth0 address, and a server in the guest is reached at it from the node's side
    of the pod network (the bridge). A sidecar runs in the same VM (one boot id) with a
    root of its own, reaches the server over localhost, and a host directory bound into it
    keeps all its files after the pod goes. The pod's vmm.ram_mib annotation (passed
    through by docs/containerd-vmm.toml's pod_annotations) sizes the pod VM."""
    client, d, host = cri
    busybox = f"{host}/vmm-test/busybox:1"
    client.pull_image(busybox)
    shared = tmp_path / "shared"
    (shared / "sub").mkdir(parents=True)
    (shared / "keep.txt").write_text("host file\n")
    (shared / "sub" / "deep.txt").write_text("deep\n")
    config = sandbox_config("pod-net", d / "pods" / "pod-net", network=cri_api.POD,
                            annotations={"vmm.ram_mib": "320"})
    pod = client.run_pod_sandbox(config, "vmm")
    ids, removed = [pod], False

    def run(cid, script):
        code, out, err = client.exec_sync(cid, ["sh", "-c", script])
        assert code == 0, (cid, script, out, err)
        return out.decode()
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
        # The pause container's VM, the pod VM, has the NIC; the web container runs in it.
        assert len(monitors_of(pod)) == 1 and len(monitors_of(web)) == 1
        page, deadline = "", time.monotonic() + 60
        while not our_kernel(page) and time.monotonic() < deadline:
            page = sh("ip", "netns", "exec", node_netns, "curl", "-s", "--max-time", "5",
                      f"http://{ip}:8080/index.html", check=False)
            time.sleep(0.5)
        assert our_kernel(page), page

        # A sidecar, with a host directory bound in: a second running container of the pod.
        side = client.create_container(pod, container_config(
            "side", busybox, ["sh", "-c", "echo side > /side-root; exec sleep 1000"], "side.log",
            config, mounts=[(shared, "/data")]), config)
        ids.append(side)
        client.start_container(side)
        # Its pid (its monitor) is in the pod's network namespace, as runc's process is.
        side_pid = runtime_state(side)["pid"]
        assert os.stat(f"/proc/{side_pid}/ns/net").st_ino == \
            os.stat(f"/proc/{runtime_state(pod)['pid']}/ns/net").st_ino
        # One VM: one boot id, our kernel, sized by the pod's annotation (512 MiB without).
        boot_id = run(web, "cat /proc/sys/kernel/random/boot_id")
        assert boot_id.strip() and run(side, "cat /proc/sys/kernel/random/boot_id") == boot_id
        assert our_kernel(run(side, "uname -r"))
        mem_kib = int(re.search(r"MemTotal:\s+(\d+) kB", run(side, "cat /proc/meminfo")).group(1))
        assert 200 << 10 < mem_kib <= 320 << 10, mem_kib
        # Shared localhost: the sidecar reaches the web server at 127.0.0.1.
        assert our_kernel(run(side, "busybox wget -q -O - http://127.0.0.1:8080/index.html"))
        # Each its own root: ExecSync runs in the sidecar's (its command's file is there),
        # and neither sees a file of the other's.
        assert run(side, "cat /side-root") == "side\n"
        assert client.exec_sync(web, ["test", "-e", "/side-root"])[0] == 1
        assert client.exec_sync(side, ["test", "-e", "/tmp/index.html"])[0] == 1
        assert client.exec_sync(web, ["test", "-e", "/data/keep.txt"])[0] == 1
        # The host directory is the sidecar's, live both ways.
        assert run(side, "cat /data/keep.txt /data/sub/deep.txt; echo new > /data/new.txt") == \
            "host file\ndeep\n"
        assert (shared / "new.txt").read_text() == "new\n"
        (shared / "late.txt").write_text("late\n")
        assert run(side, "cat /data/late.txt") == "late\n"

        for cid in (side, web):   # as the kubelet: the containers, then the pod
            client.stop_container(cid, timeout=STOP_GRACE_S)
            client.remove_container(cid)
        assert left_on_host([side, web]) == []
        client.stop_pod_sandbox(pod)
        client.remove_pod_sandbox(pod)
        removed = True
    finally:
        if not removed:
            client.stop_pod_sandbox(pod)
            client.remove_pod_sandbox(pod)
    assert wait_gone(ids) == {}
    assert left_on_host(ids) == []
    # The user's directory lost nothing through the pod's binds and their removal.
    assert sorted(str(p.relative_to(shared)) for p in shared.rglob("*")) == \
        ["keep.txt", "late.txt", "new.txt", "sub", "sub/deep.txt"]
    assert (shared / "keep.txt").read_text() == "host file\n"
    assert (shared / "sub" / "deep.txt").read_text() == "deep\n"
    # CNI took its veth back: nothing of the pod is left on the node's bridge.
    assert "veth" not in sh("ip", "-n", node_netns, "link", "show", "type", "veth")
