"""`msb pull`, `msb image ls|inspect|rm|load`, `msb images`, `msb rmi`: shapes and exit codes.

Run as real processes (python -m vmm.cli, the same code as the `msb` entry point) so exit
statuses and the absence of tracebacks are what a user sees.
"""
import json
import os
import re
import subprocess
import sys

import pytest

from vmm._version import __version__

from support.oci_fixtures import File, Image, make_layer, write_layout

pytestmark = pytest.mark.usefixtures("msb_home")


def msb(*args):
    p = subprocess.run([sys.executable, "-m", "vmm.cli", *args], capture_output=True, text=True,
                       env=dict(os.environ), timeout=60)
    assert "Traceback" not in p.stderr, p.stderr
    return p


@pytest.fixture
def two_images(tmp_path):
    write_layout(tmp_path / "a", [Image([make_layer([File("a", b"a")], "gzip")], cmd=["/a"])])
    write_layout(tmp_path / "b", [Image([make_layer([File("b", b"b" * 5000)], "zstd")], cmd=["/b"])])
    assert msb("image", "load", "-i", str(tmp_path / "a"), "-t", "local/a:1").returncode == 0
    p = msb("image", "load", "-q", "-i", str(tmp_path / "b"), "-t", "localhost:5000/b:2")
    assert p.returncode == 0 and p.stderr == ""


def test_version_and_help():
    assert msb("--version").stdout.strip() == f"msb {__version__}"
    assert msb("-V").stdout.strip() == f"msb {__version__}"
    h = msb("-h")
    assert h.returncode == 0 and "pull" in h.stdout and "image" in h.stdout
    listed = [line.split()[0] for line in h.stdout.split("Commands:")[1].splitlines() if line.strip()]
    assert "images" not in listed and "rmi" not in listed      # hidden aliases
    for level in ("--error", "--warn", "--info", "--debug", "--trace"):
        assert msb(level, "image", "ls").returncode == 0


def test_empty_ls():
    p = msb("image", "ls")
    assert p.returncode == 0 and p.stdout == "" and p.stderr.strip() == "No images found."
    assert msb("image", "ls", "--format", "json").stdout.strip() == "[]"


def test_ls_shapes(two_images):
    p = msb("image", "ls")
    lines = p.stdout.splitlines()
    assert re.split(r"\s+", lines[0]) == ["REFERENCE", "DIGEST", "SIZE", "CREATED", "STATUS"]
    assert len(lines) == 3
    row = re.split(r"\s{2,}", lines[1])
    assert row[0] == "docker.io/local/a:1"
    assert re.fullmatch(r"sha256:[0-9a-f]{12}", row[1])
    assert re.fullmatch(r"\d+(\.\d)? (B|KiB|MiB)", row[2])
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", row[3])
    assert row[4] == "ok"
    # Columns line up: every row's DIGEST starts where the header's does.
    assert lines[1].index("sha256:") == lines[0].index("DIGEST")
    assert msb("image", "ls", "-q").stdout.split() == ["docker.io/local/a:1", "localhost:5000/b:2"]
    assert msb("images", "-q").stdout.split() == ["docker.io/local/a:1", "localhost:5000/b:2"]
    rows = json.loads(msb("image", "ls", "--format", "json").stdout)
    assert [r["reference"] for r in rows] == ["docker.io/local/a:1", "localhost:5000/b:2"]
    assert set(rows[0]) >= {"reference", "digest", "size_bytes", "os", "architecture", "layer_count",
                            "created_at"}


def test_inspect(two_images):
    info = json.loads(msb("image", "inspect", "local/a:1", "--format", "json").stdout)
    assert info["config"]["cmd"] == ["/a"] and info["layer_count"] == 1
    text = msb("image", "inspect", info["digest"][:16]).stdout
    assert "Reference:" in text and "docker.io/local/a:1" in text and "Cmd:" in text and "/a" in text
    p = msb("image", "inspect", "nothere:1")
    assert p.returncode == 1 and p.stderr.startswith("error: no image 'nothere:1'")


def test_rm_and_rmi(two_images):
    p = msb("image", "rm", "local/a:1")
    assert p.returncode == 0 and "Removed docker.io/local/a:1" in p.stderr
    p = msb("rmi", "-q", "localhost:5000/b:2")
    assert p.returncode == 0 and p.stderr == ""
    assert msb("image", "ls", "-q").stdout == ""
    p = msb("image", "rm", "local/a:1")
    assert p.returncode == 1 and p.stderr.startswith("error: no image")


def test_errors_are_one_line(tmp_path):
    # A malformed reference is a bad argument: a usage error, like any other (exit 2).
    p = msb("pull", "Not/A Ref")
    assert p.returncode == 2 and p.stderr.startswith("error: invalid image reference") \
        and len(p.stderr.splitlines()) == 1
    p = msb("image", "load", "-i", str(tmp_path))
    assert p.returncode == 1 and "not an OCI image layout" in p.stderr
    p = msb("no-such-command")
    assert p.returncode == 2 and p.stderr == \
        "error: No such command 'no-such-command'. Try 'msb -h' for help.\n"
    p = msb("pull", "--platform", "a/b/c/d", "x")   # refused before any registry is asked
    assert p.returncode == 2 and "bad platform 'a/b/c/d'" in p.stderr \
        and len(p.stderr.splitlines()) == 1
    p = msb("rmi", "Not/A Ref", "nothere:1")       # each reference gets its line; worst wins
    assert p.returncode == 2 and p.stderr.splitlines()[1].startswith("error: no image")


def test_pull_command(registry, tmp_path):
    write_layout(tmp_path / "l", [Image([make_layer([File("x", b"x")], "gzip")])])
    registry.push(tmp_path / "l", "cli/pull:1")
    ref = f"{registry.host}/cli/pull:1"
    p = msb("pull", "--insecure", ref)
    assert p.returncode == 0 and p.stderr.startswith(f"Pulled {ref} sha256:")
    p = msb("pull", "--insecure", ref)
    assert "(already cached)" in p.stderr
    p = msb("pull", "-q", "-f", "--insecure", ref)
    assert p.returncode == 0 and p.stderr == "" and p.stdout == ""
    p = msb("image", "pull", "-q", "--insecure", ref)
    assert p.returncode == 0
    # Without --insecure we speak HTTPS to a plain-HTTP registry: a clear failure.
    p = msb("pull", "-f", ref)
    assert p.returncode == 1 and p.stderr.startswith("error:") and len(p.stderr.splitlines()) == 1
