"""vmm-runtime under Docker (Debian's docker.io 20.10): `docker run --runtime vmm`, as a
user types it, through dockerd, its containerd and the stock runc shim. From inside: the
guest kernel is ours, not the host's; exit statuses and terminals pass through; `docker
exec`, `stop` and `rm` work; on Docker's default bridge network the guest holds the
address `docker inspect` reports and a server in it is reached at that address from the
bridge's host side. Afterwards nothing is left running.

The daemon is the test's own (support/dockerd.py): its own data and exec roots, its own
containerd, in network and mount namespaces of its own (the bridge reaches nothing
outside them; no iptables). The image is loaded from a local `docker save` file, as the
ctr and podman tests import theirs, and once pulled from a registry the test runs on
loopback: no internet."""
import json
import os
import shutil
import sys
import time

import pytest

from support import dockerd as dockerd_mod
from support.runtime_clients import (busybox_archive, monitors_of, our_kernel, run_in_pty,
                                     runtime_executable)
from support.sandbox_image import have_busybox
from support.test_engine import ENGINE, engine_marks

pytestmark = [pytest.mark.slow, *engine_marks(),
              pytest.mark.skipif(not have_busybox(), reason="no /bin/busybox (busybox-static)"),
              pytest.mark.skipif(not os.path.exists("/usr/lib/qemu/virtiofsd"),
                                 reason="no /usr/lib/qemu/virtiofsd (qemu-system-common)"),
              pytest.mark.skipif(bool(dockerd_mod.unavailable()),
                                 reason=str(dockerd_mod.unavailable())),
              pytest.mark.skipif(not shutil.which("tc") or not shutil.which("nsenter"),
                                 reason="no tc (iproute2) or nsenter (util-linux)")]

IMAGE = "localhost/vmm-test/busybox:1"
T = 180
RUN_DOCKER = "/run/docker"   # dockerd makes /run/docker/plugins whatever its exec root


@pytest.fixture(scope="module")
def docker(tmp_path_factory):
    d = tmp_path_factory.mktemp("docker")
    busybox_archive(d, IMAGE)
    program = runtime_executable(d, ENGINE)
    had_run_docker = os.path.exists(RUN_DOCKER)
    daemon = dockerd_mod.PrivateDockerd(d / "daemon", program)
    try:
        daemon.run("load", "-i", str(d / "busybox.tar"))
        yield daemon
        for cid in daemon.run("ps", "-aq", "--no-trunc", check=False).stdout.split():
            daemon.run("rm", "-f", cid, check=False)
    finally:
        daemon.close()
        if not had_run_docker and os.path.isdir(RUN_DOCKER) and _only_empty_dirs(RUN_DOCKER):
            shutil.rmtree(RUN_DOCKER)
    left = daemon.leftovers()
    assert not left, "still running after dockerd stopped:\n" + "\n".join(left)


def _only_empty_dirs(path):
    return all(not files for _, _, files in os.walk(path))


def gone(cid: str, within: float = 30) -> bool:
    deadline = time.monotonic() + within
    while monitors_of(cid) and time.monotonic() < deadline:
        time.sleep(0.3)
    return not monitors_of(cid)


def test_run_prints_our_kernel_and_passes_the_exit_status(docker, tmp_path):
    cidfile = tmp_path / "cid"
    r = docker.run("run", "--runtime", "vmm", "--rm", "--cidfile", str(cidfile), IMAGE,
                   "sh", "-c", "uname -r; echo out; exit 7", check=False, timeout=T)
    assert r.returncode == 7, r.stderr
    release, word = r.stdout.split()
    assert our_kernel(release) and word == "out"
    assert gone(cidfile.read_text().strip())


