"""The offline default image: what `msb run` uses when no image is given, built on first use
from the host's static busybox (Debian's busybox-static, /bin/busybox), so a sandbox works
on a machine that has never reached a registry.

    image = ensure_default_image(store)        # StoredImage, reference DEFAULT_REFERENCE
    disk = vmm.images.disk.root_disk(store, image)

It is a proper image in the store: one uncompressed layer tar (busybox, a symlink per
applet where `busybox --list-full` puts it, /etc/passwd, /etc/group, /etc/hosts, /tmp...),
an OCI config (Cmd /bin/sh) and a manifest, committed like an imported image, so
`msb image ls` lists it and its root disk is built and cached like any other.

- Name: `msb.invalid/default:busybox`. `.invalid` is a top-level domain reserved never to
  resolve (RFC 6761), so no registry can serve this name and no pull can replace it.
- Deterministic: every byte (tar headers, times, owners, order, config) is fixed, so the
  same busybox gives the same manifest digest on every machine.
- Keyed: the config's labels record the busybox's sha256 and the recipe's version; when
  either changes (busybox upgraded), the next call builds again and moves the reference,
  and the store frees the old image's blobs.
- Built once: the check and the build run under one store lock, so two `msb run` at once
  build it once; the second finds it done.
- Once built it no longer needs busybox: with /bin/busybox gone (or replaced by Debian's
  dynamically linked `busybox`, which cannot build it), the stored image is used.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import struct
import subprocess
import tarfile
from pathlib import Path
from typing import Optional

from . import manifest as mf
from .config import parse_config
from .digest import digest_of
from .errors import ImageError
from .locks import file_lock
from .store import Layer, Store, StoredImage

log = logging.getLogger(__name__)

DEFAULT_REFERENCE = "msb.invalid/default:busybox"
BUSYBOX = Path("/bin/busybox")
RECIPE = "1"                    # bump when the layout below changes: rebuilds the image
LABEL_BUSYBOX = "org.microsandbox.default.busybox"
LABEL_RECIPE = "org.microsandbox.default.recipe"
LAYER_MEDIA_TYPE = "application/vnd.oci.image.layer.v1.tar"
MTIME = 0                       # fixed times: the digest must not depend on when it was built
INSTALL_HINT = "install Debian's busybox-static (apt-get install busybox-static)"

PASSWD = (b"root:x:0:0:root:/root:/bin/sh\n"
          b"nobody:x:65534:65534:nobody:/home/nobody:/bin/sh\n")
NOBODY = 65534
GROUP = b"root:x:0:\nnogroup:x:65534:\n"
HOSTS = b"127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
OS_RELEASE = (b'NAME="msb default"\nID=msb-default\n'
              b'PRETTY_NAME="msb default image (busybox)"\n')
DIRS = {"bin": 0o755, "dev": 0o755, "etc": 0o755, "home": 0o755, "home/nobody": 0o755, "proc": 0o755,
        "root": 0o700, "run": 0o755, "sbin": 0o755, "sys": 0o755, "tmp": 0o1777,
        "usr": 0o755, "usr/bin": 0o755, "usr/sbin": 0o755, "var": 0o755, "var/tmp": 0o1777}
ENV = ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]


def ensure_default_image(store: Store, busybox: Path = BUSYBOX) -> StoredImage:
    """The default image, built into store on first use (and after busybox changed)."""
    busybox = Path(busybox)
    current = _busybox_digest(busybox)
    found = _stored(store)
    if found is not None and _built_from(found, current):
        return found
    with file_lock(store.paths.lock("default-image")):
        found = _stored(store)                      # another process may have built it
        if found is not None and _built_from(found, current):
            return found
        try:
            _check_busybox(busybox, current)
        except ImageError as e:
            if found is None:
                raise
            # busybox gone, or replaced by Debian's dynamic one: the image built before
            # still runs, so keep it rather than fail.
            log.warning("default image not rebuilt (%s); using the one built before", e)
            return found
        return _build(store, busybox, current)


def _stored(store: Store) -> Optional[StoredImage]:
    """The stored default image, if it is whole and of this recipe."""
    image = store.lookup(DEFAULT_REFERENCE)
    if image is None or not store.is_complete(image):
        return None
    return image if parse_config(image.config).labels.get(LABEL_RECIPE) == RECIPE else None


def _built_from(image: StoredImage, busybox_digest: Optional[str]) -> bool:
    return parse_config(image.config).labels.get(LABEL_BUSYBOX) == busybox_digest


def _build(store: Store, busybox: Path, busybox_digest: str) -> StoredImage:
    layer = layer_tar(busybox)
    layer_digest = digest_of(layer)
    config = image_config(layer_digest, busybox_digest)
    with store.gc_lock(shared=True):
        layer_digest, layer_size = store.put_stream(io.BytesIO(layer), expected=layer_digest)
        config_digest, config_size = store.put_stream(io.BytesIO(config))
        body = _manifest(config_digest, config_size, layer_digest, layer_size)
        manifest_digest = digest_of(body)
        orphans = store.commit_image(
            [DEFAULT_REFERENCE], manifest_digest=manifest_digest, index_digest=None,
            media_type=mf.OCI_MANIFEST, manifest=body, config_digest=config_digest,
            config=config, image_config=parse_config(json.loads(config)),
            layers=[Layer(layer_digest, LAYER_MEDIA_TYPE, layer_size)],
            source=f"built:busybox {busybox_digest}")
    store.delete_orphans(orphans)   # the image of an older busybox, if there was one
    return store.lookup(DEFAULT_REFERENCE)


def layer_tar(busybox: Path, extra_files=()) -> bytes:
    """The image's only layer: a tar whose bytes depend on the busybox binary alone.
    extra_files: (path, bytes, mode) added as root-owned files (the test image's markers)."""
    applets = _applet_paths(busybox)
    data = Path(busybox).read_bytes()
    entries = [(name, tarfile.DIRTYPE, mode, b"", "") for name, mode in DIRS.items()]
    entries.append(("bin/busybox", tarfile.REGTYPE, 0o755, data, ""))
    entries += [(path, tarfile.SYMTYPE, 0o777, b"", "/bin/busybox")
                for path in applets if path != "bin/busybox"]
    for name, content in (("etc/passwd", PASSWD), ("etc/group", GROUP), ("etc/hosts", HOSTS),
                          ("etc/os-release", OS_RELEASE)):
        entries.append((name, tarfile.REGTYPE, 0o644, content, ""))
    entries += [(name, tarfile.REGTYPE, mode, content, "") for name, content, mode in extra_files]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, kind, mode, content, link in sorted(entries):
            info = tarfile.TarInfo(name)
            info.type, info.mode, info.mtime, info.linkname = kind, mode, MTIME, link
            info.uid = info.gid = NOBODY if name == "home/nobody" else 0
            info.uname = info.gname = ""
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content) if kind == tarfile.REGTYPE else None)
    return buf.getvalue()


