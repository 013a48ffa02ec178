"""A layer whose media type names the wrong compression (zstd declared, gzip data) is read
by its magic bytes, as runtimes do, and the user is told: at import (msb image load), in
the store (ls STATUS, inspect), and when the root disk is built (warn callback, the log,
and `msb run`'s image resolution on stderr). Pull-time reporting: test_image_hostile_registry."""
import logging
import os
import subprocess
import sys

import pytest

import vmm.images as images

from support.oci_fixtures import File, Image, Layer, make_layer, write_layout

pytestmark = pytest.mark.usefixtures("msb_home")
ZSTD_MT = "application/vnd.oci.image.layer.v1.tar+zstd"
SAYS = "media type says zstd, data is gzip"


def msb(*args):
    p = subprocess.run([sys.executable, "-m", "vmm.cli", *args], capture_output=True, text=True,
                       env=dict(os.environ), timeout=60)
    assert "Traceback" not in p.stderr, p.stderr
    return p


@pytest.fixture
def lying_layout(tmp_path):
    good = make_layer([File("a", b"a")], "zstd")
    gz = make_layer([File("b", b"b")], "gzip")
    lying = Layer(gz.blob, gz.diff_id, ZSTD_MT)
    write_layout(tmp_path / "layout", [Image([good, lying])])
    return tmp_path / "layout"


def test_load_ls_and_inspect_show_the_warning(lying_layout):
    p = msb("image", "load", "-i", str(lying_layout), "-t", "local/liar:1")
    assert p.returncode == 0
    warned = [line for line in p.stderr.splitlines() if line.startswith("warning:")]
    assert len(warned) == 1 and "docker.io/local/liar:1: layer 2 (" in warned[0] and SAYS in warned[0]
    assert msb("image", "ls").stdout.splitlines()[1].endswith("ok (1 warning)")
    inspect = msb("image", "inspect", "local/liar:1").stdout
    assert "Warnings:\n  layer 2 (" in inspect and SAYS in inspect
    assert msb("image", "load", "-q", "-i", str(lying_layout), "-t", "local/liar:1").stderr == ""


def test_root_disk_build_warns_through_callback_and_log(lying_layout, caplog):
    info = images.import_layout(lying_layout, "local/liar:1")
    assert len(info["warnings"]) == 1 and SAYS in info["warnings"][0]
    heard = []
    with caplog.at_level(logging.WARNING, logger="vmm.images"):
        assert images.root_disk("local/liar:1", warn=heard.append).exists()
    assert heard == info["warnings"]
    assert any(SAYS in r.getMessage() for r in caplog.records)
    assert images.inspect("local/liar:1")["warnings"] == heard      # not recorded twice


def test_msb_run_image_resolution_prints_it(lying_layout, capfd):
    from vmm.sandbox.image_source import resolve_image
    images.import_layout(lying_layout, "local/liar:1")
    capfd.readouterr()
    resolved = resolve_image("local/liar:1", "never", quiet=False)
    err = capfd.readouterr().err
    assert os.path.exists(resolved.disk)
    assert "warning: docker.io/local/liar:1: layer 2 (" in err and SAYS in err
    images.remove("local/liar:1")
    images.import_layout(lying_layout, "local/liar:1")
    resolve_image("local/liar:1", "never", quiet=True)
    assert capfd.readouterr().err == ""