def test_init_runs_dockers_init_as_the_containers_first_process(docker):
    """--init binds the host's docker-init (tini) into the container and runs the command
    under it (the command's parent; the guest's PID 1 is our agent): a file bind, so it is
    copied into the guest, and it must stay executable."""
    r = docker.run("run", "--runtime", "vmm", "--rm", "--init", IMAGE, "sh", "-c",
                   "tr '\\0' ' ' < /proc/$PPID/cmdline; exit 4", check=False, timeout=T)
    assert r.returncode == 4, r.stderr
    assert r.stdout.split()[:3] == ["/sbin/docker-init", "--", "sh"], r.stdout


def test_piped_stdin_and_the_vm_sized_by_docker(docker):
    # Docker refuses --cpus above the host's count (the nested tier's L1 has one CPU).
    cpus = min(2, os.cpu_count() or 1)
    r = docker.run("run", "--runtime", "vmm", "--rm", "-i", "-m", "300m", "--cpus", str(cpus),
                   IMAGE, "sh", "-c", "cat; nproc; grep MemTotal /proc/meminfo; exit 3",
                   input="piped-in\n", check=False, timeout=T)
    assert r.returncode == 3, r.stderr
    echoed, seen, _, mem_kib, _ = r.stdout.split()
    assert echoed == "piped-in" and seen == str(cpus)
    assert 200 << 10 < int(mem_kib) <= 300 << 10          # -m 300m is the guest's RAM


def test_interactive_terminal(docker, tmp_path):
    cidfile = tmp_path / "cid"
    argv = docker.docker("run", "--runtime", "vmm", "--rm", "-it", "--cidfile", str(cidfile),
                         IMAGE, "sh")
    out, status = run_in_pty(argv, b"echo in-$((6*7)); tty; uname -r; exit 5\n", b"in-42",
                             env=docker.env)
    assert status == 5, out[-2000:]
    assert b"/dev/pts/" in out and b"-vmm" in out
    assert gone(cidfile.read_text().strip())


def test_detached_exec_stop_rm(docker):
    cid = docker.run("run", "--runtime", "vmm", "-d", "--name", "d-bg", IMAGE,
                     "sh", "-c", "echo started; echo to-stderr >&2; exec sleep 1000",
                     timeout=T).stdout.strip()
    try:
        deadline = time.monotonic() + 30
        while "started" not in docker.run("logs", "d-bg").stdout and time.monotonic() < deadline:
            time.sleep(0.3)
        logs = docker.run("logs", "d-bg")
        assert logs.stdout.strip() == "started" and logs.stderr.strip() == "to-stderr"
        r = docker.run("exec", "d-bg", "sh", "-c", "uname -r; exit 4", check=False, timeout=T)
        assert r.returncode == 4 and our_kernel(r.stdout), (r.stdout, r.stderr)
        assert docker.run("inspect", "d-bg", "--format", "{{.State.Status}}").stdout.strip() == "running"
        assert monitors_of(cid) and set(monitors_of(cid)) <= set(docker.tree())  # what close() checks
        docker.run("stop", "-t", "2", "d-bg", timeout=T)
        state = docker.run("inspect", "d-bg", "--format", "{{.State.Status}} {{.State.ExitCode}}")
        status, code = state.stdout.split()
        assert status == "exited" and code == "143"   # SIGTERM ended sleep: 128 + 15
    finally:
        docker.run("rm", "-f", "d-bg", check=False)
    assert gone(cid)
    assert docker.run("ps", "-aq", "--filter", "name=d-bg").stdout.strip() == ""