def image_config(layer_digest: str, busybox_digest: str) -> bytes:
    platform = mf.default_platform()
    doc = {"architecture": platform.architecture, "os": platform.os,
           "created": "1970-01-01T00:00:00Z",
           "config": {"Env": ENV, "Cmd": ["/bin/sh"], "WorkingDir": "/",
                      "Labels": {LABEL_BUSYBOX: busybox_digest, LABEL_RECIPE: RECIPE}},
           # uncompressed layer: its digest is its diff_id
           "rootfs": {"type": "layers", "diff_ids": [layer_digest]}}
    if platform.variant:
        doc["variant"] = platform.variant
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def _manifest(config_digest, config_size, layer_digest, layer_size) -> bytes:
    doc = {"schemaVersion": 2, "mediaType": mf.OCI_MANIFEST,
           "config": {"mediaType": mf.OCI_CONFIG, "digest": config_digest, "size": config_size},
           "layers": [{"mediaType": LAYER_MEDIA_TYPE, "digest": layer_digest, "size": layer_size}]}
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def _applet_paths(busybox: Path) -> list:
    """Where each applet goes (bin/sh, usr/bin/env, ...), as this busybox itself says."""
    try:
        out = subprocess.run([str(busybox), "--list-full"], capture_output=True, text=True,
                             check=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError) as e:
        raise ImageError(f"{busybox} --list-full failed ({e}); {INSTALL_HINT}") from None
    # Only into the image's own directories: not `linuxrc` at the top (an init the
    # agent replaces), nor a path that would climb out.
    paths = sorted({q for q in (p.strip("/") for p in out.split())
                    if q.rpartition("/")[0] in DIRS})
    if "bin/sh" not in paths:
        raise ImageError(f"{busybox} --list-full lists no bin/sh; {INSTALL_HINT}")
    return paths


def _busybox_digest(busybox: Path) -> Optional[str]:
    try:
        with open(busybox, "rb") as f:
            return "sha256:" + hashlib.file_digest(f, "sha256").hexdigest()
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return None


def _check_busybox(busybox: Path, digest: Optional[str]) -> None:
    """Refuse what cannot make the image, with the fix: no file, not a program, or a
    dynamically linked busybox (Debian's `busybox` package), which would not run in an
    image without a C library."""
    if digest is None:
        raise ImageError(f"the default image is built from {busybox}, which is missing: "
                         f"{INSTALL_HINT} (or name an image to run)")
    with open(busybox, "rb") as f:
        head = f.read(64)
        if len(head) < 64 or head[:4] != b"\x7fELF" or head[4] not in (1, 2) \
                or head[5] not in (1, 2):
            raise ImageError(f"{busybox} is not an ELF program; {INSTALL_HINT}")
        is64, endian = head[4] == 2, "<" if head[5] == 1 else ">"
        if is64:
            phoff, = struct.unpack_from(endian + "Q", head, 32)
            phentsize, phnum = struct.unpack_from(endian + "HH", head, 54)
        else:
            phoff, = struct.unpack_from(endian + "I", head, 28)
            phentsize, phnum = struct.unpack_from(endian + "HH", head, 42)
        f.seek(phoff)
        table = f.read(phentsize * phnum)
    if phentsize < 4 or len(table) < phentsize * phnum:
        raise ImageError(f"{busybox} is not a whole ELF program; {INSTALL_HINT}")
    for i in range(phnum):
        p_type, = struct.unpack_from(endian + "I", table, i * phentsize)
        if p_type == 3:     # PT_INTERP: needs a dynamic loader
            raise ImageError(f"{busybox} is dynamically linked; the default image needs a "
                             f"static one: {INSTALL_HINT}")
