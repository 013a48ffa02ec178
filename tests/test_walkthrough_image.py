"""The msb walkthrough's image on a real guest through vmm.Sandbox directly: the image
(tests/support/walkthrough_image.py) pulled with `msb pull --insecure` from a local
docker-registry, its root disk booted with a writable disk and network scope `host` (every
destination but the gateway denied), and what the image must be for the walkthrough: the
official image's config shape; node, npm and corepack answer; corepack fetches pnpm from
the local npm registry with nothing trying the internet. The walkthrough's own steps (apt
from the local repository, the dev server through a published port, the lifecycle) run
through `msb` in test_msb_walkthrough.py; they are not repeated here, so that the suite
pays for the apt install (~100 s on TCG) once.

Building the image needs the internet once (Debian's mirror and the npm registry; the
result is cached under ~/.cache/vmm/walkthrough/); the tests never do: every server they
reach is one walkthrough_servers.py starts on loopback. Without a cache and without those
hosts the guest tests skip, saying so; any other build failure fails them.

The guest tests are the slow tier, on the qemu (TCG) engine; the time of each step is
printed (pytest -s shows it). The fast tests check the cache and the local servers on the
host alone.
"""
import base64
import contextlib
import hashlib
import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import time

import pytest

from support import walkthrough_image as wi
from support.walkthrough_image import (APT_SOURCES_PATH, COREPACK, NODE_VERSION, NPM, PNPM,
                                       BuildUnavailable, project_files, walkthrough_image)
from support.walkthrough_servers import AptRepository, NpmRegistry, walkthrough_servers

import vmm
import vmm.images
from vmm.net.network import Network
from vmm.sandbox.writable_disk import format_writable_disk

guest = [pytest.mark.slow,
         pytest.mark.skipif(not shutil.which("docker-registry") or not shutil.which("skopeo"),
                            reason="needs docker-registry and skopeo (scripts/setup.sh)"),
         pytest.mark.skipif(not shutil.which("passt"), reason="no passt")]

PROJECT = "/home/workspace"
# Scope host also lets the guest out to the internet (and DNS through the host's
# resolver); these rules, checked first, keep it to the host's loopback.
# (IPv6: global unicast only; the kernel's own link-local multicast is not the internet.)
NO_INTERNET = [f"allow@{wi.GATEWAY}/32:tcp", "deny@0.0.0.0/0", "deny@2000::/3"]


def guest_marks(fn):
    for mark in guest:
        fn = mark(fn)
    return fn


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
    with contextlib.ExitStack() as stack:
        yield step("registry + skopeo push, apt, npm servers", lambda: stack.enter_context(
            walkthrough_servers(built, tmp_path_factory.mktemp("walkthrough-servers"))))


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
    disk = step("root disk (EROFS) build", lambda: vmm.images.root_disk(pulled))
    config = vmm.images.inspect(pulled)["config"]
    env = dict(item.split("=", 1) for item in config["env"])
    env.setdefault("HOME", "/root")
    data = format_writable_disk(tmp_path_factory.mktemp("walkthrough-disk") / "data.ext4", "4G")
    s = step("boot", lambda: vmm.Sandbox.create(
        disk, writable_disk=data, memory_mib=1024, engine="qemu", env=env, boot_timeout=180,
        hostname="astro-demo", network=Network(scope="host", rules=NO_INTERNET)))
    yield s
    s.stop()
    print("\nwalkthrough step times (qemu/TCG):")
    for name, secs in TIMES.items():
        print(f"  {name:42s} {secs:7.1f} s")


def sh(sb, name, cmd, timeout=120, **kw):
    r = step(name, lambda: sb.exec(["sh", "-c", cmd], timeout=timeout, **kw))
    assert r.code == 0, (cmd, r.code, r.stdout.decode()[-2000:], r.stderr.decode()[-3000:])
    return r.stdout.decode()


@guest_marks
def test_config_is_the_official_images_shape(pulled):
    config = vmm.images.inspect(pulled)["config"]
    assert config["cmd"] == ["node"] and config["entrypoint"] == ["docker-entrypoint.sh"]
    assert "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" in config["env"]
    assert config["working_dir"] == "/"