def test_pause_freezes_the_vm_and_unpause_thaws_it(docker):
    # A counter the guest prints every 0.1 s: while the VM is frozen it stops (on either
    # engine: the kvm engine stops its vCPU threads, the qemu engine stops QEMU's), and it
    # goes on after unpause.
    cid = docker.run("run", "--runtime", "vmm", "-d", "--name", "d-pause", IMAGE, "sh", "-c",
                     "i=0; while true; do i=$((i+1)); echo $i; sleep 0.1; done",
                     timeout=T).stdout.strip()
    try:
        wait_for_count(docker, "d-pause", 3)
        docker.run("pause", "d-pause", timeout=T)
        assert docker.run("inspect", "d-pause", "--format", "{{.State.Status}}").stdout.strip() == "paused"
        time.sleep(0.5)                            # what was already on its way lands
        frozen = last_count(docker, "d-pause")
        time.sleep(2)                              # 20 ticks if the guest still ran
        assert last_count(docker, "d-pause") == frozen
        r = docker.run("exec", "d-pause", "true", check=False, timeout=T)
        assert r.returncode != 0 and "paused" in r.stderr
        docker.run("unpause", "d-pause", timeout=T)
        assert docker.run("inspect", "d-pause", "--format", "{{.State.Status}}").stdout.strip() == "running"
        wait_for_count(docker, "d-pause", frozen + 3)
        r = docker.run("exec", "d-pause", "sh", "-c", "echo thawed", timeout=T)
        assert r.stdout.strip() == "thawed"
        r = docker.run("update", "--cpus", "1", "d-pause", check=False, timeout=T)
        assert r.returncode != 0 and "fixed when it boots" in r.stderr   # said, not ignored
    finally:
        docker.run("rm", "-f", "d-pause", check=False)
    assert gone(cid)


def last_count(docker, name: str) -> int:
    lines = docker.run("logs", name, timeout=T).stdout.split()
    return int(lines[-1]) if lines else 0


def wait_for_count(docker, name: str, n: int, timeout: float = T) -> None:
    deadline = time.monotonic() + timeout
    while last_count(docker, name) < n:
        assert time.monotonic() < deadline, f"{name}'s counter did not reach {n}"
        time.sleep(0.2)


def test_default_bridge_reaches_the_guest(docker):
    """Docker's bridge network is set up by its prestart hook, which moves the veth into
    the container's namespace (the monitor's); the VM takes that interface over."""
    cid = docker.run("run", "--runtime", "vmm", "-d", "--name", "d-net", IMAGE,
                     "sleep", "1000", timeout=T).stdout.strip()
    try:
        ip, mac = docker.run("inspect", "d-net", "--format",
                             "{{.NetworkSettings.IPAddress}} {{.NetworkSettings.MacAddress}}").stdout.split()
        assert ip.startswith("172.") and mac
        inside = docker.run("exec", "d-net", "busybox", "ip", "-4", "-o", "addr", "show", "eth0",
                            timeout=T).stdout
        assert f"inet {ip}/" in inside, inside
        link = docker.run("exec", "d-net", "busybox", "ip", "-o", "link", "show", "eth0",
                          timeout=T).stdout
        assert mac in link, link
        docker.run("exec", "-d", "d-net", "sh", "-c",
                   "echo served-from-the-guest > /tmp/r; nc -l -p 8080 < /tmp/r", timeout=T)
        assert "served-from-the-guest" in reply_from(docker, ip, 8080, "served-from-the-guest")
        # and the other way: the guest reaches the bridge's host side (its gateway)
        gateway = docker.run("inspect", "d-net", "--format",
                             "{{.NetworkSettings.Gateway}}").stdout.strip()
        r = docker.run("exec", "d-net", "ping", "-c", "1", "-W", "5", gateway, check=False,
                       timeout=T)
        assert r.returncode == 0, (r.stdout, r.stderr)
    finally:
        docker.run("rm", "-f", "d-net", check=False)
    assert gone(cid)


def reply_from(docker, host: str, port: int, expect: str, within: float = 30) -> str:
    """What a TCP server at host:port sends, read from dockerd's namespace (the host side);
    tries until expect shows or within seconds pass (the guest's server may start late)."""
    probe = ("import socket, sys\ntry:\n s = socket.create_connection((sys.argv[1], int(sys.argv[2])), 3)\n"
             " print(s.recv(100).decode())\nexcept OSError as e:\n print('error', e)")
    reply, deadline = "", time.monotonic() + within
    while expect not in reply and time.monotonic() < deadline:
        reply = docker.in_netns([sys.executable, "-c", probe, host, str(port)]).stdout
        time.sleep(0.5)
    return reply


