"""The msb walkthrough's image on a real guest, before `msb run` exists: the image
(tests/support/walkthrough_image.py) pulled with `msb pull --insecure` from a local
docker-registry, its root disk booted with a writable disk and network scope `host`, and
what the walkthrough does inside it: node, npm and corepack answer; `apt-get update &&
apt-get install -y git curl` from the local apt repository; `corepack enable` and pnpm
fetched by corepack from the local npm registry; the project's dev server on
0.0.0.0:4321 reached from the host through a published port.

Building the image needs the internet once (Debian's mirror and the npm registry; the
result is cached under ~/.cache/vmm/walkthrough/); the tests never do: every server they
reach is one walkthrough_servers.py starts on loopback. Without a cache and without those
hosts the module skips, saying so.

Slow tier, qemu (TCG) engine; the time of each step is printed (pytest -s shows it).
"""
import http.client
import os
import shutil
import subprocess
import sys
import threading
import time

import pytest

from support.walkthrough_image import (APT_SOURCES_PATH, COREPACK, NODE_VERSION, NPM, PNPM,
                                       BuildUnavailable, project_files, walkthrough_image)
from support.walkthrough_servers import walkthrough_servers

import vmm
from vmm.net.network import Network
from vmm.sandbox.writable_disk import format_writable_disk

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not shutil.which("docker-registry") or not shutil.which("skopeo"),
                                 reason="needs docker-registry and skopeo (scripts/setup.sh)"),
              pytest.mark.skipif(not shutil.which("passt"), reason="no passt")]

PROJECT = "/home/workspace"
GUEST_PORT = 4321
TIMES = {}


def step(name, fn):
    t0 = time.monotonic()
    result = fn()
    TIMES[name] = time.monotonic() - t0
    return result


@pytest.fixture(scope="module")
def built():
    try:
        return step("image build (or cache)", walkthrough_image)
    except BuildUnavailable as e:
        pytest.skip(str(e))


@pytest.fixture(scope="module")
def servers(built, tmp_path_factory):
    with walkthrough_servers(built, tmp_path_factory.mktemp("walkthrough-servers")) as s:
        yield s


@pytest.fixture(scope="module")
def msb_home(tmp_path_factory):
    home = tmp_path_factory.mktemp("msb-home")
    old = os.environ.get("MSB_HOME")
    os.environ["MSB_HOME"] = str(home)
    yield home
    if old is None:
        del os.environ["MSB_HOME"]
    else:
        os.environ["MSB_HOME"] = old


@pytest.fixture(scope="module")
def pulled(servers, msb_home):
    """`msb pull --insecure` through the CLI, as a user types it."""
    def pull():
        return subprocess.run([sys.executable, "-m", "vmm.cli", "pull", "--insecure", servers.image_ref],
                              capture_output=True, text=True, timeout=600, env=dict(os.environ))
    r = step("msb pull", pull)
    assert r.returncode == 0, r.stderr
    assert f"Pulled {servers.image_ref}" in r.stderr, r.stderr
    return servers.image_ref


@pytest.fixture(scope="module")
def sb(kernel_path, pulled, tmp_path_factory):
    import vmm.images
    disk = step("root disk (EROFS) build", lambda: vmm.images.root_disk(pulled))
    config = vmm.images.inspect(pulled)["config"]
    env = dict(item.split("=", 1) for item in config["env"])
    env.setdefault("HOME", "/root")
    data = format_writable_disk(tmp_path_factory.mktemp("walkthrough-disk") / "data.ext4", "4G")
    s = step("boot", lambda: vmm.Sandbox.create(
        disk, writable_disk=data, memory_mib=1024, engine="qemu", env=env, boot_timeout=180,
        hostname="astro-demo", network=Network(scope="host", ports=[f"0:{GUEST_PORT}"])))
    yield s
    s.stop()
    print("\nwalkthrough step times (qemu/TCG):")
    for name, secs in TIMES.items():
        print(f"  {name:32s} {secs:7.1f} s")


def sh(sb, name, cmd, timeout=120, **kw):
    r = step(name, lambda: sb.exec(["sh", "-c", cmd], timeout=timeout, **kw))
    assert r.code == 0, (cmd, r.code, r.stdout.decode()[-2000:], r.stderr.decode()[-3000:])
    return r.stdout.decode()