@guest_marks
def test_node_npm_corepack(sb):
    assert sh(sb, "node --version", "node --version") == f"v{NODE_VERSION}\n"
    assert sh(sb, "npm --version", "npm --version") == f"{NPM.version}\n"
    assert sh(sb, "corepack --version", "corepack --version") == f"{COREPACK.version}\n"
    assert sh(sb, "node -e env", "DEMO_ENV=hello node -e 'console.log(process.env.DEMO_ENV)'") == "hello\n"
    # What the official image has beside them: the entrypoint, the node user, no apt lists.
    assert sh(sb, "entrypoint", "docker-entrypoint.sh -p 40+2") == "42\n"
    assert sh(sb, "id node", "id -u node") == "1000\n"
    assert sh(sb, "apt lists", "ls /var/lib/apt/lists | grep -v -e lock -e partial | wc -l") == "0\n"


@guest_marks
def test_corepack_fetches_pnpm_from_the_local_registry_and_nothing_tries_the_internet(sb, servers):
    """corepack (and pnpm's own first run) is what would reach for the internet: here it
    fetches pnpm from the local registry, checks its signature against the run's key, and
    no frame goes anywhere but the host's loopback, nor asks DNS. (The rest of the
    walkthrough, apt and the dev server through a published port, is driven through `msb`
    in test_msb_walkthrough.py, whose sandbox denies everything but the gateway.)"""
    sb.fs.mkdir(PROJECT, parents=True)
    for rel, data in project_files().items():
        sb.fs.write(f"{PROJECT}/{rel}", data)
    sb.fs.write(f"{PROJECT}/.corepack.env", servers.corepack_env().encode())
    sh(sb, "corepack enable", "corepack enable")
    assert sh(sb, "pnpm shim", "readlink /usr/local/bin/pnpm").strip().endswith("corepack/dist/pnpm.js")
    assert sh(sb, "pnpm --version (fetched)", f"cd {PROJECT} && pnpm --version") == f"{PNPM.version}\n"
    served = [path for path, status in servers.npm.requests if status == 200]
    assert f"/pnpm/-/{PNPM.filename}" in served, served
    hits = {row["rule"]: row["hits"] for row in sb.network.stats()["rules"]}
    assert hits[NO_INTERNET[0]] > 0, hits
    assert hits["deny@0.0.0.0/0"] == 0 and hits["deny@2000::/3"] == 0, hits


# -- fast: the cache and the local servers, on the host alone --------------------------------

def _get(port, path):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        c.request("GET", path, headers={"Host": f"10.0.2.2:{port}"})
        r = c.getresponse()
        return r.status, r.read()
    finally:
        c.close()


def test_a_cached_build_is_used_without_contacting_anything(tmp_path, monkeypatch):
    cached = tmp_path / wi.cache_key()
    cached.mkdir()
    (cached / "info.json").write_text("{}")
    monkeypatch.setattr(wi, "_check_reachable", lambda root: pytest.fail("contacted the build's hosts"))
    monkeypatch.setattr(wi, "_build", lambda out: pytest.fail("built again"))
    assert walkthrough_image(tmp_path).root == cached


