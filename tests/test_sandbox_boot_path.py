"""The sandbox's start-up path: the agent's own connection to the host (agent_dial.py),
passt spawned after QEMU, and resolv.conf/hosts written into the overlay's upper layer
before it is mounted (guest/agent/net.c).

The fast tests run the agent binary as a host process; the slow ones boot sandboxes."""
import io
import shutil
import socket
import subprocess
import tarfile

import pytest

from support.agent_harness import needs_musl
from support.sandbox_image import busybox_layer, have_busybox

import vmm
from vmm.agent import SandboxNotRunning, Timeout
from vmm.sandbox.agent_cmdline import agent_cmdline
from vmm.sandbox.agent_dial import AgentDial


def test_cmdline_carries_the_dial_port_only_when_asked():
    assert "vmm.dial=1024" in agent_cmdline(writable=False, hostname=None, dial=1024).split()
    assert not any(p.startswith("vmm.dial=")
                   for p in agent_cmdline(writable=False, hostname=None).split())


@needs_musl
def test_the_agents_own_connection_is_accepted_with_its_ready(tmp_path):
    """An agent connected to the dial socket (here: the real agent serving one inherited
    connection) is the sandbox's client, READY taken, at once."""
    from vmm.guest.agent import agent_binary
    dial = AgentDial(str(tmp_path / "agent.sock"), 1024, 1024)
    assert dial.path == str(tmp_path / "agent.sock_1024")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(dial.path)
    proc = subprocess.Popen([str(agent_binary()), "--fd", str(s.fileno())], pass_fds=[s.fileno()])
    s.close()
    try:
        client = dial.wait(10, alive=lambda: True)
        assert client.ready is not None
        assert client.exec(["echo", "hi"], timeout=10).stdout == b"hi\n"
        client.close()
    finally:
        dial.close()
        proc.kill()
        proc.wait()
    assert not (tmp_path / "agent.sock_1024").exists()
    dial.close()  # idempotent


def test_dial_wait_ends_when_the_vm_does_or_at_the_timeout(tmp_path):
    dial = AgentDial(str(tmp_path / "agent.sock"), 1024, 1024)
    try:
        with pytest.raises(SandboxNotRunning):
            dial.wait(10, alive=lambda: False)
        with pytest.raises(Timeout):
            dial.wait(0.2, alive=lambda: True)
    finally:
        dial.close()


@needs_musl
def test_an_agent_that_does_not_dial_is_still_found(tmp_path, monkeypatch):
    """The fallback: nothing dials, so the wait connects to the agent's listening socket."""
    from support.agent_harness import AgentProcess
    monkeypatch.setattr("vmm.sandbox.agent_dial.FALLBACK_EVERY", 0.05)
    agent = AgentProcess(tmp_path)
    dial = AgentDial(str(tmp_path / "x.sock"), 1024, 1024)
    # The fallback connects with a vsock CONNECT, which a plain Unix socket agent does not
    # answer: point it at the agent's socket without a port instead.
    monkeypatch.setattr(dial, "agent_port", None)
    monkeypatch.setattr(dial, "_agent_socket", str(agent.sock))
    try:
        client = dial.wait(10, alive=lambda: True)
        assert client.exec(["true"], timeout=10).code == 0
        client.close()
    finally:
        dial.close()
        agent.stop()


# --- real guests ---------------------------------------------------------------------------

T = 60


def _layer_with_etc(path):
    """A layer over busybox: /etc 0750 and /etc/resolv.conf a symbolic link (as systemd
    images ship it), so the files the agent writes must hide the link, not follow it."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        d = tarfile.TarInfo("etc")
        d.type, d.mode = tarfile.DIRTYPE, 0o750
        t.addfile(d)
        link = tarfile.TarInfo("etc/resolv.conf")
        link.type, link.linkname = tarfile.SYMTYPE, "../run/resolv.conf"
        t.addfile(link)
    path.write_bytes(buf.getvalue())
    return path


@pytest.fixture(scope="module")
def etc_image(tmp_path_factory):
    from vmm.images.rootfs import LayerSource, build_root_disk
    d = tmp_path_factory.mktemp("etc-image")
    kind = "application/vnd.oci.image.layer.v1.tar"
    layers = [LayerSource(str(busybox_layer(d / "busybox.tar")), kind),
              LayerSource(str(_layer_with_etc(d / "etc.tar")), kind)]
    build_root_disk(layers, str(d / "image.erofs"))
    return d / "image.erofs"


def _sh(sb, cmd):
    r = sb.exec(["sh", "-c", cmd], timeout=T)
    assert r.code == 0, (cmd, r)
    return r.stdout.decode()


@pytest.mark.slow
@pytest.mark.skipif(not shutil.which("qemu-system-x86_64"), reason="no qemu")
@pytest.mark.skipif(not have_busybox(), reason="no busybox-static")
def test_name_files_hide_the_images_link_and_keep_etc_across_boots(etc_image, tmp_path):
    """resolv.conf and hosts go into the upper layer before the overlay: they hide the
    image's symbolic link, /etc keeps the image's mode and its other files, and the same
    holds on a writable disk that has an /etc from an earlier boot, and on one whose
    sandbox removed /etc altogether (written through the overlay then)."""
    disk = vmm.Sandbox.format_writable_disk(tmp_path / "state.ext4", size="64M")
    for boot in range(3):
        with vmm.Sandbox.create(etc_image, writable_disk=disk, engine="qemu",
                                boot_timeout=T) as sb:
            assert _sh(sb, "cat /etc/resolv.conf").startswith("nameserver ")
            assert _sh(sb, "[ -L /etc/resolv.conf ] && echo link || echo file") == "file\n"
            assert "\tsandbox\n" in _sh(sb, "cat /etc/hosts")
            if boot < 2:
                assert _sh(sb, "stat -c %a /etc") == "750\n"
                assert _sh(sb, "cat /etc/image-marker") == "from the image\n"
            if boot == 1:
                _sh(sb, "rm -rf /etc")   # a whiteout in the upper layer: next boot falls back
        assert sb.stopped_gracefully


@pytest.mark.slow
@pytest.mark.skipif(not shutil.which("qemu-system-x86_64"), reason="no qemu")
@pytest.mark.skipif(not have_busybox(), reason="no busybox-static")
def test_sandbox_found_when_the_agent_dials_elsewhere(tmp_path):
    """An agent that does not dial our port (here: told a port nobody listens on, the
    last vmm.dial= wins) is reached by the fallback CONNECT: the boot still succeeds."""
    from support.sandbox_image import build_busybox_image
    image = build_busybox_image(tmp_path)
    with vmm.Sandbox.create(image, engine="qemu", boot_timeout=T, network=None,
                            extra_cmdline="vmm.dial=9") as sb:
        assert sb.exec(["true"], timeout=T).code == 0
        assert "connecting to the host's vsock port 9" in sb.console
