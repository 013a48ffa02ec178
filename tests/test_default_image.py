"""The offline default image (vmm/images/default_image.py): built from the host's static
busybox into the store on first use, once, deterministically; boots and runs a command."""
import io
import multiprocessing
import os
import shutil
import subprocess
import sys
import tarfile

import pytest

from support.test_engine import ENGINE, engine_marks

from vmm.images import default_image as di
from vmm.images.disk import root_disk
from vmm.images.errors import ImageError
from vmm.images.store import Store

pytestmark = pytest.mark.skipif(not di.BUSYBOX.is_file(), reason="no /bin/busybox (busybox-static)")


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "home")
    yield s
    s.close()


def blob_files(store):
    return sorted(p.name for p in (store.paths.blobs / "sha256").iterdir())


def test_builds_once_and_is_idempotent(store):
    first = di.ensure_default_image(store)
    assert first.reference == di.DEFAULT_REFERENCE == "msb.invalid/default:busybox"
    blobs = blob_files(store)
    assert len(blobs) == 2                                   # the layer and the config
    again = di.ensure_default_image(store)
    assert again.manifest_digest == first.manifest_digest
    assert again.pulled_at == first.pulled_at                # not committed a second time
    assert blob_files(store) == blobs
    assert [i.reference for i in store.images()] == [di.DEFAULT_REFERENCE]
    assert first.config["config"]["Cmd"] == ["/bin/sh"]


def test_same_busybox_same_digest_anywhere(tmp_path):
    digests = []
    for name in ("a", "b"):
        s = Store(tmp_path / name)
        digests.append(di.ensure_default_image(s).manifest_digest)
        s.close()
    assert digests[0] == digests[1]
    assert di.layer_tar(di.BUSYBOX) == di.layer_tar(di.BUSYBOX)


def test_layer_contents(store):
    image = di.ensure_default_image(store)
    layer = store.paths.blob(image.layers[0].digest).read_bytes()
    with tarfile.open(fileobj=io.BytesIO(layer)) as tar:
        members = {m.name: m for m in tar.getmembers()}
        assert tar.extractfile("bin/busybox").read() == di.BUSYBOX.read_bytes()
        assert b"root:x:0:0:" in tar.extractfile("etc/passwd").read()
    assert members["bin/sh"].issym() and members["bin/sh"].linkname == "/bin/busybox"
    assert members["usr/bin/env"].issym()
    assert members["tmp"].isdir() and members["tmp"].mode == 0o1777
    assert "linuxrc" not in members
    assert members["home/nobody"].uid == 65534
    assert all(m.mtime == 0 and m.uid == 0 and m.gid == 0 for m in members.values()
               if m.name != "home/nobody")
    assert list(members) == sorted(members)


def test_listed_by_msb_image_ls_and_disk_is_erofs(tmp_path):
    home = tmp_path / "home"
    s = Store(home)
    image = di.ensure_default_image(s)
    disk = root_disk(s, image)
    s.close()
    with open(disk, "rb") as f:
        f.seek(1024)
        assert f.read(4) == (0xE0F5E1E2).to_bytes(4, "little")   # EROFS superblock magic
    p = subprocess.run([sys.executable, "-m", "vmm.cli", "image", "ls", "-q"], capture_output=True,
                       text=True, env=dict(os.environ, MSB_HOME=str(home)), timeout=60)
    assert (p.returncode, p.stdout) == (0, "msb.invalid/default:busybox\n"), p.stderr


def _ensure_in_child(home, q):
    s = Store(home)
    image = di.ensure_default_image(s)
    q.put((image.manifest_digest, image.pulled_at))
    s.close()


def test_concurrent_first_use_builds_once(tmp_path):
    ctx = multiprocessing.get_context("fork")
    q = ctx.Queue()
    procs = [ctx.Process(target=_ensure_in_child, args=(tmp_path / "home", q)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    results = {q.get(timeout=5) for _ in procs}
    assert len(results) == 1          # one digest, committed once (one pulled_at)


def test_upgraded_busybox_makes_a_new_image_and_frees_the_old(store, tmp_path):
    old = di.ensure_default_image(store)
    old_layer = store.paths.blob(old.layers[0].digest)
    upgraded = tmp_path / "busybox"
    shutil.copy(di.BUSYBOX, upgraded)
    with open(upgraded, "ab") as f:
        f.write(b"\0" * 16)           # a different binary that still runs
    new = di.ensure_default_image(store, upgraded)
    assert new.manifest_digest != old.manifest_digest
    assert store.lookup(di.DEFAULT_REFERENCE).manifest_digest == new.manifest_digest
    assert not old_layer.exists()
    assert [i.reference for i in store.images()] == [di.DEFAULT_REFERENCE]
    assert di.ensure_default_image(store, upgraded).pulled_at == new.pulled_at


def test_missing_busybox(store, tmp_path):
    with pytest.raises(ImageError, match="no-busybox, which is missing: .*apt-get install busybox-static"):
        di.ensure_default_image(store, tmp_path / "no-busybox")
    assert store.images() == []
    built = di.ensure_default_image(store)
    # once built, a machine without busybox still has its default image
    assert di.ensure_default_image(store, tmp_path / "no-busybox").manifest_digest == \
        built.manifest_digest


def test_dynamic_busybox_refused(store, tmp_path):
    dynamic = tmp_path / "busybox"
    shutil.copy(sys.executable, dynamic)    # a dynamically linked program
    with pytest.raises(ImageError, match="dynamically linked.*busybox-static"):
        di.ensure_default_image(store, dynamic)
    (tmp_path / "text").write_text("#!/bin/sh\n")
    with pytest.raises(ImageError, match="not an ELF program"):
        di.ensure_default_image(store, tmp_path / "text")
    assert store.images() == []
    # busybox-static replaced by the dynamic busybox after the image was built: keep it
    built = di.ensure_default_image(store)
    assert di.ensure_default_image(store, dynamic).manifest_digest == built.manifest_digest


def _marked(*marks):
    def apply(test):
        for mark in marks:
            test = mark(test)
        return test
    return apply


@_marked(pytest.mark.slow, *engine_marks(),
         pytest.mark.skipif(not shutil.which("musl-gcc"), reason="no musl-gcc (musl-tools)"))
def test_boots_and_runs_echo_hello(store, kernel_path):
    import vmm
    disk = root_disk(store, di.ensure_default_image(store))
    sb = vmm.Sandbox.create(disk, engine=ENGINE, boot_timeout=60)
    try:
        r = sb.exec(["sh", "-c", "echo hello; cat /etc/os-release | head -1"], timeout=30)
        assert (r.exit_code, r.stdout) == (0, b'hello\nNAME="msb default"\n'), r
        r = sb.exec(["env"], timeout=30)       # applets outside /bin are there too
        assert r.exit_code == 0
    finally:
        sb.stop()