def test_no_cache_and_unreachable_hosts_is_build_unavailable(tmp_path, monkeypatch):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    monkeypatch.setattr(wi, "NEEDED_HOSTS", (("127.0.0.1", closed),))
    monkeypatch.setattr(wi, "_build", lambda out: pytest.fail("tried to build"))
    with pytest.raises(BuildUnavailable, match=f"not cached .* cannot be built: 127.0.0.1:{closed}"):
        walkthrough_image(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{wi.cache_key()}.lock"]


def test_the_cache_key_covers_the_pins_and_packages(monkeypatch):
    key = wi.cache_key()
    monkeypatch.setattr(wi, "PNPM", wi.NpmPin("pnpm", "10.0.0", "sha512-other"))
    assert wi.cache_key() != key
    monkeypatch.undo()
    monkeypatch.setattr(wi, "APT_PACKAGES", ("git",))
    assert wi.cache_key() != key


def test_failed_build_leaves_no_partial_cache(tmp_path, monkeypatch):
    def broken(out):
        (out / "layout").mkdir(parents=True)
        raise RuntimeError("mirror said no")
    monkeypatch.setattr(wi, "_check_reachable", lambda root: None)
    monkeypatch.setattr(wi.shutil, "which", lambda name: "/usr/bin/" + name)
    monkeypatch.setattr(wi, "_build", broken)
    with pytest.raises(RuntimeError, match="mirror said no"):
        walkthrough_image(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{wi.cache_key()}.lock"]


def test_apt_repository_serves_its_files_by_apts_quoted_names(tmp_path):
    (tmp_path / "git_1%3a2.39.5_amd64.deb").write_bytes(b"a deb")
    (tmp_path / "Release").write_text("Origin: x\n")
    srv = AptRepository(tmp_path)
    try:
        assert _get(srv.port, "/./git_1%253a2.39.5_amd64.deb") == (200, b"a deb")
        assert _get(srv.port, "/./Release") == (200, b"Origin: x\n")
        assert _get(srv.port, "/./InRelease")[0] == 404
        assert _get(srv.port, "/../../etc/passwd")[0] == 404
        assert srv.requests[0] == ("git_1%3a2.39.5_amd64.deb", 200)
    finally:
        srv.stop()


def test_apt_sources_name_the_gateway_and_trust_the_repository():
    assert wi.apt_sources(4242) == "Types: deb\nURIs: http://10.0.2.2:4242/\nSuites: ./\nTrusted: yes\n"
    assert wi.image_files()[APT_SOURCES_PATH] == wi.apt_sources(wi.APT_DEFAULT_PORT)


def test_npm_registry_serves_pnpm_signed_with_its_own_key(tmp_path):
    (tmp_path / PNPM.filename).write_bytes(b"the tarball")
    srv = NpmRegistry(tmp_path, tmp_path)
    try:
        host = f"10.0.2.2:{srv.port}"
        status, body = _get(srv.port, "/pnpm/latest")
        doc = json.loads(body)
        assert status == 200 and doc["version"] == PNPM.version
        dist = doc["dist"]
        assert dist["tarball"] == f"http://{host}/pnpm/-/{PNPM.filename}"
        assert dist["integrity"] == PNPM.integrity
        assert dist["shasum"] == hashlib.sha1(b"the tarball").hexdigest()
        assert json.loads(_get(srv.port, f"/pnpm/{PNPM.version}")[1]) == doc
        packument = json.loads(_get(srv.port, "/pnpm")[1])
        assert packument["dist-tags"] == {"latest": PNPM.version}
        assert packument["versions"][PNPM.version] == doc
        assert _get(srv.port, f"/pnpm/-/{PNPM.filename}") == (200, b"the tarball")
        assert _get(srv.port, "/pnpm/9.0.0")[0] == 404
        # The signature verifies (as corepack checks it) against the key the guest is given.
        (key,) = json.loads(srv.integrity_keys())["npm"]
        (sig,) = dist["signatures"]
        assert sig["keyid"] == key["keyid"]
        (tmp_path / "key.der").write_bytes(base64.b64decode(key["key"]))
        (tmp_path / "sig").write_bytes(base64.b64decode(sig["sig"]))
        (tmp_path / "msg").write_bytes(f"pnpm@{PNPM.version}:{PNPM.integrity}".encode())
        r = subprocess.run(["openssl", "dgst", "-sha256", "-verify", str(tmp_path / "key.der"),
                            "-keyform", "DER", "-signature", str(tmp_path / "sig"),
                            str(tmp_path / "msg")], capture_output=True, text=True)
        assert r.returncode == 0 and "Verified OK" in r.stdout, r
    finally:
        srv.stop()


def test_project_tree_has_a_dev_script_and_its_server():
    files = project_files()
    assert json.loads(files["package.json"])["scripts"]["dev"] == "node server.mjs"
    assert b"--host" not in files["package.json"] and b"parseArgs" in files["server.mjs"]