def test_published_port_reaches_the_guest(docker):
    """`-p 127.0.0.1:HOST:GUEST`: Docker's port publishing (its userland proxy; this dockerd
    runs without iptables) forwards the host's port to the container's address, which is the
    guest's eth0."""
    cid = docker.run("run", "--runtime", "vmm", "-d", "--name", "d-port", "-p", "127.0.0.1:18080:8080",
                     IMAGE, "sh", "-c", "echo published-port > /tmp/r; nc -l -p 8080 < /tmp/r",
                     timeout=T).stdout.strip()
    try:
        mapped = docker.run("port", "d-port", "8080").stdout
        assert "127.0.0.1:18080" in mapped, mapped
        assert "published-port" in reply_from(docker, "127.0.0.1", 18080, "published-port")
    finally:
        docker.run("rm", "-f", "d-port", check=False)
    assert gone(cid)


@pytest.fixture(scope="module")
def registry_image(docker, tmp_path_factory):
    """The busybox image in a registry the test runs on this namespace's loopback, reached
    from dockerd's namespace at the same 127.0.0.1 address (a forwarder there): Docker
    takes 127.0.0.0/8 registries without TLS."""
    from support import regserver
    from support.netns_forward import NamespaceForward
    from support.oci_fixtures import LAYER_MT, Image, Layer, sha256, write_layout
    from support.sandbox_image import busybox_layer
    if not regserver.REGISTRY_BIN or not regserver.SKOPEO:
        pytest.skip("no docker-registry or skopeo")
    d = tmp_path_factory.mktemp("docker-registry")
    reg = regserver.Registry(d / "registry")
    forward = None
    try:
        raw = busybox_layer(d / "layer.tar").read_bytes()
        write_layout(d / "busybox", [Image(layers=[Layer(raw, sha256(raw), LAYER_MT["none"])],
                                           cmd=["/bin/sh"])], ref_name="1")
        reg.push(d / "busybox", "vmm-test/busybox:1", layout_ref="1")
        forward = NamespaceForward(docker.netns, "127.0.0.1", reg.port)
        yield f"127.0.0.1:{reg.port}/vmm-test/busybox:1"
    finally:
        if forward is not None:
            forward.close()
        reg.stop()


def test_image_pulled_from_a_local_registry_runs_in_our_kernel(docker, registry_image):
    docker.run("pull", registry_image, timeout=T)
    r = docker.run("run", "--runtime", "vmm", "--rm", registry_image, "uname", "-r", timeout=T)
    assert our_kernel(r.stdout)


def test_host_network_is_nat_not_the_hosts_interface(docker):
    """--network host names dockerd's own namespace by path: the guest gets the host's
    network through NAT, and the namespace's interfaces are left as they were."""
    # a default route, as a host has: what a takeover would pick is then docker0
    bridge = json.loads(docker.in_netns(["ip", "-j", "-4", "addr", "show", "docker0"]).stdout)
    via = bridge[0]["addr_info"][0]["local"].rsplit(".", 1)[0] + ".254"
    docker.in_netns(["ip", "route", "add", "default", "via", via, "dev", "docker0"], check=True)
    before = docker.in_netns(["tc", "qdisc", "show"]).stdout
    try:
        cid = docker.run("run", "--runtime", "vmm", "-d", "--network", "host", "--name", "d-host",
                         IMAGE, "sleep", "1000", timeout=T).stdout.strip()
        assert docker.run("exec", "d-host", "echo", "up", timeout=T).stdout.strip() == "up"
        assert "vmmtap0" not in docker.in_netns(["ip", "-o", "link", "show"]).stdout
        assert docker.in_netns(["tc", "qdisc", "show"]).stdout == before   # no redirects
        assert "ingress" not in before
    finally:
        docker.run("rm", "-f", "d-host", check=False)
        docker.in_netns(["ip", "route", "del", "default"])
    assert gone(cid)