def test_config_is_the_official_images_shape(pulled):
    import vmm.images
    config = vmm.images.inspect(pulled)["config"]
    assert config["cmd"] == ["node"] and config["entrypoint"] == ["docker-entrypoint.sh"]
    assert "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" in config["env"]
    assert config["working_dir"] == "/"


def test_node_npm_corepack(sb):
    assert sh(sb, "node --version", "node --version") == f"v{NODE_VERSION}\n"
    assert sh(sb, "npm --version", "npm --version") == f"{NPM.version}\n"
    assert sh(sb, "corepack --version", "corepack --version") == f"{COREPACK.version}\n"
    assert sh(sb, "node -e env", "DEMO_ENV=hello node -e 'console.log(process.env.DEMO_ENV)'") == "hello\n"
    # What the official image has beside them: the entrypoint, the node user, no apt lists.
    assert sh(sb, "entrypoint", "docker-entrypoint.sh -p 40+2") == "42\n"
    assert sh(sb, "id node", "id -u node") == "1000\n"
    assert sh(sb, "apt lists", "ls /var/lib/apt/lists | grep -v -e lock -e partial | wc -l") == "0\n"


def test_apt_get_install_git_curl_from_the_local_repository(sb, servers):
    sb.fs.write(APT_SOURCES_PATH, servers.apt_sources().encode())
    sh(sb, "apt-get update && install git curl", "apt-get update && apt-get install -y git curl",
       timeout=900)
    assert sh(sb, "git --version", "git --version").startswith("git version 2.39")
    assert sh(sb, "curl --version", "curl --version").startswith("curl 7.88")
    served = [path for path, status in servers.apt.requests if status == 200]
    assert "Release" in served and any(name.startswith("git_") for name in served), served


def _http_get(port, timeout=5):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request("GET", "/")
        r = c.getresponse()
        return r.status, r.read().decode()
    finally:
        c.close()


def test_corepack_pnpm_dev_server_through_a_published_port(sb, servers):
    sb.fs.mkdir(PROJECT, parents=True)
    for rel, data in project_files().items():
        sb.fs.write(f"{PROJECT}/{rel}", data)
    sb.fs.write(f"{PROJECT}/.corepack.env", servers.corepack_env().encode())
    sh(sb, "corepack enable", "corepack enable")
    assert sh(sb, "pnpm shim", "readlink /usr/local/bin/pnpm").strip().endswith("corepack/dist/pnpm.js")

    (host_port,) = [p.host for p in sb.network.ports if p.guest == GUEST_PORT]
    proc = sb.exec_stream(["sh", "-c", f"cd {PROJECT} && pnpm dev --host 0.0.0.0 --port {GUEST_PORT}"])
    output = []

    def drain():
        for _, data in proc:
            output.append(data)
    drainer = threading.Thread(target=drain, daemon=True)
    drainer.start()
    t0 = time.monotonic()
    reply = None
    try:
        while time.monotonic() - t0 < 300 and not proc.ended:
            try:
                reply = _http_get(host_port)
                break
            except (OSError, http.client.HTTPException):
                time.sleep(1)
        TIMES["pnpm dev -> first reply on host"] = time.monotonic() - t0
        text = b"".join(output).decode(errors="replace")
        assert reply is not None, f"no reply on 127.0.0.1:{host_port}; pnpm said: {text[-3000:]}"
        status, body = reply
        assert status == 200 and "astro-demo" in body and f"node v{NODE_VERSION}" in body, reply
        assert "astro-demo dev server listening on http://0.0.0.0:4321/" in text, text
        served = [path for path, status in servers.npm.requests if status == 200]
        assert f"/pnpm/-/{PNPM.filename}" in served, served
        version = sh(sb, "pnpm --version", f"cd {PROJECT} && pnpm --version")
        assert version == f"{PNPM.version}\n"
    finally:
        proc.signal()   # SIGTERM to pnpm's process group; the server closes and exits
        drainer.join(60)
    assert proc.result is not None and not drainer.is_alive(), "pnpm dev did not end on SIGTERM"
